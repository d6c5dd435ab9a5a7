"""FP32 vs FP16 vs INT8 through ONNX Runtime CPU, side by side in one run: throughput and recall.

* Throughput: the full-size VSRN visual reasoner (36×2048 regions → D=2048) and text encoder with random weights
  (weights do not change speed), each precision's graph from `vsrt calibrate` (random calibration inputs).
* Recall: a small VSRN (D=64) trained here on the synthetic dataset (`vsrt.data.synth`, 600 train images of
  256-d regions, 500 test images; cached in --workdir), calibrated on its train split, measured by the accuracy
  guard on its test split (R@1/5/10 both directions, embedding cosine), ONNX Runtime CPU.

Writes benchmarks/results/precision.json and precision.png (recall vs speed) and prints a table.

    python benchmarks/precision.py [--threads 2] [--visual-batch 32] [--text-batch 128] [--skip-recall]
                                   [--skip-throughput]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, time_fn, write_results  # noqa: E402

PRECISIONS = ("fp32", "fp16", "int8")


def random_model_dir(path: Path, embed_size: int = 2048, img_dim: int = 2048, vocab_size: int = 10000) -> Path:
    """A full-size VSRN model directory with random weights, exported to ONNX."""
    import torch

    from vsrt.export.model_export import export_model
    from vsrt.models.convert import write_model_dir
    from vsrt.models.vsrn import VSRNConfig, build
    from vsrt.text.vocab import Vocabulary

    torch.manual_seed(0)
    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", *[f"w{i}" for i in range(vocab_size - 4)]])
    cfg = VSRNConfig(vocab_size=len(vocab), img_dim=img_dim, embed_size=embed_size)
    mods = build(cfg)
    with torch.no_grad():
        for m in mods["visual"].modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.weight.uniform_(0.5, 1.5)
    write_model_dir(path, "vsrn", cfg, {k: m.state_dict() for k, m in mods.items()}, vocab, {"random": 0},
                    force=True)
    export_model(path)
    return path


def throughput(model_dir: Path, threads: int, visual_batch: int, text_batch: int, seq: int,
               rounds: int = 5) -> dict[str, Any]:
    """Items per second of each stage at each precision (ONNX Runtime CPU, ``threads`` intra-op threads).

    The precisions are timed in interleaved rounds (fp32, fp16, int8, fp32, …) and each one's latencies pooled,
    so a slowdown of the shared machine hits all three alike instead of skewing the ratios.
    """
    import statistics

    from vsrt.calibration.compare import per_sample_cosine
    from vsrt.calibration.sources import RandomSource
    from vsrt.manifest import Manifest
    from vsrt.runtime.backends.factory import create_backend

    m = Manifest.load(model_dir)
    out: dict[str, Any] = {}
    for stage, batch in (("visual", visual_batch), ("text", text_batch)):
        feeds = next(iter(RandomSource(stage, m.stage(stage).inputs, count=batch, seed=0, batch_size=batch,
                                       vocab_size=10000, seq_len=seq).batches()))
        backends = {p: create_backend(model_dir, m, stage, "onnxruntime", p, intra_op_threads=threads)
                    for p in PRECISIONS}
        results = {p: b.run(feeds) for p, b in backends.items()}
        times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
        for _ in range(rounds):
            for p, b in backends.items():
                stats = time_fn(lambda b=b, f=feeds: b.run(f), warmup=1, min_repeats=2, min_seconds=0.5)
                times[p].append(stats["median_ms"])
        for p in PRECISIONS:
            med = statistics.median(times[p])
            row = {"batch": batch, "median_ms": med, "round_medians_ms": times[p], "items_per_s": batch / (med / 1e3),
                   "onnx_mb": (model_dir / m.stage(stage).files[p].path).stat().st_size / 1e6,
                   "min_cosine_vs_fp32": float(per_sample_cosine(results["fp32"]["embedding"],
                                                                 results[p]["embedding"]).min())}
            out.setdefault(stage, {})[p] = row
            print(f"  {stage:6s} {p}: {row['items_per_s']:8.1f} items/s (median {med:.1f} ms)")
        for p in PRECISIONS:
            out[stage][p]["speedup_vs_fp32"] = out[stage][p]["items_per_s"] / out[stage]["fp32"]["items_per_s"]
    return out


def recall(workdir: Path, threads: int, embed_size: int, epochs: int, train_images: int, feat_dim: int,
           test_images: int, learning_rate: float) -> dict[str, Any]:
    """Train (cached) a small VSRN on the synthetic dataset, calibrate it with the guard on, return its reports.

    The dataset is ``vsrt.data.synth`` at ``feat_dim``-d region features (the full 2048 only slows training, the
    concepts are the same); the model is trained by ``vsrt.training`` and converted like ``vsrt demo``'s.
    """
    from vsrt.calibration.pipeline import CalibrateOptions, calibrate_model
    from vsrt.data.synth import SynthConfig, generate
    from vsrt.export.model_export import export_model
    from vsrt.manifest import Manifest
    from vsrt.models.convert import convert_checkpoint
    from vsrt.training.run import train
    from vsrt.training.trainer import TrainConfig

    t0 = time.perf_counter()
    data = workdir / f"data_{train_images}x{feat_dim}_test{test_images}"
    if not (data / "test_ims.npy").is_file():
        generate(data, SynthConfig(seed=0, train=train_images, dev=100, test=test_images, dim=feat_dim))
    ckpt = workdir / f"vsrn_{data.name}_d{embed_size}_e{epochs}_lr{learning_rate:g}_hard0.3.pth.tar"
    if not ckpt.is_file():
        print(f"  training VSRN D={embed_size} for {epochs} epochs on {train_images} synthetic images…")
        train("vsrn", data, ckpt, TrainConfig(epochs=epochs, batch_size=100, learning_rate=learning_rate, seed=0,
                                              threads=threads, lr_update=max(epochs - 1, 1),
                                              hard_negative_lr_scale=0.3),
              {"embed_size": embed_size, "word_dim": 64, "variant": "coco"},
              on_epoch=lambda r: print(f"    epoch {r.get('epoch')}: dev rsum {r.get('rsum')}"))
    t_train = time.perf_counter() - t0
    model_dir = workdir / f"{ckpt.stem}_model"
    convert_checkpoint(ckpt, model_dir, data / "vocab.pkl", force=True)
    export_model(model_dir)
    t0 = time.perf_counter()
    calibrate_model(model_dir, CalibrateOptions(data_dir=data, count=256, seed=0, threads=threads),
                    log=lambda m: print(f"  {m}"))
    seconds = time.perf_counter() - t0
    cal = Manifest.load(model_dir).calibration
    guard = {p: cal[p].get("guard") for p in cal}
    return {"model": {"family": "vsrn", "embed_size": embed_size, "word_dim": 64, "epochs": epochs,
                      "learning_rate": learning_rate,
                      "train_images": train_images, "region_dim": feat_dim, "test_images": test_images},
            "train_seconds": round(t_train, 1), "calibrate_seconds": round(seconds, 1),
            "r1_within_1_point_both_directions": {
                p: bool(g and abs(g["drop_points"]["i2t_r1"]) <= 1.0 and abs(g["drop_points"]["t2i_r1"]) <= 1.0)
                for p, g in guard.items()},
            "guard": guard, "sensitivity": {p: cal[p].get("sensitivity") for p in cal if "sensitivity" in cal[p]}}


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    guard = (result.get("recall") or {}).get("guard", {})
    for p, marker in zip(PRECISIONS, "osD"):
        speed = result["throughput"]["visual"][p]["speedup_vs_fp32"]
        if p == "fp32" and guard:
            r = next(iter(guard.values()))["fp32"]
        elif p in guard and guard[p]:
            r = guard[p]["candidate"]
        else:
            continue
        for key, color in (("i2t_r1", "tab:blue"), ("t2i_r1", "tab:orange")):
            ax.scatter(speed, r[key], marker=marker, color=color, s=60)
            ax.annotate(f"{p} {key[:3]}", (speed, r[key]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("visual reasoner throughput vs FP32 (ONNX Runtime CPU)")
    ax.set_ylabel("R@1 (%) on the synthetic test split")
    ax.set_title("VSRN precision: recall vs speed")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    from vsrt.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--visual-batch", type=int, default=32)
    ap.add_argument("--text-batch", type=int, default=128)
    ap.add_argument("--seq", type=int, default=12, help="caption length for the text encoder")
    ap.add_argument("--skip-recall", action="store_true", help="throughput only")
    ap.add_argument("--skip-throughput", action="store_true",
                    help="recall only; keep the throughput section of the existing results/precision.json")
    ap.add_argument("--recall-embed-size", type=int, default=64, help="D of the trained synthetic model")
    ap.add_argument("--recall-epochs", type=int, default=3)
    ap.add_argument("--recall-lr", type=float, default=2e-3, help="learning rate of the synthetic model")
    ap.add_argument("--recall-train-images", type=int, default=600)
    ap.add_argument("--recall-region-dim", type=int, default=256, help="region feature size of the synthetic data")
    ap.add_argument("--recall-test-images", type=int, default=500, help="held-out images the guard measures on")
    ap.add_argument("--workdir", type=Path, default=Path(".vsrt-cache/precision-bench"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from vsrt.calibration.pipeline import CalibrateOptions, calibrate_model

    t_start = time.perf_counter()
    result: dict[str, Any] = {"machine": machine(), "threads": args.threads, "backend": "onnxruntime cpu"}
    if args.skip_throughput:
        import json

        prev = json.loads((RESULTS / "precision.json").read_text())
        for k in ("throughput", "full_size_parity", "full_size_calibrate_seconds"):
            result[k] = prev[k]
        result["throughput_from"] = {"machine": prev.get("machine"), "note": "kept from the previous run "
                                     "(--skip-throughput)", "total_seconds": prev.get("total_seconds")}
    else:
        with tempfile.TemporaryDirectory(prefix="vsrt-prec-") as tmp:
            print("full-size VSRN (random weights): export, FP16/INT8 graphs")
            d = random_model_dir(Path(tmp) / "full")
            t0 = time.perf_counter()
            calibrate_model(d, CalibrateOptions(random_inputs=True, guard=False, count=64, batch_size=8,
                                                threads=args.threads))
            result["full_size_calibrate_seconds"] = round(time.perf_counter() - t0, 1)
            print("throughput (ONNX Runtime CPU):")
            result["throughput"] = throughput(d, args.threads, args.visual_batch, args.text_batch, args.seq)
            from vsrt.manifest import Manifest

            m = Manifest.load(d)
            result["full_size_parity"] = {s: {p: m.stages[s].files[p].parity.get("min_cosine") for p in PRECISIONS}
                                          for s in ("visual", "text")}
    if not args.skip_recall:
        print("recall (trained synthetic VSRN):")
        result["recall"] = recall(args.workdir, args.threads, args.recall_embed_size, args.recall_epochs,
                                  args.recall_train_images, args.recall_region_dim, args.recall_test_images,
                                  args.recall_lr)
    result["total_seconds"] = round(time.perf_counter() - t_start, 1)
    path = write_results("precision", result)
    plot(result, RESULTS / "precision.png")
    print(f"\n{'stage':7s} {'prec':5s} {'items/s':>9s} {'×fp32':>6s} {'MB':>7s}")
    for s, rows in result["throughput"].items():
        for p, r in rows.items():
            print(f"{s:7s} {p:5s} {r['items_per_s']:9.1f} {r['speedup_vs_fp32']:6.2f} {r['onnx_mb']:7.1f}")
    for p, g in (result.get("recall") or {}).get("guard", {}).items():
        if g:
            print(f"{p}: R@1 i2t {g['candidate']['i2t_r1']:.1f} (fp32 {g['fp32']['i2t_r1']:.1f}), t2i "
                  f"{g['candidate']['t2i_r1']:.1f} (fp32 {g['fp32']['t2i_r1']:.1f}); min cosine "
                  f"{min(c['min'] for c in g['embedding_cosine'].values()):.5f}")
    print(f"wrote {path} and {RESULTS / 'precision.png'}")


if __name__ == "__main__":
    main()
