"""Two-stage retrieval for pairwise models (VSR++): recall and per-query latency against the shortlist size k.

For an exported VSR++ model and a precomputed split: the global score alone, the local score alone, the full fused
ranking (every pair through ``pair_scorer``), and global top-k → fused re-ranking for each k — recall in both
directions (original protocol), the smallest k whose R@10 equals the full fused ranking's, and the per-query latency
of re-ranking (ONNX Runtime CPU, same process, side by side). Writes benchmarks/results/rerank.json and rerank.png.

    python benchmarks/rerank.py --model MODEL_DIR --data DATA_DIR [--split test] [--ks 1,2,5,10,20,50,100]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, time_fn, write_results  # noqa: E402

from vsrt.data.precomp import load_precomp  # noqa: E402
from vsrt.eval.metrics import evaluate  # noqa: E402
from vsrt.runtime.model import RetrievalModel  # noqa: E402
from vsrt.runtime.pairwise import (  # noqa: E402
    PairwiseScorer,
    encode_caption_items,
    encode_image_items,
    two_stage_matrix,
)

I2T = ("i2t_r1", "i2t_r5", "i2t_r10")
T2I = ("t2i_r1", "t2i_r5", "t2i_r10")


def _recalls(m: dict[str, Any]) -> dict[str, float]:
    out = {k: float(m[k]) for k in (*I2T, *T2I)}
    out["rsum"] = sum(out.values())
    return out


def two_stage_recalls(s_g: np.ndarray, fused: np.ndarray, k: int) -> dict[str, float]:
    """Recalls of global top-k → fused re-ranking: t2i from per-caption shortlists, i2t from per-image ones."""
    t2i = evaluate(two_stage_matrix(s_g, fused, k, axis=0))
    i2t = evaluate(two_stage_matrix(s_g, fused, k, axis=1))
    return _recalls({**{x: i2t[x] for x in I2T}, **{x: t2i[x] for x in T2I}})


def recovering_k(per_k: dict[int, dict[str, float]], full: dict[str, float]) -> int | None:
    """Smallest k from which on (for every larger k measured) both R@10 equal the full fused ranking's."""
    ks = sorted(per_k)
    for i, k in enumerate(ks):
        if all(per_k[j]["i2t_r10"] == full["i2t_r10"] and per_k[j]["t2i_r10"] == full["t2i_r10"] for j in ks[i:]):
            return k
    return None


def measure(model_dir: str | Path, data_dir: str | Path, split: str = "test", ks: tuple[int, ...] = (1, 2, 5, 10),
            threads: int = 2, latency_queries: int = 8, min_seconds: float = 1.0) -> dict[str, Any]:
    """Everything the module docstring lists, as one JSON-able dict."""
    model = RetrievalModel(model_dir, "onnxruntime", intra_op_threads=threads)
    scorer = PairwiseScorer(model)
    data = load_precomp(data_dir, split)
    images = encode_image_items(model, np.asarray(data.images, np.float32))
    captions = encode_caption_items(model, data.captions)
    n_img, n_cap = len(images), len(captions)
    s_g = images.embeddings @ captions.embeddings.T
    t0 = time.perf_counter()
    s_l = scorer.local_matrix(images, captions)
    full_seconds = time.perf_counter() - t0
    fused = scorer.fuse(s_g, s_l)
    full = _recalls(evaluate(fused))
    per_k = {k: two_stage_recalls(s_g, fused, k) for k in ks}
    k_star = recovering_k(per_k, full)

    queries = list(range(0, n_cap, max(1, n_cap // latency_queries)))[:latency_queries]
    img_queries = list(range(0, n_img, max(1, n_img // latency_queries)))[:latency_queries]

    def cycle(fn, items):  # noqa: ANN001, ANN202 - a closure over a list of query ids
        state = {"i": 0}

        def run() -> None:
            fn(items[state["i"] % len(items)])
            state["i"] += 1

        return run

    def global_t2i(c: int) -> None:
        g = images.embeddings @ captions.embeddings[c]
        np.argpartition(-g, min(10, n_img - 1))

    latency: dict[str, Any] = {
        "t2i_global_only_ms": time_fn(cycle(global_t2i, queries), min_seconds=min_seconds)["median_ms"],
        "t2i_rerank_ms": {},
        "i2t_rerank_ms": {},
    }
    for k in sorted({*ks, n_img}):
        if k > n_img:
            continue
        st = time_fn(cycle(lambda c, k=k: scorer.rerank_images(captions, c, images, k), queries),
                     min_repeats=3, min_seconds=min_seconds)
        latency["t2i_rerank_ms"][str(k)] = st["median_ms"]
    for k in sorted(ks):
        if k > n_cap:
            continue
        st = time_fn(cycle(lambda i, k=k: scorer.rerank_captions(images, i, captions, k), img_queries),
                     min_repeats=3, min_seconds=min_seconds)
        latency["i2t_rerank_ms"][str(k)] = st["median_ms"]
    return {
        "model": str(model_dir),
        "data": str(data_dir),
        "split": split,
        "images": n_img,
        "captions": n_cap,
        "mu": scorer.mu,
        "global_only": _recalls(evaluate(s_g)),
        "local_only": _recalls(evaluate(s_l)),
        "full_fused": full,
        "full_fused_seconds": full_seconds,
        "full_fused_pairs": n_img * n_cap,
        "two_stage": {str(k): v for k, v in per_k.items()},
        "k_recovering_full_r10": k_star,
        "latency": latency,
        "backend": "onnxruntime cpu fp32",
        "threads": threads,
        "machine": machine(),
    }


def plot(res: dict[str, Any], path: Path) -> None:
    """Recall@10 and t2i latency against k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted(int(k) for k in res["two_stage"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for key, style in (("t2i_r10", "o-"), ("i2t_r10", "s-"), ("t2i_r1", "o--"), ("i2t_r1", "s--")):
        a.plot(ks, [res["two_stage"][str(k)][key] for k in ks], style, label=f"two-stage {key}")
        a.axhline(res["full_fused"][key], color="gray", lw=0.8, ls=":")
    a.set_xscale("log")
    a.set_xlabel("shortlist k (global top-k)")
    a.set_ylabel("recall (%)")
    a.set_title(f"re-ranking recall (dotted: full fused); k* = {res['k_recovering_full_r10']}")
    a.legend(fontsize=7)
    lat = res["latency"]["t2i_rerank_ms"]
    lk = sorted(int(k) for k in lat)
    b.plot(lk, [lat[str(k)] for k in lk], "o-", label="t2i: global + pair_scorer on k")
    b.axhline(res["latency"]["t2i_global_only_ms"], color="gray", ls=":", label="global only")
    b.set_xscale("log")
    b.set_yscale("log")
    b.set_xlabel("k")
    b.set_ylabel("ms per query (median)")
    b.set_title(f"latency, {res['images']} images, ONNX Runtime CPU")
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="exported VSR++ model directory")
    ap.add_argument("--data", required=True, help="precomputed dataset directory (SCAN layout)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--ks", default="1,2,3,5,10,20,50,100")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="rerank", help="result file name (benchmarks/results/<name>.json/.png)")
    args = ap.parse_args()
    res = measure(args.model, args.data, args.split, tuple(int(k) for k in args.ks.split(",")), args.threads)
    path = write_results(args.name, res)
    plot(res, RESULTS / f"{args.name}.png")
    print(f"global only   rsum {res['global_only']['rsum']:.1f}  R@10 i2t {res['global_only']['i2t_r10']:.1f} "
          f"t2i {res['global_only']['t2i_r10']:.1f}")
    print(f"full fused    rsum {res['full_fused']['rsum']:.1f}  R@10 i2t {res['full_fused']['i2t_r10']:.1f} "
          f"t2i {res['full_fused']['t2i_r10']:.1f}  ({res['full_fused_seconds']:.1f} s for "
          f"{res['full_fused_pairs']} pairs)")
    for k, r in res["two_stage"].items():
        lat = res["latency"]["t2i_rerank_ms"].get(k)
        print(f"two-stage k={k:>4}  rsum {r['rsum']:.1f}  R@10 i2t {r['i2t_r10']:.1f} t2i {r['t2i_r10']:.1f}"
              + (f"  t2i {lat:.2f} ms/query" if lat is not None else ""))
    print(f"k recovering the full fused R@10: {res['k_recovering_full_r10']}")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
