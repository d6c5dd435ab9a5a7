"""The model directory's ``manifest.json``: what each stage takes and gives, which files hold it in which
precision (with checksums and parity), which engines were built where, and the software versions.

Layout of a model directory::

    MODEL_DIR/
      manifest.json      written last, atomically
      config.json        model hyper-parameters (family, sizes, tokenizer settings)
      vocab.json         word vocabulary (families with a word vocabulary)
      weights/<stage>.safetensors
      onnx/<stage>.<precision>.onnx
      engines/<stage>_<precision>_trt<version>_sm<XY>.engine

This module has no torch dependency: the runtime reads manifests on devices without PyTorch.
"""

from __future__ import annotations

import datetime as _dt
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vsrt import __version__
from vsrt.errors import ManifestError
from vsrt.io import atomic_write_json, read_json, sha256_file

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class TensorSpec:
    """One graph input or output. ``shape`` entries are ints or symbolic names (``"batch"``).

    ``min``/``opt``/``max`` are concrete shapes for TensorRT optimisation profiles (inputs only).
    """

    name: str
    dtype: str
    shape: list[int | str]
    min: list[int] | None = None
    opt: list[int] | None = None
    max: list[int] | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        for k in ("min", "opt", "max"):
            v = getattr(self, k)
            if v is not None:
                d[k] = list(v)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(d["name"], d["dtype"], list(d["shape"]), d.get("min"), d.get("opt"), d.get("max"))


@dataclass
class StageFile:
    """One ONNX file of a stage at one precision, with its checksum and measured fidelity."""

    path: str
    sha256: str
    parity: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "parity": self.parity, **self.extra}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StageFile:
        extra = {k: v for k, v in d.items() if k not in ("path", "sha256", "parity")}
        return cls(d["path"], d["sha256"], dict(d.get("parity", {})), extra)


@dataclass
class Stage:
    """A graph of the model (``visual``, ``text``, ``backbone_rpn``, ``roi_head``, ``pair_scorer``, ...)."""

    name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    files: dict[str, StageFile] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "files": {p: f.to_json() for p, f in self.files.items()},
            "info": self.info,
        }

    @classmethod
    def from_json(cls, name: str, d: dict[str, Any]) -> Stage:
        return cls(
            name,
            [TensorSpec.from_json(t) for t in d.get("inputs", [])],
            [TensorSpec.from_json(t) for t in d.get("outputs", [])],
            {p: StageFile.from_json(f) for p, f in d.get("files", {}).items()},
            dict(d.get("info", {})),
        )


@dataclass
class Manifest:
    """In-memory form of ``manifest.json``. Load with :meth:`load`, write with :meth:`save`."""

    family: str
    config_sha256: str = ""
    stages: dict[str, Stage] = field(default_factory=dict)
    engines: list[dict[str, Any]] = field(default_factory=list)
    calibration: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    schema: int = SCHEMA_VERSION

    # ---------------------------------------------------------------- I/O
    @classmethod
    def load(cls, model_dir: str | Path) -> Manifest:
        """Read ``MODEL_DIR/manifest.json``; a missing or malformed manifest is a :class:`ManifestError`."""
        path = Path(model_dir) / MANIFEST_NAME
        if not Path(model_dir).is_dir():
            raise ManifestError(f"model directory not found: {model_dir}")
        if not path.is_file():
            raise ManifestError(
                f"{path} not found: {model_dir} is not a vsrt model directory (create one with `vsrt convert`)"
            )
        try:
            d = read_json(path, "manifest")
        except Exception as exc:  # InputError -> ManifestError for a uniform message
            raise ManifestError(str(exc)) from None
        if not isinstance(d, dict) or "schema" not in d or "model" not in d:
            raise ManifestError(f"{path} is not a vsrt manifest (no 'schema'/'model' keys)")
        if d["schema"] > SCHEMA_VERSION:
            raise ManifestError(
                f"{path} has manifest schema {d['schema']}, newer than this vsrt understands "
                f"({SCHEMA_VERSION}); upgrade vsrt"
            )
        return cls(
            family=d["model"]["family"],
            config_sha256=d["model"].get("config_sha256", ""),
            stages={n: Stage.from_json(n, s) for n, s in d.get("stages", {}).items()},
            engines=list(d.get("engines", [])),
            calibration=dict(d.get("calibration", {})),
            source=dict(d.get("source", {})),
            versions=dict(d.get("versions", {})),
            schema=d["schema"],
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "model": {"family": self.family, "config_sha256": self.config_sha256},
            "stages": {n: s.to_json() for n, s in self.stages.items()},
            "engines": self.engines,
            "calibration": self.calibration,
            "source": self.source,
            "versions": self.versions,
        }

    def save(self, model_dir: str | Path) -> None:
        """Write the manifest atomically (always the last file written into a model directory)."""
        self.versions.setdefault("vsrt", __version__)
        self.versions["vsrt"] = __version__
        self.versions.setdefault("python", platform.python_version())
        atomic_write_json(Path(model_dir) / MANIFEST_NAME, self.to_json())

    # ---------------------------------------------------------------- stages and files
    def stage(self, name: str) -> Stage:
        """The stage called ``name``, or a :class:`ManifestError` listing the stages there are."""
        if name not in self.stages:
            have = ", ".join(sorted(self.stages)) or "none"
            raise ManifestError(f"model has no stage '{name}' (stages: {have}); run `vsrt export` first?")
        return self.stages[name]

    def set_stage(self, stage: Stage) -> None:
        """Add or replace a stage (keeping files of other precisions when the I/O is unchanged)."""
        old = self.stages.get(stage.name)
        if old is not None and not stage.files:
            same_io = [t.to_json() for t in old.inputs] == [t.to_json() for t in stage.inputs] and [
                t.to_json() for t in old.outputs
            ] == [t.to_json() for t in stage.outputs]
            if same_io:
                stage.files = old.files
        self.stages[stage.name] = stage

    def add_file(
        self,
        model_dir: str | Path,
        stage: str,
        precision: str,
        rel_path: str,
        parity: dict[str, Any] | None = None,
        **extra: Any,
    ) -> StageFile:
        """Register ``rel_path`` (relative to the model dir) as ``stage`` at ``precision``, with its SHA-256."""
        if precision not in PRECISIONS:
            raise ManifestError(f"unknown precision '{precision}' (expected one of {', '.join(PRECISIONS)})")
        path = Path(model_dir) / rel_path
        f = StageFile(rel_path, sha256_file(path), dict(parity or {}), dict(extra))
        self.stage(stage).files[precision] = f
        return f

    def file_path(self, model_dir: str | Path, stage: str, precision: str = "fp32", verify: bool = True) -> Path:
        """Path of a stage's ONNX file at ``precision``, its checksum verified against the manifest."""
        st = self.stage(stage)
        if precision not in st.files:
            have = ", ".join(sorted(st.files)) or "none"
            hint = "`vsrt export`" if precision == "fp32" else "`vsrt calibrate`"
            raise ManifestError(
                f"stage '{stage}' has no {precision} file (has: {have}); create it with {hint}"
            )
        sf = st.files[precision]
        path = Path(model_dir) / sf.path
        if not path.is_file():
            raise ManifestError(f"{path} is listed in the manifest but missing; re-run `vsrt export`")
        if verify:
            got = sha256_file(path)
            if got != sf.sha256:
                raise ManifestError(
                    f"{path} does not match its manifest checksum (sha256 {got[:12]}… != {sf.sha256[:12]}…): "
                    "the file was changed or corrupted after export; re-run `vsrt export`"
                )
        return path

    # ---------------------------------------------------------------- engines
    def add_engine(self, entry: dict[str, Any]) -> None:
        """Register an engine (replacing an entry for the same file)."""
        entry = dict(entry)
        entry.setdefault("built_at", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        self.engines = [e for e in self.engines if e.get("file") != entry["file"]] + [entry]
