"""A deterministic synthetic image–text retrieval dataset in the SCAN precomputed layout. numpy only.

Purpose: train and evaluate every vsrt family end to end without the (non-redistributable) real features, with
data that is learnable but not trivial and in which *local* evidence matters.

**World.** Object classes (40 nouns, some with synonyms: dog/puppy, bike/bicycle, …), attributes (15 colours and
sizes: red, gray/grey, large/big, …) and relations (8: "next to"/"beside"/"near", "on top of"/"on", …). Each class,
attribute, relation and 12 unnamed background "stuff" kinds has a random prototype: a sparse non-negative vector
in the feature space (``dim``, 2048 by default) — see :func:`prototypes`.

**Images.** Each image has 2–4 objects of distinct classes, each bound to a distinct attribute, 1–2 relations
between ordered object pairs, 0–2 unmentioned distractor objects and two background kinds. Its ``regions`` (36)
region features are, like bottom-up-attention boxes, mostly overlapping views of the objects: 45–65 % of the
regions are shared among the named objects by random object sizes (≥ 1 each; jittered, partly seen object
prototype + attribute prototype), one region per relation (0.6·subject + 0.35·object + relation prototype), one
faint region per distractor, and background regions (a mix of the two background kinds) fill the rest. Gaussian
noise is added, everything is clipped at 0 (ReLU, like bottom-up-attention features: non-negative, mean ≈ 0.55,
about 45 % zeros) and the region order is shuffled.

**Hard negatives.** A fraction ``hard_negative_rate`` of the images come in *twin pairs* (adjacent indices): the
same object classes, relations, distractors and background, but the attributes cyclically re-bound to other objects
("a red dog and a blue car" vs "a blue dog and a red car"). A bag of objects and attributes — anything that pools the
regions before comparing, e.g. their mean — cannot tell twins apart; binding an attribute to its object needs the
region level (local evidence, what region–word cross attention sees).

**Captions.** Five per image, lowercase words separated by single spaces (``,`` and a final ``.`` in about half of
them are separate tokens), so ``str.split`` equals NLTK's ``word_tokenize``. Each mentions 2 or more of the image's
objects with their attributes through one of 13 templates with synonyms ("a red dog next to a blue car .",
"there is a car that is blue near a red puppy", "the dog is red and the car is blue", …); about 40 % state one of
the image's relations.

**Files** written into ``out_dir`` (all atomically): ``{split}_ims.npy`` (float32 ``[N, regions, dim]``),
``{split}_caps.txt`` (5 lines per image), ``{split}_ids.txt`` (one integer id per image) and
``{split}_scenes.json`` (the ground truth of every image and caption: objects, bindings, relations, twins, which
objects each caption mentions) for ``train``/``dev``/``test``; ``vocab.pkl``; ``synth.json`` (the
:class:`SynthConfig` and statistics).

``vocab.pkl`` is the **one pickle vsrt writes**: it reproduces the original VSE++/VSRN vocabulary format (a
protocol-2 pickle of ``__main__.Vocabulary`` with ``word2idx``, ``idx2word`` (int → str) and ``idx``) because
``vsrt convert`` and ``vsrt train`` must read exactly what the original projects ship, through the restricted
loader :func:`vsrt.text.vocab.load_vocab`. Ids: ``<pad>=0, <start>=1, <end>=2, <unk>=3``, then the words of the
train captions by decreasing count (ties alphabetically), then the remaining words of the generator's lexicon
(alphabetically) so that no caption word of any split is ``<unk>``.

**Determinism.** Everything derives from ``seed`` through independent numpy ``PCG64`` streams per split and per
purpose (scenes, features, captions), so the same config gives byte-identical files, and a split does not change
when another split's size does (e.g. the test split is the same for ``--train 600`` and ``--train 3000``).

**Defaults** (``train=3000, dev=200, test=500, regions=36, dim=2048``) are sized so that a small model trains in a few
minutes on 2 CPU cores; ``train_ims.npy`` is then 885 MB (use ``--dim 512`` for a 4× smaller dataset).
"""

from __future__ import annotations

import pickle
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from vsrt.errors import InputError
from vsrt.io import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text, read_json

SPLITS = ("train", "dev", "test")
_SPLIT_CODE = {"train": 1, "dev": 2, "test": 3}
_SPLIT_ID_BASE = {"train": 0, "dev": 1_000_000, "test": 2_000_000}
FORMAT = "vsrt-synth-1"

#: object classes; the first word is the canonical name, the others synonyms used in captions
OBJECTS: tuple[tuple[str, ...], ...] = (
    ("dog", "puppy"), ("cat", "kitten"), ("car", "automobile"), ("bus",), ("bicycle", "bike"), ("horse", "pony"),
    ("bird",), ("tree",), ("chair",), ("table", "desk"), ("cup", "mug"), ("ball",), ("boat", "ship"), ("train",),
    ("man", "guy"), ("woman", "lady"), ("child", "kid"), ("hat", "cap"), ("bag", "handbag"), ("book",),
    ("lamp",), ("clock",), ("phone", "cellphone"), ("plate", "dish"), ("bottle",), ("kite",), ("fence",),
    ("bench",), ("sign",), ("truck", "lorry"), ("sheep",), ("cow",), ("elephant",), ("umbrella",),
    ("laptop", "computer"), ("pizza",), ("flower",), ("bowl",), ("shoe", "sneaker"), ("box", "crate"),
)
#: attributes (colours and sizes); first word canonical
ATTRIBUTES: tuple[tuple[str, ...], ...] = (
    ("red",), ("blue",), ("green",), ("yellow",), ("black",), ("white",), ("orange",), ("purple",), ("pink",),
    ("brown",), ("gray", "grey"), ("small", "little"), ("large", "big"), ("striped",), ("spotted",),
)
#: relations (subject REL object); first phrase canonical
RELATIONS: tuple[tuple[str, ...], ...] = (
    ("next to", "beside", "near"), ("on top of", "on"), ("under", "below", "beneath"), ("behind",),
    ("in front of",), ("to the left of", "left of"), ("to the right of", "right of"), ("inside", "in"),
)
#: semantic groups: classes (attributes) of a group share part of their prototype, so they are easier to confuse
OBJECT_GROUPS: dict[str, tuple[str, ...]] = {
    "animal": ("dog", "cat", "horse", "bird", "sheep", "cow", "elephant"),
    "vehicle": ("car", "bus", "bicycle", "boat", "train", "truck"),
    "person": ("man", "woman", "child"),
    "furniture": ("chair", "table", "bench", "lamp", "fence"),
    "kitchen": ("cup", "plate", "bottle", "bowl", "pizza"),
    "wearable": ("hat", "bag", "shoe", "umbrella"),
    "thing": ("ball", "book", "clock", "phone", "laptop", "kite", "box", "sign"),
    "plant": ("tree", "flower"),
}
ATTRIBUTE_GROUPS: dict[str, tuple[str, ...]] = {
    "colour": ("red", "blue", "green", "yellow", "black", "white", "orange", "purple", "pink", "brown", "gray"),
    "size": ("small", "large"),
    "pattern": ("striped", "spotted"),
}
BACKGROUND_KINDS = 12
#: words the caption templates use besides object / attribute / relation words
TEMPLATE_WORDS = ("a", "an", "the", "and", "with", "photo", "of", "image", "showing", "there", "is", "that", ",", ".")
PLAIN_TEMPLATES = ("list", "photo", "image", "there", "with", "the_is", "bare", "that_is")
RELATION_TEMPLATES = ("rel", "rel_there", "rel_is", "rel_photo", "rel_the")

_PROTO_STREAM = 0
_SCENE_STREAM, _FEATURE_STREAM, _CAPTION_STREAM = 0, 1, 2


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of the synthetic dataset (all of them are recorded in ``synth.json``)."""

    seed: int = 0
    train: int = 3000  #: images in the train split (5 captions each)
    dev: int = 200
    test: int = 500
    regions: int = 36  #: regions per image (BUTD: 36)
    dim: int = 2048  #: feature size per region (BUTD: 2048)
    objects: int = 40  #: object classes used (≤ 40)
    attributes: int = 15  #: attributes used (≤ 15)
    relations: int = 8  #: relations used (≤ 8)
    min_objects: int = 2  #: named objects per image, at least
    max_objects: int = 4  #: … and at most
    max_distractors: int = 2  #: unmentioned distractor objects per image, at most
    hard_negative_rate: float = 0.5  #: fraction of images that are in a binding-swapped twin pair
    relation_caption_rate: float = 0.4  #: fraction of captions that state a relation
    noise: float = 0.6  #: std of the Gaussian noise added to every feature before the ReLU
    density: float = 0.06  #: fraction of feature dimensions a prototype is active on
    jitter: float = 0.5  #: std of the log-normal per-instance variation of object prototypes
    share: float = 1.0  #: weight of the group prototype shared by the classes (attributes) of a semantic group
    zipf: float = 1.0  #: class k (in :data:`OBJECTS` order) is drawn with probability ∝ (k + 1) ** -zipf
    attribute_weight: float = 0.5  #: mean weight of the attribute prototype in an object region

    def validate(self) -> None:
        """Raise :class:`InputError` for an impossible or meaningless configuration."""
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise InputError(f"synthetic data config: {msg}")

        need(isinstance(self.seed, int) and self.seed >= 0, f"seed must be a non-negative integer, got {self.seed!r}")
        for s in SPLITS:
            n = getattr(self, s)
            need(isinstance(n, int) and n >= 1, f"{s} must be a positive number of images, got {n!r}")
        need(2 <= self.min_objects <= self.max_objects <= 6,
             f"need 2 ≤ min_objects ≤ max_objects ≤ 6, got {self.min_objects}, {self.max_objects}")
        need(0 <= self.max_distractors <= 4, f"max_distractors must be 0..4, got {self.max_distractors}")
        need(self.max_objects + self.max_distractors <= self.objects <= len(OBJECTS),
             f"objects must be in {self.max_objects + self.max_distractors}..{len(OBJECTS)}, got {self.objects}")
        need(self.max_objects <= self.attributes <= len(ATTRIBUTES),
             f"attributes must be in {self.max_objects}..{len(ATTRIBUTES)}, got {self.attributes}")
        need(1 <= self.relations <= len(RELATIONS), f"relations must be in 1..{len(RELATIONS)}, got {self.relations}")
        need(self.regions >= self.max_objects + 2,
             f"regions must be at least max_objects + 2 = {self.max_objects + 2}, got {self.regions}")
        need(self.dim >= 16, f"dim must be at least 16, got {self.dim}")
        need(0.0 <= self.hard_negative_rate <= 1.0,
             f"hard_negative_rate must be in [0, 1], got {self.hard_negative_rate}")
        need(0.0 <= self.relation_caption_rate <= 1.0,
             f"relation_caption_rate must be in [0, 1], got {self.relation_caption_rate}")
        need(self.noise >= 0 and self.jitter >= 0, "noise and jitter must be non-negative")
        need(0.0 < self.density <= 1.0, f"density must be in (0, 1], got {self.density}")
        need(self.share >= 0, f"share must be non-negative, got {self.share}")
        need(self.zipf >= 0 and self.attribute_weight >= 0, "zipf and attribute_weight must be non-negative")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SynthConfig:
        """The config recorded in a ``synth.json`` (unknown keys are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class Prototypes:
    """The prototype vectors of the world, float32 ``[kinds, dim]`` each (non-negative, sparse)."""

    objects: np.ndarray
    attributes: np.ndarray
    relations: np.ndarray
    background: np.ndarray


@dataclass
class Scene:
    """Ground truth of one image: indices into :data:`OBJECTS` / :data:`ATTRIBUTES` / :data:`RELATIONS`."""

    objects: list[tuple[int, int]]  #: (class, attribute) of each named object
    relations: list[tuple[int, int, int]]  #: (subject object index, relation, object index)
    distractors: list[tuple[int, int]]  #: (class, attribute) of unmentioned objects
    background: list[int]  #: background kinds
    twin: int | None = None  #: index of the binding-swapped twin in the same split
    captions: list[dict[str, Any]] = field(default_factory=list)  #: per caption: mentions, relation, template

    def to_json(self) -> dict[str, Any]:
        return {
            "objects": [list(o) for o in self.objects],
            "relations": [list(r) for r in self.relations],
            "distractors": [list(d) for d in self.distractors],
            "background": list(self.background),
            "twin": self.twin,
            "captions": self.captions,
        }


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


def _group_index(names: tuple[tuple[str, ...], ...], groups: dict[str, tuple[str, ...]]) -> list[int]:
    of = {w: g for g, members in enumerate(groups.values()) for w in members}
    return [of[syn[0]] for syn in names]


def prototypes(cfg: SynthConfig) -> Prototypes:
    """The prototypes of ``cfg``'s world (a function of ``seed``, the kind counts, ``dim``, ``density`` and ``share``).

    A base prototype is active on a random ``density`` fraction of the dimensions (at least 4) with exponentially
    distributed values of mean 2.5, zero elsewhere. An object (attribute) prototype is its own base plus ``share``
    times the base of its semantic group (:data:`OBJECT_GROUPS`, :data:`ATTRIBUTE_GROUPS`): a dog looks a bit like a
    cat, red a bit like pink.
    """
    rng = _rng(cfg.seed, _PROTO_STREAM)
    active = max(4, round(cfg.density * cfg.dim))

    def make(n: int) -> np.ndarray:
        out = np.zeros((n, cfg.dim), dtype=np.float32)
        for k in range(n):
            idx = rng.choice(cfg.dim, active, replace=False)
            out[k, idx] = rng.standard_exponential(active, dtype=np.float32) * 2.5
        return out

    objects, attributes = make(cfg.objects), make(cfg.attributes)
    relations, background = make(cfg.relations), make(BACKGROUND_KINDS)
    obj_groups, att_groups = make(len(OBJECT_GROUPS)), make(len(ATTRIBUTE_GROUPS))
    objects += np.float32(cfg.share) * obj_groups[_group_index(OBJECTS[: cfg.objects], OBJECT_GROUPS)]
    attributes += np.float32(cfg.share) * att_groups[_group_index(ATTRIBUTES[: cfg.attributes], ATTRIBUTE_GROUPS)]
    return Prototypes(objects, attributes, relations, background)


# ----------------------------------------------------------------------------------------------------- scenes


def _sample_scene(rng: np.random.Generator, cfg: SynthConfig) -> Scene:
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    n_dist = int(rng.integers(0, cfg.max_distractors + 1))
    weights = (np.arange(cfg.objects) + 1.0) ** -cfg.zipf
    classes = rng.choice(cfg.objects, n + n_dist, replace=False, p=weights / weights.sum())
    attrs = rng.choice(cfg.attributes, n, replace=False)
    dist_attrs = rng.integers(0, cfg.attributes, n_dist)
    n_rel = int(rng.integers(1, min(2, n - 1) + 1))
    pairs = [(a, b) for a in range(n) for b in range(a + 1, n)]
    chosen = rng.choice(len(pairs), n_rel, replace=False)
    relations = []
    for p in chosen:
        a, b = pairs[int(p)]
        if rng.random() < 0.5:
            a, b = b, a
        relations.append((a, int(rng.integers(cfg.relations)), b))
    return Scene(
        objects=[(int(c), int(a)) for c, a in zip(classes[:n], attrs)],
        relations=relations,
        distractors=[(int(c), int(a)) for c, a in zip(classes[n:], dist_attrs)],
        background=[int(b) for b in rng.choice(BACKGROUND_KINDS, 2, replace=False)],
    )


def _twin_of(rng: np.random.Generator, scene: Scene) -> Scene:
    """Same classes, relations, distractors and background; attributes cyclically re-bound (a derangement)."""
    n = len(scene.objects)
    shift = int(rng.integers(1, n))
    attrs = [a for _, a in scene.objects]
    return Scene(
        objects=[(c, attrs[(k + shift) % n]) for k, (c, _) in enumerate(scene.objects)],
        relations=list(scene.relations),
        distractors=list(scene.distractors),
        background=list(scene.background),
    )


def sample_scenes(cfg: SynthConfig, split: str, n: int) -> list[Scene]:
    """The ``n`` scenes of ``split`` (twins adjacent; without captions)."""
    rng = _rng(cfg.seed, _SPLIT_CODE[split], _SCENE_STREAM)
    p_pair = cfg.hard_negative_rate / (2.0 - cfg.hard_negative_rate)  # fraction of images in pairs = rate
    scenes: list[Scene] = []
    while len(scenes) < n:
        s = _sample_scene(rng, cfg)
        scenes.append(s)
        if len(scenes) < n and rng.random() < p_pair:
            t = _twin_of(rng, s)
            s.twin, t.twin = len(scenes), len(scenes) - 1
            scenes.append(t)
    return scenes


# --------------------------------------------------------------------------------------------------- features


def _region_features(rng: np.random.Generator, scene: Scene, protos: Prototypes, cfg: SynthConfig) -> np.ndarray:
    R, D = cfg.regions, cfg.dim
    n = len(scene.objects)
    n_rel, n_dist = len(scene.relations), len(scene.distractors)
    n_dist = min(n_dist, R - n - n_rel)
    # like bottom-up-attention's 36 boxes, most regions are (overlapping) views of the objects: ~55 % of them
    # go to the named objects, shared by random object sizes, ≥ 1 each; ~25 % are background
    n_obj_regions = min(R - n_rel - n_dist, max(n, round(R * rng.uniform(0.45, 0.65))))
    sizes = rng.dirichlet(np.full(n, 2.0))
    per_obj = 1 + np.floor(sizes * (n_obj_regions - n)).astype(np.int64)
    n_bg = R - int(per_obj.sum()) - n_rel - n_dist
    x = np.empty((R, D), dtype=np.float32)
    row = 0
    for k, (c, a) in enumerate(scene.objects):
        m = int(per_obj[k])
        inst = protos.objects[c] * np.exp(rng.standard_normal((m, D), dtype=np.float32) * cfg.jitter)
        inst *= rng.random((m, D), dtype=np.float32) < 0.85  # a box sees part of the object
        w_attr = (cfg.attribute_weight * rng.uniform(0.75, 1.25, (m, 1))).astype(np.float32)
        scale = rng.uniform(0.6, 1.4, (m, 1)).astype(np.float32)
        x[row:row + m] = scale * (inst + w_attr * protos.attributes[a])
        row += m
    for s, r, o in scene.relations:
        cs, co = scene.objects[s][0], scene.objects[o][0]
        scale = np.float32(rng.uniform(0.6, 1.2))
        x[row] = scale * (0.6 * protos.objects[cs] + 0.35 * protos.objects[co] + protos.relations[r])
        row += 1
    for c, a in scene.distractors[:n_dist]:
        x[row] = 0.6 * (protos.objects[c] + 0.8 * protos.attributes[a])
        row += 1
    if n_bg:
        u = rng.random((n_bg, 1), dtype=np.float32)
        b0, b1 = scene.background
        x[row:] = (0.5 + 0.7 * u) * protos.background[b0] + (1.2 - 0.7 * u) * protos.background[b1]
    x += rng.standard_normal((R, D), dtype=np.float32) * np.float32(cfg.noise)
    np.maximum(x, 0.0, out=x)
    return x[rng.permutation(R)]


# --------------------------------------------------------------------------------------------------- captions


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _join(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return " , ".join(items[:-1]) + " and " + items[-1]


def _make_caption(rng: np.random.Generator, scene: Scene, cfg: SynthConfig) -> tuple[str, dict[str, Any]]:
    n = len(scene.objects)
    obj_word = [_pick(rng, OBJECTS[c]) for c, _ in scene.objects]
    att_word = [_pick(rng, ATTRIBUTES[a]) for _, a in scene.objects]

    def np_(k: int, det: str | None = None) -> str:
        det = det or _article(att_word[k])
        return f"{det} {att_word[k]} {obj_word[k]}"

    k_mention = int(rng.integers(2, n + 1))
    rel_index = None
    if scene.relations and rng.random() < cfg.relation_caption_rate:
        rel_index = int(rng.integers(len(scene.relations)))
        s, r, o = scene.relations[rel_index]
        rest = [int(k) for k in rng.permutation(n) if k not in (s, o)][: max(0, k_mention - 2)]
        mentions = [s, o, *rest]
        phrase = _pick(rng, RELATIONS[r])
        template = _pick(rng, RELATION_TEMPLATES)
        if template == "rel":
            text = f"{np_(s)} {phrase} {np_(o)}"
        elif template == "rel_there":
            text = f"there is {_article(obj_word[s])} {obj_word[s]} that is {att_word[s]} {phrase} {np_(o)}"
        elif template == "rel_is":
            text = f"{np_(s)} is {phrase} {np_(o)}"
        elif template == "rel_photo":
            text = f"a photo of {np_(s)} {phrase} {np_(o)}"
        else:
            text = f"{np_(s, 'the')} {phrase} {np_(o, 'the')}"
        if rest:
            text += " and " + _join([np_(k) for k in rest])
    else:
        mentions = [int(k) for k in rng.permutation(n)[:k_mention]]
        template = _pick(rng, PLAIN_TEMPLATES)
        nps = [np_(k) for k in mentions]
        if template == "list":
            text = _join(nps)
        elif template == "photo":
            text = "a photo of " + _join(nps)
        elif template == "image":
            text = "an image showing " + _join(nps)
        elif template == "there":
            text = "there is " + _join(nps)
        elif template == "with":
            text = f"{nps[0]} with {_join(nps[1:])}"
        elif template == "the_is":
            text = _join([f"the {obj_word[k]} is {att_word[k]}" for k in mentions])
        elif template == "bare":
            text = _join([f"{att_word[k]} {obj_word[k]}" for k in mentions])
        else:
            text = _join([f"{_article(obj_word[k])} {obj_word[k]} that is {att_word[k]}" for k in mentions])
    if rng.random() < 0.5:
        text += " ."
    return text, {"mentions": mentions, "relation": rel_index, "template": template}


def make_captions(cfg: SynthConfig, split: str, scenes: list[Scene]) -> list[str]:
    """Five captions per scene (also recorded in each ``scene.captions``)."""
    rng = _rng(cfg.seed, _SPLIT_CODE[split], _CAPTION_STREAM)
    out: list[str] = []
    for scene in scenes:
        scene.captions = []
        for _ in range(5):
            text, meta = _make_caption(rng, scene, cfg)
            out.append(text)
            scene.captions.append(meta)
    return out


def lexicon(cfg: SynthConfig | None = None) -> list[str]:
    """Every word a caption can contain (sorted)."""
    cfg = cfg or SynthConfig()
    words = set(TEMPLATE_WORDS)
    for group in (OBJECTS[: cfg.objects], ATTRIBUTES[: cfg.attributes], RELATIONS[: cfg.relations]):
        for syn in group:
            for phrase in syn:
                words.update(phrase.split())
    return sorted(words)


# ---------------------------------------------------------------------------------------------- vocabulary


def vocabulary_words(train_captions: list[str], cfg: SynthConfig) -> list[str]:
    """Ids order: specials, train-caption words by decreasing count (ties alphabetical), then the rest of the
    lexicon alphabetically."""
    counts = Counter(w for c in train_captions for w in c.split())
    counted = sorted(counts, key=lambda w: (-counts[w], w))
    rest = [w for w in lexicon(cfg) if w not in counts]
    return ["<pad>", "<start>", "<end>", "<unk>", *counted, *rest]


def original_vocab_pickle(words: list[str]) -> bytes:
    """Bytes of a protocol-2 pickle of ``__main__.Vocabulary`` with ``word2idx``, ``idx2word`` and ``idx`` —
    the layout of VSE++/VSRN's ``vocab/*.pkl`` (the object part is what Python 2 writes for a new-style class
    instance: ``GLOBAL '__main__ Vocabulary'``, ``EMPTY_TUPLE``, ``NEWOBJ``, the attribute dict, ``BUILD``).

    The opcodes around the attribute dict are spelled out rather than pickling a live class because the class must
    be named ``__main__.Vocabulary`` without touching the real ``__main__`` module; the dict itself is pickled by
    :mod:`pickle`.
    """
    state = {"word2idx": {w: i for i, w in enumerate(words)}, "idx2word": dict(enumerate(words)), "idx": len(words)}
    body = pickle.dumps(state, protocol=2)
    assert body[:2] == b"\x80\x02" and body[-1:] == pickle.STOP
    return (pickle.PROTO + b"\x02" + pickle.GLOBAL + b"__main__\nVocabulary\n" + pickle.EMPTY_TUPLE + pickle.NEWOBJ
            + body[2:-1] + pickle.BUILD + pickle.STOP)


# ------------------------------------------------------------------------------------------------ generate


def generate(
    out_dir: str | Path,
    cfg: SynthConfig | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> Path:
    """Write the dataset of ``cfg`` (default :class:`SynthConfig`) into ``out_dir`` and return ``out_dir``.

    ``progress(split, done, total)`` is called while images are generated. Existing files of the same names are
    replaced (atomically); other files are left alone.
    """
    cfg = cfg or SynthConfig()
    cfg.validate()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    protos = prototypes(cfg)
    stats: dict[str, Any] = {}
    train_captions: list[str] = []
    for split in SPLITS:
        n = getattr(cfg, split)
        scenes = sample_scenes(cfg, split, n)
        captions = make_captions(cfg, split, scenes)
        if split == "train":
            train_captions = captions
        rng = _rng(cfg.seed, _SPLIT_CODE[split], _FEATURE_STREAM)
        total, zeros = 0.0, 0
        with atomic_path(out / f"{split}_ims.npy") as tmp:
            ims = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, cfg.regions, cfg.dim))
            for i, scene in enumerate(scenes):
                x = _region_features(rng, scene, protos, cfg)
                ims[i] = x
                total += float(x.sum(dtype=np.float64))
                zeros += int(np.count_nonzero(x == 0))
                if progress and ((i + 1) % 50 == 0 or i + 1 == n):
                    progress(split, i + 1, n)
            ims.flush()
            del ims
        atomic_write_text(out / f"{split}_caps.txt", "".join(c + "\n" for c in captions))
        base = _SPLIT_ID_BASE[split]
        atomic_write_text(out / f"{split}_ids.txt", "".join(f"{base + i}\n" for i in range(n)))
        atomic_write_json(out / f"{split}_scenes.json", {
            "format": "vsrt-synth-scenes-1",
            "objects": [o[0] for o in OBJECTS[: cfg.objects]],
            "attributes": [a[0] for a in ATTRIBUTES[: cfg.attributes]],
            "relations": [r[0] for r in RELATIONS[: cfg.relations]],
            "images": [s.to_json() for s in scenes],
        })
        size = n * cfg.regions * cfg.dim
        stats[split] = {
            "images": n,
            "captions": len(captions),
            "twin_pairs": sum(1 for k, s in enumerate(scenes) if s.twin is not None and s.twin > k),
            "feature_mean": round(total / size, 4),
            "feature_zero_fraction": round(zeros / size, 4),
        }
    words = vocabulary_words(train_captions, cfg)
    atomic_write_bytes(out / "vocab.pkl", original_vocab_pickle(words))
    atomic_write_json(out / "synth.json", {
        **asdict(cfg),
        "format": FORMAT,
        "vocab_size": len(words),
        "splits": stats,
        "files": ["vocab.pkl", *(f"{s}_{k}" for s in SPLITS
                                 for k in ("ims.npy", "caps.txt", "ids.txt", "scenes.json"))],
    })
    return out


def read_config(data_dir: str | Path) -> SynthConfig:
    """The :class:`SynthConfig` a directory was generated with (from its ``synth.json``)."""
    p = Path(data_dir) / "synth.json"
    if not p.is_file():
        raise InputError(f"{data_dir} is not a synthetic dataset: {p} not found")
    d = read_json(p, "synthetic dataset description")
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise InputError(f"{p}: unknown format {d.get('format') if isinstance(d, dict) else d!r} (expected {FORMAT})")
    return SynthConfig.from_dict(d)


def read_scenes(data_dir: str | Path, split: str) -> list[dict[str, Any]]:
    """The ground-truth scenes of ``split`` (``{split}_scenes.json``), one dict per image."""
    p = Path(data_dir) / f"{split}_scenes.json"
    d = read_json(p, f"ground truth of split '{split}'")
    if not isinstance(d, dict) or not isinstance(d.get("images"), list):
        raise InputError(f"{p} has no 'images' list")
    return d["images"]


# ---------------------------------------------------------------------------------------------- reference scores


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-8)


def _mean_regions(images: np.ndarray, block: int = 256) -> np.ndarray:
    return np.concatenate([np.asarray(images[i:i + block]).mean(axis=1) for i in range(0, len(images), block)])


def oracle_similarities(data_dir: str | Path, split: str = "test", local: bool = True) -> np.ndarray:
    """``[N, 5N]`` scores of an oracle that knows the prototypes and which (object, attribute) pairs each caption
    names (from ``{split}_scenes.json``) — reference points for what the features allow, not a model.

    * ``local=True``: mean over the caption's named pairs of the best cosine between any region and
      ``object prototype + attribute prototype`` — sees the binding, so it separates twins;
    * ``local=False``: cosine between the mean region and the sum of those concept vectors — a bag of concepts
      that cannot tell twins apart (their expected mean regions are equal).
    """
    from vsrt.data.precomp import load_precomp

    cfg = read_config(data_dir)
    protos = prototypes(cfg)
    data = load_precomp(data_dir, split)
    scenes = read_scenes(data_dir, split)
    caps = [[tuple(s["objects"][m]) for m in c["mentions"]] for s in scenes for c in s["captions"]]
    if local:
        keys = sorted({k for c in caps for k in c})
        kid = {k: i for i, k in enumerate(keys)}
        q = _unit(np.stack([protos.objects[c] + protos.attributes[a] for c, a in keys]))
        best = np.concatenate([
            np.einsum("nrd,kd->nkr", _unit(np.asarray(data.images[i:i + 64])), q).max(axis=2)
            for i in range(0, data.n_images, 64)
        ])  # [N, concepts]
        return np.stack([best[:, [kid[k] for k in c]].mean(axis=1) for c in caps], axis=1).astype(np.float32)
    t = _unit(np.stack([np.sum([protos.objects[c] + protos.attributes[a] for c, a in cap], axis=0) for cap in caps]))
    return (_unit(_mean_regions(data.images)) @ t.T).astype(np.float32)


def ridge_baseline_similarities(data_dir: str | Path, split: str = "test", alpha: float = 1000.0) -> np.ndarray:
    """``[N, 5N]`` scores of a learned *global* linear baseline: ridge regression (fitted on the train split) from
    standardised mean-pooled region features to the caption's binary bag of words; a pair's score is the cosine
    between the predicted and the actual (centred) bag. It cannot bind attributes to objects."""
    from vsrt.data.precomp import load_precomp

    train, data = load_precomp(data_dir, "train"), load_precomp(data_dir, split)
    words = sorted({w for c in train.captions for w in c.split()})
    wid = {w: i for i, w in enumerate(words)}

    def bag(captions: list[str]) -> np.ndarray:
        x = np.zeros((len(captions), len(words)), np.float64)
        for i, c in enumerate(captions):
            x[i, [wid[w] for w in set(c.split()) if w in wid]] = 1.0
        return x

    f_train = _mean_regions(train.images).astype(np.float64)
    mu, sd = f_train.mean(0), f_train.std(0) + 1e-3
    f = ((f_train - mu) / sd)[np.arange(train.n_captions) // train.captions_per_image]
    x = bag(train.captions)
    xm = x.mean(0)
    w = np.linalg.solve(f.T @ f + alpha * np.eye(f.shape[1]), f.T @ (x - xm))
    pred = _unit(((_mean_regions(data.images) - mu) / sd) @ w)
    return (pred @ _unit(bag(data.captions) - xm).T).astype(np.float32)


def twin_accuracy(sims: np.ndarray, scenes: list[dict[str, Any]]) -> float:
    """Fraction of (caption of image A, A's twin B) with ``sims[A, c] > sims[B, c]`` — 0.5 is blind to binding."""
    wins = [sims[i, 5 * i + j] > sims[s["twin"], 5 * i + j]
            for i, s in enumerate(scenes) if s.get("twin") is not None for j in range(5)]
    if not wins:
        raise InputError("no twin pairs in this split (hard_negative_rate 0?)")
    return float(np.mean(wins))
