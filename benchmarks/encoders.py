"""Full-size VSRN encoders: PyTorch eager vs ONNX Runtime FP32 on this CPU, batch 1 and 32, same process.

Also measures the machine's FP32 GEMM rate, to state what fraction of it the image encoder reaches.
Writes benchmarks/results/encoders.json and prints a table.

    python benchmarks/encoders.py [--threads 2] [--batches 1,32]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, time_fn, write_results  # noqa: E402

from vsrt.export.onnx_export import export_stage  # noqa: E402
from vsrt.export.vsrn import random_captions, random_regions, stage_exports  # noqa: E402
from vsrt.manifest import Manifest  # noqa: E402
from vsrt.models.vsrn import VSRNConfig, build  # noqa: E402
from vsrt.runtime.backends.onnxruntime_backend import OrtBackend  # noqa: E402


#: multiply-accumulates per image of the full-size VSRN image encoder (fc + 4 Rs_GCN + 36-step GRU)
def image_encoder_macs(cfg: VSRNConfig) -> float:
    n, d, f = cfg.num_regions, cfg.embed_size, cfg.img_dim
    fc = n * f * d
    gcn = 4 * (4 * n * d * d + 2 * n * n * d)
    gru = n * 2 * 3 * d * d
    return float(fc + gcn + gru)


def fused_image_encoder_macs(cfg: VSRNConfig) -> float:
    """Multiply-accumulates the exported graph really does (FusedRsGCN: one N×C×2C product per block)."""
    n, d, f = cfg.num_regions, cfg.embed_size, cfg.img_dim
    return float(n * f * d + 4 * (2 * n * d * d + 2 * n * n * d) + n * 2 * 3 * d * d)


def gemm_gflops(threads: int, n: int = 2048) -> float:
    """Measured peak FP32 GEMM rate (GFLOP/s) with torch's BLAS at ``threads`` threads (n×n×n).

    The fastest repeat is taken: a peak is what the machine can do, and on a shared machine the median is the
    neighbours' load, not the hardware (a median peak once came out below the encoder's own rate).
    """
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    stats = time_fn(lambda: torch.mm(a, b), warmup=3, min_repeats=10, min_seconds=3.0)
    return 2 * n**3 / (stats["min_ms"] / 1e3) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--seq", type=int, default=12, help="caption length for the text encoder")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    cfg = VSRNConfig(vocab_size=10000)
    torch.manual_seed(0)
    mods = {k: m.eval() for k, m in build(cfg).items()}
    tmp = Path(tempfile.mkdtemp(prefix="vsrt-bench-"))
    man = Manifest("vsrn")
    exports = {se.name: se for se in stage_exports(cfg, mods)}
    parity = {name: export_stage(se, tmp, man) for name, se in exports.items()}
    backends = {name: OrtBackend(tmp / f"onnx/{name}.fp32.onnx", intra_op_threads=args.threads) for name in exports}
    gflops = gemm_gflops(args.threads)
    rows = []
    for stage in ("visual", "text"):
        se = exports[stage]
        for b in batches:
            if stage == "visual":
                inputs = (random_regions(b, 0, cfg.num_regions, cfg.img_dim),)
            else:
                inputs = random_captions(b, 0, cfg.vocab_size, args.seq)
            feeds = {s.name: t.numpy() for s, t in zip(se.inputs, inputs)}

            def eager(se=se, inputs=inputs):  # the original PyTorch computation (unfused Rs_GCN, packed GRU)
                with torch.no_grad():
                    (se.reference or se.module)(*inputs)

            t_torch = time_fn(eager)
            t_ort = time_fn(lambda feeds=feeds, stage=stage: backends[stage].run(feeds))
            row = {
                "stage": stage,
                "batch": b,
                "torch_eager_ms": t_torch["median_ms"],
                "onnxruntime_ms": t_ort["median_ms"],
                "speedup_ort_vs_eager": t_torch["median_ms"] / t_ort["median_ms"],
                "items_per_s_ort": b / (t_ort["median_ms"] / 1e3),
            }
            if stage == "visual":
                flops = 2 * image_encoder_macs(cfg) * b
                # "effective": FLOPs of the original computation; the exported graph does fewer (fused Rs_GCN)
                row["ort_gflops"] = flops / (t_ort["median_ms"] / 1e3) / 1e9
                row["ort_fraction_of_gemm_peak"] = row["ort_gflops"] / gflops
                actual = 2 * fused_image_encoder_macs(cfg) * b / (t_ort["median_ms"] / 1e3) / 1e9
                row["ort_actual_gflops"] = actual
                row["ort_actual_fraction_of_gemm_peak"] = actual / gflops
                row["torch_gflops"] = flops / (t_torch["median_ms"] / 1e3) / 1e9
            rows.append(row)
            print(
                f"{stage:6s} b={b:3d}  torch {t_torch['median_ms']:9.2f} ms  ort {t_ort['median_ms']:9.2f} ms  "
                f"×{row['speedup_ort_vs_eager']:.2f}"
                + (
                    f"  ort {row['ort_gflops']:.1f} GFLOP/s "
                    f"effective ({100 * row['ort_actual_fraction_of_gemm_peak']:.0f}% of GEMM peak in real FLOPs)"
                    if stage == "visual"
                    else ""
                )
            )
    out = {
        "benchmark": "encoders",
        "model": "VSRN full size (D=2048, 36x2048 regions, word_dim 300), random weights",
        "threads": args.threads,
        "gemm_fp32_gflops": gflops,
        "image_encoder_gmac_per_image": image_encoder_macs(cfg) / 1e9,
        "rows": rows,
        "parity": parity,
        "machine": machine(),
        "torch": torch.__version__,
        "onnxruntime": __import__("onnxruntime").__version__,
    }
    print(f"FP32 GEMM rate: {gflops:.1f} GFLOP/s  → {write_results('encoders', out)}")


if __name__ == "__main__":
    main()
