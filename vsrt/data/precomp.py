"""Reader of the SCAN precomputed-feature layout (``data.zip`` of SCAN / VSRN; also what ``vsrt synth`` writes).

A dataset directory holds, per split (``train``, ``dev``, ``test``, COCO's ``testall``, …):

* ``{split}_ims.npy`` — float32 ``[N_img, R, F]`` region features (36 × 2048 bottom-up-attention features for
  the published data), memory-mapped, never copied into memory by the reader;
* ``{split}_caps.txt`` — UTF-8 text, one caption per line, **5 consecutive lines per image** (caption ``c``
  belongs to image ``c // 5``);
* ``{split}_ids.txt`` (optional) — dataset ids, one per line, either one per image or one per caption.

Captions policy: each line is stripped of surrounding white space (as the original ``line.strip()``) and a
trailing newline at the end of the file ends the last line (it is not an extra caption). An empty or white-space
only line *inside* the file is an error (the original loader would silently keep it as an empty caption, whose
token sequence is just ``<start> <end>``). A UTF-8 byte-order mark at the very start is skipped.

Nothing is ever substituted: a missing or malformed file is an :class:`~vsrt.errors.InputError` (DSRAN's loader
quietly uses random features for missing files — this one does not). The ``dev`` split is not truncated here (the
original loaders keep its first 5000 captions for speed); slice ``images[:n]`` / ``captions[:5n]`` if wanted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vsrt.errors import InputError

CAPTIONS_PER_IMAGE = 5


@dataclass(frozen=True)
class PrecompSplit:
    """One split: memory-mapped region features, their captions (5 per image) and optional ids."""

    data_dir: Path
    split: str
    images: np.ndarray  # float32 [N_img, R, F], read-only memory map
    captions: list[str]  # 5·N_img captions, 5 consecutive per image
    ids: list[str] | None  # one per image or one per caption, as in {split}_ids.txt; None without the file
    captions_per_image: int = CAPTIONS_PER_IMAGE

    @property
    def n_images(self) -> int:
        """Number of images ``N_img``."""
        return int(self.images.shape[0])

    @property
    def n_captions(self) -> int:
        """Number of captions ``5·N_img``."""
        return len(self.captions)

    @property
    def num_regions(self) -> int:
        """Regions per image ``R``."""
        return int(self.images.shape[1])

    @property
    def feature_dim(self) -> int:
        """Feature size per region ``F``."""
        return int(self.images.shape[2])

    def image_of_caption(self, c: int) -> int:
        """Index of the image caption ``c`` describes: ``c // 5``."""
        if not 0 <= c < len(self.captions):
            raise IndexError(f"caption index {c} out of range 0..{len(self.captions) - 1}")
        return c // self.captions_per_image

    def captions_of_image(self, i: int) -> list[str]:
        """The five captions of image ``i``."""
        if not 0 <= i < self.n_images:
            raise IndexError(f"image index {i} out of range 0..{self.n_images - 1}")
        k = self.captions_per_image
        return self.captions[k * i:k * (i + 1)]


def split_paths(data_dir: str | Path, split: str) -> dict[str, Path]:
    """``{"images", "captions", "ids"}`` paths of a split (whether or not they exist)."""
    d = Path(data_dir)
    return {"images": d / f"{split}_ims.npy", "captions": d / f"{split}_caps.txt", "ids": d / f"{split}_ids.txt"}


def _read_lines(path: Path, what: str) -> list[str]:
    """Lines of a UTF-8 text file, stripped; refuses undecodable bytes and empty lines (see module docstring)."""
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(
            f"{what} {path} is not UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start} (line {line}) "
            f"cannot be decoded ({exc.reason})"
        ) from None
    if text.endswith("\n"):
        text = text[:-1]
        if text.endswith("\r"):
            text = text[:-1]
    if not text:
        return []
    lines = [ln.strip() for ln in text.split("\n")]
    empty = [i + 1 for i, ln in enumerate(lines) if not ln]
    if empty:
        shown = ", ".join(map(str, empty[:10])) + (f" … ({len(empty)} in all)" if len(empty) > 10 else "")
        raise InputError(f"{what} {path} has empty lines (line {shown}); every line must hold one caption")
    return lines


def _load_images(path: Path) -> np.ndarray:
    try:
        images = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise InputError(f"region features {path} are not a plain .npy array: {exc}") from None
    except (OSError, EOFError) as exc:
        raise InputError(f"region features {path} cannot be read as .npy: {exc}") from None
    if not isinstance(images, np.ndarray):
        images.close()
        raise InputError(f"region features {path} hold an .npz archive, expected a single .npy array")
    if images.ndim != 3:
        raise InputError(
            f"region features {path} have shape {images.shape} ({images.ndim}-D); expected 3-D [images, regions, "
            "features], e.g. [N, 36, 2048]"
        )
    if images.dtype != np.float32:
        raise InputError(f"region features {path} have dtype {images.dtype}; expected float32")
    if images.shape[0] == 0 or images.shape[1] == 0 or images.shape[2] == 0:
        raise InputError(f"region features {path} are empty (shape {images.shape})")
    return images


def load_precomp(data_dir: str | Path, split: str, captions_per_image: int = CAPTIONS_PER_IMAGE) -> PrecompSplit:
    """Open ``split`` of a SCAN-layout directory: ``images`` memory-mapped ``[N, R, F]`` float32, ``captions``
    (``captions_per_image``·N lines), ``ids`` if ``{split}_ids.txt`` exists. See the module docstring for the
    checks; every failure is an :class:`~vsrt.errors.InputError` naming the file and what is wrong.
    """
    d = Path(data_dir)
    if not d.is_dir():
        raise InputError(f"dataset directory not found: {d}")
    if captions_per_image < 1:
        raise InputError(f"captions_per_image must be at least 1, got {captions_per_image}")
    paths = split_paths(d, split)
    missing = [str(paths[k]) for k in ("images", "captions") if not paths[k].is_file()]
    if missing:
        present = sorted(p.name for p in d.glob("*_ims.npy"))
        hint = f" (splits with features here: {', '.join(p[: -len('_ims.npy')] for p in present)})" if present else ""
        raise InputError(f"split '{split}' is incomplete, missing: {', '.join(missing)}{hint}")
    images = _load_images(paths["images"])
    captions = _read_lines(paths["captions"], "captions file")
    n_img = int(images.shape[0])
    if len(captions) != captions_per_image * n_img:
        raise InputError(
            f"split '{split}' in {d}: {paths['captions'].name} has {len(captions)} captions but "
            f"{paths['images'].name} has {n_img} images; expected {captions_per_image} captions per image "
            f"({captions_per_image * n_img} lines)"
        )
    ids = None
    if paths["ids"].is_file():
        ids = _read_lines(paths["ids"], "ids file")
        if len(ids) not in (n_img, len(captions)):
            raise InputError(
                f"split '{split}' in {d}: {paths['ids'].name} has {len(ids)} lines; expected one id per image "
                f"({n_img}) or per caption ({len(captions)})"
            )
    return PrecompSplit(d, split, images, captions, ids, captions_per_image)
