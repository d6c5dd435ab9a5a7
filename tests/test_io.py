"""Atomic writes: the result replaces the target whole, leaves nothing behind on failure, and has ordinary
permissions (not the owner-only mode of the temporary file)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from vsrt.io import atomic_path, atomic_write_json, atomic_write_text, read_json


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_new_file_gets_umask_mode(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.txt") == 0o640
    assert (tmp_path / "a.txt").read_text() == "x"


def test_replaced_file_keeps_its_mode(tmp_path: Path) -> None:
    p = tmp_path / "b.json"
    p.write_text("{}")
    p.chmod(0o604)
    atomic_write_json(p, {"k": 1})
    assert _mode(p) == 0o604 and read_json(p) == {"k": 1}


def test_failure_leaves_target_and_no_temporary(tmp_path: Path) -> None:
    p = tmp_path / "c.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(p) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert p.read_text() == "old"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["c.txt"]
