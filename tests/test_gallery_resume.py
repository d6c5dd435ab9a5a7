"""`vsrt index` killed with SIGKILL mid-way, then re-run, gives exactly the gallery of an uninterrupted run; the
CLI's index/search round trip on a tiny ONNX model (no torch)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _retrieval_helpers import tiny_model_dir

from vsrt.runtime.gallery import LOG, Gallery

N_ITEMS = 2400
COMMIT = 20


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("resume")
    model = tiny_model_dir(root / "model", feat=32, dim=16)
    regions = np.random.default_rng(0).random((N_ITEMS, 36, 32), dtype=np.float32)
    regions[100] = regions[7]  # one duplicate row: skipped by content hash
    np.save(root / "test_ims.npy", regions)
    return model, root / "test_ims.npy"


def _index_cmd(model: Path, source: Path, gallery: Path, storage: str = "fp16") -> list[str]:
    return [sys.executable, "-m", "vsrt", "index", str(source), "--model", str(model), "--gallery", str(gallery),
            "--storage", storage, "--commit-every", str(COMMIT), "--backend", "onnxruntime", "--json"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "VSRT_ORT_THREADS": "1"}


def _kill_after(cmd: list[str], log: Path, commits: int, timeout: float = 120.0) -> None:
    """Start ``cmd`` and SIGKILL it once ``log`` has at least ``commits`` lines; fail if it finished first."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if log.exists() and log.read_bytes().count(b"\n") >= commits:
                break
            assert proc.poll() is None, "the indexing run finished before it could be killed mid-way"
            time.sleep(0.002)
        assert proc.poll() is None, "the indexing run finished before it could be killed mid-way"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _contents(path: Path) -> dict:
    g = Gallery.open(path)
    g.verify()
    commits = [{k: v for k, v in c.items() if k != "time"} for c in g.commits()]
    return {"len": len(g), "keys": g.keys(), "meta": [g.item(i)["meta"] for i in range(len(g))],
            "emb": g.embeddings().tobytes(), "commits": commits}


@pytest.mark.slow
def test_kill9_then_resume_equals_uninterrupted(setup: tuple[Path, Path], tmp_path: Path) -> None:
    model, source = setup
    ref, crashed = tmp_path / "ref", tmp_path / "crashed"
    r = subprocess.run(_index_cmd(model, source, ref), capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["added"] == N_ITEMS - 1 and report["duplicates"] == ["test_ims.npy#100"]
    assert report["storage_recall"]["storage"] == "fp16" and report["storage_recall"]["recall_at_k"] > 0.9

    _kill_after(_index_cmd(model, source, crashed), crashed / LOG, commits=8)
    first = len(Gallery.open(crashed))
    assert 0 < first < N_ITEMS - 1
    _kill_after(_index_cmd(model, source, crashed), crashed / LOG, commits=60)  # killed again, later
    assert first < len(Gallery.open(crashed)) < N_ITEMS - 1
    r = subprocess.run(_index_cmd(model, source, crashed), capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr
    resumed = json.loads(r.stdout)
    assert resumed["skipped"] >= 60 * COMMIT and resumed["items"] == N_ITEMS - 1
    a, b = _contents(ref), _contents(crashed)
    assert a["len"] == b["len"] == N_ITEMS - 1
    assert a["keys"] == b["keys"] and a["meta"] == b["meta"]
    assert a["emb"] == b["emb"]
    assert a["commits"] == b["commits"]  # same segments, same files, byte for byte (same SHA-256s)
    seg_files = sorted(p.name for p in (crashed / "segments").iterdir())
    assert seg_files == sorted(p.name for p in (ref / "segments").iterdir())  # no leftovers


def test_cli_index_and_search(setup: tuple[Path, Path], tmp_path: Path) -> None:
    from vsrt.cli import main

    model, source = setup
    small = tmp_path / "small_ims.npy"
    np.save(small, np.load(source, mmap_mode="r")[:40])
    g = tmp_path / "g"
    assert main(["index", str(small), "--model", str(model), "-g", str(g), "--storage", "int8",
                 "--backend", "onnxruntime"]) == 0
    assert main(["index", str(small), "--model", str(model), "-g", str(g), "--backend", "onnxruntime"]) == 0
    assert len(Gallery.open(g)) == 40  # second run: everything already there

    from vsrt.runtime import open_model

    m = open_model(model, backend="onnxruntime")
    emb = m.encode_regions(np.load(small)[[3]])
    proc = subprocess.run([sys.executable, "-m", "vsrt", "search", "--regions", str(small), "--row", "3", "-g",
                           str(g), "-k", "4", "--json", "--backend", "onnxruntime"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    hits = out["results"][0]["hits"]
    assert hits[0]["key"] == "small_ims.npy#3" and hits[0]["meta"]["row"] == 3 and len(hits) == 4
    assert abs(hits[0]["score"] - float(emb[0] @ emb[0])) < 2e-2
    proc = subprocess.run([sys.executable, "-m", "vsrt", "search", "a dog on the beach", "red car", "-g", str(g),
                           "--json", "-k", "3"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [r["query"] for r in out["results"]] == ["a dog on the beach", "red car"]
    txt = m.encode_texts(["a dog on the beach"])
    ref = np.argsort(-(Gallery.open(g).embeddings() @ txt[0]), kind="stable")[:3]
    assert [h["index"] for h in out["results"][0]["hits"]] == ref.tolist()
    proc = subprocess.run([sys.executable, "-m", "vsrt", "search", "red car", "-g", str(g)], capture_output=True,
                          text=True)
    assert proc.returncode == 0 and "small_ims.npy#" in proc.stdout


def test_cli_refuses_other_model_and_bad_source(setup: tuple[Path, Path], tmp_path: Path) -> None:
    model, source = setup
    other = tiny_model_dir(tmp_path / "other", feat=32, dim=16, seed=5)
    small = tmp_path / "small_ims.npy"
    np.save(small, np.load(source, mmap_mode="r")[:5])
    g = tmp_path / "g"
    base = [sys.executable, "-m", "vsrt"]
    assert subprocess.run(base + ["index", str(small), "--model", str(model), "-g", str(g)]).returncode == 0
    proc = subprocess.run(base + ["search", "red car", "-g", str(g), "--model", str(other)], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "was built with model family" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run(base + ["index", str(small), "--model", str(other), "-g", str(g)], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "not comparable" in proc.stderr
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((3, 4), np.float32))
    proc = subprocess.run(base + ["index", str(bad), "--model", str(model), "-g", str(tmp_path / "g2")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "region features [N, regions, features]" in proc.stderr
    proc = subprocess.run(base + ["index", str(tmp_path), "--model", str(model), "-g", str(tmp_path / "g3")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "holds no images" in proc.stderr


def test_cli_faiss_and_pairwise_rerank(tmp_path: Path) -> None:
    """A VSR++-shaped tiny model: index with --store-local, search with --rerank; faiss Flat checked against exact."""
    from vsrt.runtime import open_model
    from vsrt.runtime.pairwise import PairwiseScorer, encode_caption_items

    model = tiny_model_dir(tmp_path / "model", feat=32, dim=16, pairwise=True)
    regions = np.random.default_rng(1).random((60, 36, 32), dtype=np.float32)
    np.save(tmp_path / "test_ims.npy", regions)
    g = tmp_path / "g"
    base = [sys.executable, "-m", "vsrt"]
    r = subprocess.run(base + ["index", str(tmp_path / "test_ims.npy"), "--model", str(model), "-g", str(g),
                               "--storage", "fp16", "--store-local"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert Gallery.open(g).has_local
    query = "a red car on the beach"
    r = subprocess.run(base + ["search", query, "-g", str(g), "--rerank", "20", "-k", "5", "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)["results"][0]["hits"]
    assert len(hits) == 5 and all(abs(h["fused"] - (h["global"] + 2.0 * h["local"])) < 1e-4 for h in hits)
    # the same two-stage ranking computed directly from the model and the stored features
    m = open_model(model, backend="onnxruntime")
    pair = PairwiseScorer(m)
    gal = Gallery.open(g)
    t = m.encode_texts([query])[0]
    glob = gal.embeddings() @ t
    short = np.argsort(-glob, kind="stable")[:20]
    loc = pair.local_scores(gal.local_features(short), encode_caption_items(m, [query]).words(0))
    want = short[np.argsort(-(glob[short] + 2.0 * loc), kind="stable")][:5]
    assert [h["index"] for h in hits] == want.tolist()
    by_kernel = {}
    for kernel in ("numpy", "ort", "native", "auto"):  # every block kernel, named in the output, same hits
        r = subprocess.run(base + ["search", query, "-g", str(g), "-k", "5", "--json", "--kernel", kernel],
                           capture_output=True, text=True)
        if kernel == "native" and "not built" in r.stderr:
            continue
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["engine"].startswith("exact (") and (kernel == "auto" or f"({kernel} kernel)" in out["engine"])
        by_kernel[kernel] = [h["index"] for h in out["results"][0]["hits"]]
    assert len({tuple(v) for v in by_kernel.values()}) == 1, by_kernel
    r = subprocess.run(base + ["search", "--regions", str(tmp_path / "test_ims.npy"), "--rerank", "5", "-g", str(g)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "caption queries" in r.stderr
    pytest.importorskip("faiss", reason="faiss-cpu (test extra) is not installed")
    r = subprocess.run(base + ["search", query, "-g", str(g), "--faiss", "Flat", "--check-exact", "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["recall_vs_exact"] == 1.0 and out["engine"] == "faiss Flat"
