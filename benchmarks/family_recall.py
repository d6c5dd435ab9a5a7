"""Recall of every trainable family on the same synthetic data, same budget: the README model table's numbers.

Each family is trained with ``vsrt train``'s code path (same epochs, batch size, learning rate, embedding size),
saved in its own layout, converted where it has an original format, exported to ONNX (parity-checked) and evaluated
on the test split through ONNX Runtime — the whole user path. For VSR++ it also reports the global score alone vs the
fused score (the paper's ablation direction) and runs ``benchmarks/rerank.py``'s two-stage measurement.
Writes benchmarks/results/family_recall.json + .png (and rerank.json + .png).

    python benchmarks/family_recall.py [--data DATA_DIR] [--families vsrn,vsrpp,resg] [--epochs 8] [--embed-size 256]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rerank  # noqa: E402
from _common import RESULTS, machine, write_results  # noqa: E402

from vsrt.models.registry import family_names, get_family, register_family_module  # noqa: E402

#: families this benchmark knows how to run; registered here in case the registry does not list them yet
EXTRA_FAMILIES = {"vsrpp": "vsrt.models.vsrpp_family", "resg": "vsrt.models.resg_family"}


def _parse_kv(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for it in items:
        k, _, v = it.partition("=")
        try:
            out[k] = int(v)
        except ValueError:
            try:
                out[k] = float(v)
            except ValueError:
                out[k] = v
    return out


def make_data(workdir: Path, overrides: dict[str, Any]) -> Path:
    """Generate the synthetic dataset (``vsrt.data.synth``) into ``workdir/data``."""
    from vsrt.data.synth import SynthConfig, generate

    out = workdir / "data"
    shutil.rmtree(out, ignore_errors=True)
    generate(out, SynthConfig(**overrides))
    return out


def _reusable(out: Path, data: Path, cfg: Any, model_opts: dict[str, Any]) -> dict[str, Any] | None:
    """The training summary of an existing checkpoint ``out`` trained on ``data`` with exactly ``cfg`` and
    ``model_opts`` (``<out>.train.json`` written by ``vsrt train``), else None."""
    import json

    summary_path = Path(str(out) + ".train.json")
    if not out.is_file() or not summary_path.is_file():
        return None
    s = json.loads(summary_path.read_text())
    same_model = all(s.get("config", {}).get(k) == v for k, v in model_opts.items())
    same_data = Path(s.get("data", "")).resolve() == data.resolve()
    return s if s.get("train") == cfg.to_dict() and same_model and same_data else None


def run_family(family: str, data: Path, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Train → (convert) → export → evaluate one family; returns its record."""
    from vsrt.eval.driver import evaluate_split
    from vsrt.export.model_export import export_model
    from vsrt.models.convert import convert_checkpoint
    from vsrt.training.run import find_vocab, train
    from vsrt.training.trainer import TrainConfig

    fam = get_family(family)
    extra = {k.split(":", 1)[1]: v for k, v in _parse_kv(args.loss).items() if k.startswith(f"{family}:")}
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, lr_update=args.lr_update,
                      hard_negative_lr_scale=args.hard_lr_scale, seed=args.seed, threads=args.threads, extra=extra)
    out = workdir / (f"{family}.pth.tar" if fam.output_is_checkpoint else f"{family}-model")
    model_dir = workdir / f"{family}-model"
    model_opts = {"embed_size": args.embed_size, "word_dim": args.word_dim}
    summary = _reusable(out, data, cfg, model_opts) if args.reuse and fam.output_is_checkpoint else None
    if summary is not None:
        print(f"  [{family}] reusing {out} (trained with the same data and settings)", flush=True)
        train_s = float(summary["seconds"])
    else:
        shutil.rmtree(model_dir, ignore_errors=True)
        if fam.output_is_checkpoint:
            out.unlink(missing_ok=True)
        t0 = time.perf_counter()
        summary = train(family, data, out, cfg, model_opts,
                        on_epoch=lambda r: print(f"  [{family}] epoch {r['epoch']}: loss {r['loss']:.2f} "
                                                 f"dev rsum {r['rsum']:.1f}", flush=True))
        train_s = time.perf_counter() - t0
    if fam.output_is_checkpoint:
        convert_checkpoint(out, model_dir, find_vocab(data), family=family, force=True)
    parity = export_model(model_dir)
    res = evaluate_split([model_dir], data, "test")
    rec: dict[str, Any] = {
        "test": {k: float(v) for k, v in res["metrics"].items() if isinstance(v, (int, float))},
        "dev_best_rsum": summary["best_rsum"],
        "best_epoch": summary["best_epoch"],
        "train_seconds": train_s,
        "parity_min_cosine": {s: p["min_cosine"] for s, p in parity.items()},
        "model_dir": str(model_dir),
        "saved_as": "original-layout checkpoint, converted" if fam.output_is_checkpoint else "model directory",
        "loss_options": extra,
    }
    if "pair_scorer" in parity:
        rr = rerank.measure(model_dir, data, "test", tuple(int(k) for k in args.ks.split(",")), args.threads,
                            min_seconds=0.5)
        write_results("rerank", rr)
        rerank.plot(rr, RESULTS / "rerank.png")
        rec["global_only"] = rr["global_only"]
        rec["local_only"] = rr["local_only"]
        rec["full_fused"] = rr["full_fused"]
        rec["k_recovering_full_r10"] = rr["k_recovering_full_r10"]
    return rec


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, rsum, r1 = [], [], []
    for fam, rec in res["families"].items():
        names.append(fam)
        rsum.append(rec["test"]["rsum"])
        r1.append((rec["test"]["i2t_r1"], rec["test"]["t2i_r1"]))
        if "global_only" in rec:
            names.append(f"{fam} (S_G only)")
            rsum.append(rec["global_only"]["rsum"])
            r1.append((rec["global_only"]["i2t_r1"], rec["global_only"]["t2i_r1"]))
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.bar(names, rsum, color="tab:blue")
    a.set_ylabel("test rsum (max 600)")
    a.set_title(f"same data, same budget ({res['settings']['epochs']} epochs, D={res['settings']['embed_size']})")
    a.tick_params(axis="x", rotation=20)
    x = range(len(names))
    b.bar([i - 0.2 for i in x], [v[0] for v in r1], width=0.4, label="image→text R@1")
    b.bar([i + 0.2 for i in x], [v[1] for v in r1], width=0.4, label="text→image R@1")
    b.set_xticks(list(x), names, rotation=20)
    b.set_ylabel("%")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="existing precomputed dataset; default: generate one with vsrt.data.synth")
    ap.add_argument("--synth", nargs="*", default=[], help="SynthConfig overrides, key=value")
    ap.add_argument("--families", default="vsrn,vsrpp,resg")
    ap.add_argument("--workdir", default="/tmp/vsrt-family-recall", help="where data, checkpoints, models go")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--lr-update", type=int, default=6)
    ap.add_argument("--hard-lr-scale", type=float, default=1.0,
                    help="learning-rate factor once hardest negatives start (vsrt train --hard-lr-scale)")
    ap.add_argument("--embed-size", type=int, default=256)
    ap.add_argument("--word-dim", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="family_recall", help="result file name (benchmarks/results/<name>.json/.png)")
    ap.add_argument("--loss", nargs="*", default=[], metavar="FAMILY:KEY=VALUE",
                    help="a family's loss option, e.g. vsrpp:local_weight=0.5 (vsrt train --loss)")
    ap.add_argument("--reuse", action="store_true",
                    help="skip training where WORKDIR/<family>.pth.tar was trained with the same data and settings")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other families' records of an existing results file with the same data")
    ap.add_argument("--ks", default="1,2,3,5,10,20,50,100", help="shortlist sizes for the VSR++ re-ranking run")
    args = ap.parse_args()
    for name, module in EXTRA_FAMILIES.items():
        if name not in family_names():
            register_family_module(name, module)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if args.data else make_data(workdir, _parse_kv(args.synth))
    res: dict[str, Any] = {
        "data": str(data),
        "synth_overrides": _parse_kv(args.synth) if not args.data else None,
        "settings": {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "lr_update", "hard_lr_scale",
                                                   "embed_size", "word_dim", "seed", "threads", "loss")},
        "families": {},
        "machine": machine(),
    }
    if (data / "synth.json").is_file():
        import json

        res["synth"] = {k: v for k, v in json.loads((data / "synth.json").read_text()).items() if k != "files"}
    previous = RESULTS / f"{args.name}.json"
    if args.merge and previous.is_file():
        import json

        old = json.loads(previous.read_text())
        if Path(old.get("data", "")).resolve() == data.resolve():
            res["families"] = old.get("families", {})
            res["settings_by_family"] = old.get("settings_by_family") or {f: old["settings"] for f in res["families"]}
    res.setdefault("settings_by_family", {})
    for family in args.families.split(","):
        print(f"== {family}", flush=True)
        res["settings_by_family"][family] = res["settings"]
        res["families"][family] = run_family(family, data, workdir, args)
        path = write_results(args.name, res)
    plot(res, RESULTS / f"{args.name}.png")
    print(f"\n{'family':<10} {'rsum':>7} {'i2t R@1':>8} {'t2i R@1':>8} {'train s':>8}")
    for fam, rec in res["families"].items():
        t = rec["test"]
        print(f"{fam:<10} {t['rsum']:7.1f} {t['i2t_r1']:8.1f} {t['t2i_r1']:8.1f} {rec['train_seconds']:8.0f}")
        if "global_only" in rec:
            g = rec["global_only"]
            print(f"{'  S_G only':<10} {g['rsum']:7.1f} {g['i2t_r1']:8.1f} {g['t2i_r1']:8.1f}   "
                  f"(k recovering full fused R@10: {rec['k_recovering_full_r10']})")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
