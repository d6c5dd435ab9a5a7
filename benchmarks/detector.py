"""Full-size bottom-up-attention detector, per stage: PyTorch eager vs ONNX Runtime (CPU), 600×1000, R=300 / R=100.

Stages (as the runtime ``Detector`` splits them): preprocess (host, OpenCV/numpy), backbone_rpn (graph),
proposals (host numpy), roi_head (graph: RoIPool 14×14 + dilated res5 + heads), selection (host numpy). The host
stages are the runtime's own functions (``vsrt.runtime.detector``), identical for both engines; the graphs run as
PyTorch eager modules or as ONNX Runtime CPU sessions (``roi_head`` in both forms: standard-op RoIPool and
``MaxRoiPool``). Also times PyTorch's RoIPool alone, to give the share of the detector spent in res5 on the RoIs.
Weights are random (``init_random``: O(1) activations); timing does not depend on their values.

Writes benchmarks/results/detector.json and detector.png (stage breakdown).

    python benchmarks/detector.py [--threads 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, time_fn, write_results  # noqa: E402

STEPS = ("preprocess", "backbone_rpn", "proposals", "roi_head", "selection")


def photograph(h: int, w: int) -> np.ndarray:
    """scikit-image's astronaut (RGB → BGR) resized to h×w (600×1000: the Caffe resize then keeps it as is)."""
    import cv2
    from skimage import data

    return cv2.resize(np.ascontiguousarray(data.astronaut()[:, :, ::-1]), (w, h), interpolation=cv2.INTER_AREA)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="threads for PyTorch and ONNX Runtime (default 2)")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs of each graph stage after one warm-up")
    ap.add_argument("--tiny", action="store_true", help="smoke run on the tiny test detector (writes detector_tiny)")
    args = ap.parse_args()
    import onnxruntime as ort
    import torch

    from vsrt.detector_config import DetectorConfig
    from vsrt.export.detector import _export, stage_specs
    from vsrt.models.detector import build_detector
    from vsrt.runtime.detector.preprocess import preprocess_image
    from vsrt.runtime.detector.proposals import propose
    from vsrt.runtime.detector.selection import select_boxes

    torch.set_num_threads(args.threads)
    heavy = dict(warmup=1, min_repeats=args.repeats, min_seconds=0.0)
    light = dict(warmup=2, min_repeats=5, min_seconds=1.0)
    cfg = DetectorConfig.tiny() if args.tiny else DetectorConfig()
    hw = (cfg.test_scale, cfg.test_max_size)
    image = photograph(*hw)
    rois_counts = (cfg.num_rois, cfg.num_rois // 3)
    det = build_detector(cfg, random_seed=0)
    blob, scale = preprocess_image(image, cfg)
    assert blob.shape[2:] == hw, blob.shape
    results: dict[str, Any] = {
        "image_hw": list(hw),
        "detector": "tiny" if args.tiny else "ResNet-101 C4",
        "threads": args.threads,
        "load_average_start": os.getloadavg(),
    }
    steps: dict[str, dict[str, float]] = {}

    def say(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    say("host preprocess")
    steps["preprocess"] = time_fn(lambda: preprocess_image(image, cfg), **light)
    tmp = Path(tempfile.mkdtemp(prefix="vsrt_bench_det_"))
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads

    def session(path: Path) -> Any:
        return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])

    bb = det.backbone_rpn()
    specs = stage_specs(cfg)
    _export(bb, (torch.zeros(1, 3, 64, 96),), tmp / "bb.onnx", specs["backbone_rpn"], 17)
    x = torch.from_numpy(blob)
    say("backbone_rpn torch")
    with torch.no_grad():
        steps["backbone_rpn/torch"] = time_fn(lambda: bb(x), **heavy)
        res4, prob, delta = (t.numpy() for t in bb(x))
    bb_sess = session(tmp / "bb.onnx")
    say("backbone_rpn onnxruntime")
    steps["backbone_rpn/onnxruntime"] = time_fn(lambda: bb_sess.run(None, {"image": blob}), **heavy)
    configs: dict[str, Any] = {}
    for r in rois_counts:
        rcfg = dataclasses.replace(cfg, num_rois=r, max_boxes=min(cfg.max_boxes, r), min_boxes=min(cfg.min_boxes, r))
        say(f"proposals R={r}")
        steps[f"proposals/R{r}"] = time_fn(partial(propose, prob, delta, hw, scale, rcfg), **light)
        rois, n_valid = propose(prob, delta, hw, scale, rcfg)
        spec = stage_specs(rcfg)["roi_head"]
        example = (torch.from_numpy(res4[:, :, :6, :8].copy()), torch.from_numpy(rois[:4] * 0 + 16))
        feeds = {"res4": res4, "rois": rois}
        head = det.roi_head("sparse")
        say(f"roi_head torch R={r}")
        with torch.no_grad():
            t_res4, t_rois = torch.from_numpy(res4), torch.from_numpy(rois)
            steps[f"roi_head/torch/R{r}"] = time_fn(partial(head, t_res4, t_rois), **heavy)
            steps[f"roipool/torch/R{r}"] = time_fn(partial(head.pool, t_res4, t_rois), **heavy)
            cls_prob = head(t_res4, t_rois)[1].numpy()
        for variant in ("sparse", "maxroipool"):
            path = tmp / f"rh_{variant}_{r}.onnx"
            _export(det.roi_head(variant), example, path, spec, 17)
            sess = session(path)
            say(f"roi_head onnxruntime {variant} R={r}")
            steps[f"roi_head/onnxruntime-{variant}/R{r}"] = time_fn(partial(sess.run, None, feeds), **heavy)
        say(f"selection R={r}")
        steps[f"selection/R{r}"] = time_fn(partial(select_boxes, rois, cls_prob, n_valid, scale, rcfg), **light)
        for engine in ("torch", "onnxruntime-sparse", "onnxruntime-maxroipool"):
            bb_key = "backbone_rpn/torch" if engine == "torch" else "backbone_rpn/onnxruntime"
            per = {
                "preprocess": steps["preprocess"]["median_ms"],
                "backbone_rpn": steps[bb_key]["median_ms"],
                "proposals": steps[f"proposals/R{r}"]["median_ms"],
                "roi_head": steps[f"roi_head/{engine}/R{r}"]["median_ms"],
                "selection": steps[f"selection/R{r}"]["median_ms"],
            }
            configs[f"{engine} R={r}"] = {
                "steps_ms": per,
                "total_ms": sum(per.values()),
                "rois": r,
                "valid_rois": int(n_valid),
            }
    for r in rois_counts:
        t = configs[f"torch R={r}"]
        res5_ms = t["steps_ms"]["roi_head"] - steps[f"roipool/torch/R{r}"]["median_ms"]
        t["res5_and_heads_on_rois_ms"] = res5_ms
        t["res5_and_heads_share"] = res5_ms / t["total_ms"]
        for engine in ("onnxruntime-sparse", "onnxruntime-maxroipool"):
            c = configs[f"{engine} R={r}"]
            c["speedup_vs_torch"] = t["total_ms"] / c["total_ms"]
            c["roi_head_speedup_vs_torch"] = t["steps_ms"]["roi_head"] / c["steps_ms"]["roi_head"]
            c["roi_head_share"] = c["steps_ms"]["roi_head"] / c["total_ms"]
        t["roi_head_share"] = t["steps_ms"]["roi_head"] / t["total_ms"]
    results.update(
        {
            "machine": machine(),
            "torch": torch.__version__,
            "onnxruntime": ort.__version__,
            "weights": "random (init_random, seed 0): timing only",
            "steps": steps,
            "configs": configs,
            "load_average_end": os.getloadavg(),
        }
    )
    name = "detector_tiny" if args.tiny else "detector"
    path = write_results(name, results)
    plot(configs, RESULTS / f"{name}.png", hw)
    for label, c in configs.items():
        parts = ", ".join(f"{k} {v:.0f}" for k, v in c["steps_ms"].items())
        print(f"{label:32s} total {c['total_ms']:9.0f} ms  ({parts})")
    print(f"wrote {path} and {RESULTS / (name + '.png')}")
    return 0


def plot(configs: dict[str, Any], path: Path, hw: tuple[int, int]) -> None:
    """Horizontal stacked bars: one per engine × R, one segment per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vsrt.io import atomic_path

    names = list(configs)
    fig, ax = plt.subplots(figsize=(10, 0.6 * len(names) + 1.6))
    left = np.zeros(len(names))
    for step in STEPS:
        vals = np.array([configs[n]["steps_ms"][step] / 1e3 for n in names])
        ax.barh(names, vals, left=left, label=step)
        left += vals
    ax.set_xlabel(f"seconds per {hw[0]}×{hw[1]} image (CPU)")
    ax.set_title("bottom-up-attention detector: time per stage")
    ax.invert_yaxis()
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
