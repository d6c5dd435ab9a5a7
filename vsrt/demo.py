"""``vsrt demo``: the whole path on synthetic data — synth → train (cached) → convert → export → eval with
PyTorch and ONNX Runtime side by side → a text query."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


@dataclass
class DemoConfig:
    """Sizes of the demo run (small enough for 2 CPU cores in a few minutes)."""

    family: str = "vsrn"
    workdir: Path = Path(".vsrt-cache/demo")
    seed: int = 0
    train_images: int = 1000
    embed_size: int = 256
    epochs: int = 4
    batch_size: int = 128
    #: 10× VSRN's 2e-4: from scratch on 1000 images, 2e-4 stays near chance for many epochs (dev rsum 42 after 4
    #: epochs at 600 images, vs 139 at 2e-3)
    learning_rate: float = 2e-3
    #: the learning rate ×0.3 once hardest negatives start: at 2e-3 the switch can collapse the embedding (the
    #: precision benchmark's model: dev rsum 239 → 40; with ×0.3: 420)
    hard_negative_lr_scale: float = 0.3
    query: str | None = None


def _train_is_cached(ckpt: Path, wanted: dict[str, Any]) -> bool:
    summary = Path(str(ckpt) + ".train.json")
    if not ckpt.exists() or not summary.is_file():
        return False
    try:
        s = json.loads(summary.read_text())
    except json.JSONDecodeError:
        return False
    return all(s.get("train", {}).get(k) == v for k, v in wanted["train"].items()) and all(
        s.get("config", {}).get(k) == v for k, v in wanted["model"].items()
    ) and s.get("data") == wanted["data"]


def run_demo(cfg: DemoConfig, console: Console | None = None) -> dict[str, Any]:
    """Run the demo; returns the recall of PyTorch and ONNX Runtime and the query results."""
    import numpy as np

    from vsrt.data.precomp import load_precomp
    from vsrt.data.synth import SynthConfig, generate
    from vsrt.errors import InputError
    from vsrt.eval.driver import evaluate_split, open_for_eval
    from vsrt.export.model_export import export_model
    from vsrt.models.convert import convert_checkpoint
    from vsrt.models.registry import get_family
    from vsrt.training.run import train
    from vsrt.training.trainer import TrainConfig

    fam = get_family(cfg.family)
    if cfg.family == "dsran-bert":
        raise InputError("the demo cannot train dsran-bert (it needs a local BERT directory): use `vsrt train "
                         "--family dsran-bert --bert-path DIR` (demo families: vsrn, vsrpp, resg, dsran-gru)")
    if cfg.family.startswith("dsran"):
        from vsrt.training.dsran import train
    console = console or Console()
    work = Path(cfg.workdir)
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    timings: dict[str, float] = {}

    t = time.perf_counter()
    synth_cfg = SynthConfig(seed=cfg.seed, train=cfg.train_images)
    if (data / "synth.json").is_file() and json.loads((data / "synth.json").read_text()).get("seed") == cfg.seed \
            and json.loads((data / "synth.json").read_text()).get("train") == cfg.train_images:
        console.print(f"[dim]1/6 synthetic data: cached in {data}[/]")
    else:
        console.print(f"1/6 synthetic data → {data}")
        generate(data, synth_cfg)
    timings["synth"] = time.perf_counter() - t

    t = time.perf_counter()
    ckpt = work / (f"{cfg.family}_checkpoint.pth.tar" if fam.output_is_checkpoint else f"{cfg.family}_model")
    tcfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed, lr_update=max(cfg.epochs - 1, 1),
                       learning_rate=cfg.learning_rate, hard_negative_lr_scale=cfg.hard_negative_lr_scale)
    opts = {"embed_size": cfg.embed_size, "word_dim": 300, "variant": "coco"}
    wanted = {"train": {"epochs": tcfg.epochs, "batch_size": tcfg.batch_size, "seed": tcfg.seed,
                        "learning_rate": tcfg.learning_rate,
                        "hard_negative_lr_scale": tcfg.hard_negative_lr_scale},
              "model": {"embed_size": cfg.embed_size}, "data": str(data)}
    if _train_is_cached(ckpt, wanted):
        console.print(f"[dim]2/6 training: cached {ckpt}[/]")
    else:
        console.print(f"2/6 training {cfg.family} (D={cfg.embed_size}, {cfg.epochs} epochs) on 2 CPU threads…")
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("   {task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), console=console) as prog:
            task = prog.add_task("epoch 1", total=tcfg.epochs)
            train(cfg.family, data, ckpt, tcfg, opts,
                  on_epoch=lambda r: prog.update(task, advance=1, description=f"epoch {r['epoch']}: dev rsum "
                                                 f"{r['rsum']:.1f}"))
    timings["train"] = time.perf_counter() - t

    t = time.perf_counter()
    model_dir = work / f"{cfg.family}_model"
    if fam.output_is_checkpoint:
        console.print(f"3/6 convert {ckpt.name} (restricted unpickling) → {model_dir}")
        convert_checkpoint(ckpt, model_dir, data / "vocab.pkl", family=cfg.family, force=True)
    else:
        console.print(f"[dim]3/6 convert: {cfg.family} has no original checkpoint format; trained into {model_dir}[/]")
    timings["convert"] = time.perf_counter() - t

    t = time.perf_counter()
    console.print("4/6 export to ONNX with parity checks")
    parity = export_model(model_dir)
    for stage, p in parity.items():
        console.print(f"   {stage}: max abs err {p['max_abs_err']:.2e}, min cosine {p['min_cosine']:.8f}")
    timings["export"] = time.perf_counter() - t

    t = time.perf_counter()
    console.print("5/6 evaluate on the test split: PyTorch vs ONNX Runtime")
    results = {b: evaluate_split([model_dir], data, "test", backend=b) for b in ("torch", "onnxruntime")}
    table = Table(title="test split (R@K in %)")
    for col in ("backend", "i2t R@1", "R@5", "R@10", "t2i R@1", "R@5", "R@10", "rsum"):
        table.add_column(col, justify="right")
    for b, r in results.items():
        m = r["metrics"]
        table.add_row(b, *(f"{m[k]:.1f}" for k in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10",
                                                   "rsum")))
    console.print(table)
    sims_diff = float(np.abs(results["torch"]["_sims"] - results["onnxruntime"]["_sims"]).max())
    console.print(f"   max |similarity difference| torch vs ONNX Runtime: {sims_diff:.2e}")
    timings["eval"] = time.perf_counter() - t

    test = load_precomp(data, "test")
    query = cfg.query or test.captions[0]
    console.print(f'6/6 text query: "{query}"')
    model = open_for_eval(model_dir, "onnxruntime")
    if cfg.family.startswith("dsran"):
        from vsrt.runtime.dsran import dsran_similarity_matrix

        scores = dsran_similarity_matrix(model, np.asarray(test.images, np.float32), [query])[:, 0]
    else:  # the global score (VSR++: S_G, the shortlist stage of two-stage retrieval)
        img = model.encode_regions(np.asarray(test.images, np.float32))
        scores = (img @ model.encode_texts([query]).T)[:, 0]
    top = np.argsort(-scores)[:5]
    hits = []
    for rank, i in enumerate(top, 1):
        caption = test.captions[5 * int(i)]
        console.print(f"   {rank}. image {int(i):4d}  score {scores[i]:.3f}  “{caption}”")
        hits.append({"image": int(i), "score": float(scores[i]), "caption": caption})
    out = {
        "recall": {b: r["metrics"] for b, r in results.items()},
        "max_sims_diff": sims_diff,
        "parity": parity,
        "query": query,
        "hits": hits,
        "timings_s": timings,
        "model_dir": str(model_dir),
    }
    from vsrt.io import atomic_write_json

    atomic_write_json(work / "demo_results.json", out)
    console.print(f"[green]done[/] — results in {work / 'demo_results.json'}")
    return out
