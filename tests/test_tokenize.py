"""Caption tokenizer (``vsrt.text.tokenize``) against NLTK, plus ids/batching and the no-NLTK-at-runtime rule.

The reference is NLTK itself (test-only dependency), with the pieces of ``nltk.word_tokenize`` re-assembled
because the English Punkt model (``punkt_tab``) cannot be downloaded here:

    sentences = PunktSentenceTokenizer(P).tokenize(text)
    reference = [t for s in sentences for t in NLTKWordTokenizer().tokenize(s)]

where ``P`` is a ``nltk.tokenize.punkt.PunktParameters`` whose ``abbrev_types``, ``collocations``,
``sent_starters`` and ``ortho_context`` are set to ``vsrt.text.tokenize.ENGLISH_SENTENCE_MODEL`` (the English
model's full abbreviation, collocation and sentence-starter lists, and the part of its orthographic table that
matters for lower-case text). ``nltk.word_tokenize(text)`` is exactly ``[t for s in sent_tokenize(text) for t in
NLTKWordTokenizer().tokenize(s)]`` with ``sent_tokenize`` = Punkt with the English model, so for lower-cased
captions this reference equals ``nltk.word_tokenize`` (when the English model is installed,
``test_matches_nltk_word_tokenize_with_installed_english_model`` checks that directly).

Every caption must match exactly (list equality): ``tokenize_caption(c) == reference(c.lower())`` and, for
the mixed-case text as given, ``word_tokenize(c) == reference(c)``.
"""

from __future__ import annotations

import random
import subprocess
import sys
from collections import defaultdict

import numpy as np
import pytest

from vsrt.errors import InputError
from vsrt.text.tokenize import (
    ENGLISH_SENTENCE_MODEL,
    caption_to_ids,
    encode_batch,
    split_sentences,
    tokenize_caption,
    word_tokenize,
)
from vsrt.text.vocab import Vocabulary

# --------------------------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------------------------

HANDWRITTEN = [
    "",
    "   ",
    "\n\t ",
    "A man riding a wave on top of a surfboard.",
    "A man riding a wave on top of a surfboard",
    "a giraffe standing next to a tree .",
    "Two dogs play in the snow. One of them is brown.",
    "A dog's toy and the dogs' bowls.",
    "The cat isn't happy, and it won't eat; it can't.",
    "I'm sure they're here, we'll see, you've got it, he'd know.",
    'She said "look at that" and left.',
    '"Quoted at the start" of the caption.',
    "He said 'hello there' to the dog.",
    "It's the 'best' pizza in town",
    "``Backticks'' used as quotes.",
    "Curly “double” and ‘single’ quotes, and „low” ones.",
    "Guillemets « like this » around words.",
    "Numbers: 1,000 people and 3.5 km, 12:30 pm, 2,5 kg.",
    "A sign that says $4.99 and 50% off & free #coffee @home!",
    "A red-and-white bus on a two-lane road.",
    "A man/woman with a 3/4 view of an A/C unit.",
    "Dogs (two of them) [maybe three] {or four} <five>.",
    "A dog... waiting. A cat … sleeping.",
    "Wait... what?! No way!!!",
    "Is this a cat? Yes! It is.",
    "A man in a t-shirt -- and a hat -- stands.",
    "An em—dash, an en–dash and a figure‒dash.",
    "Multiple   spaces\tand\ttabs\nand newlines\r\nhere.",
    "Mr. Smith and Dr. Jones walk down St. Mark's Place.",
    "The U.S. flag flies over the U.K. embassy at 5 p.m. on Jan. 3.",
    "Two people, i.e. a man and a woman, e.g. a couple, etc. stand there.",
    "J. R. R. Tolkien's book on a table.",
    "A man wearing No. 7 jersey vs. the No. 10 player.",
    "A café with crème brûlée and a naïve piñata.",
    "A sign in Japanese 日本語の看板 and Chinese 中文.",
    "A cat 😺 next to a dog 🐶 and a family 👨‍👩‍👧.",
    "Ⓐ circled letter and ² superscript and ½ fraction.",
    "Combining accents: cafe\u0301 and nai\u0308ve.",
    "The 'tis season, 'twas the night.",
    "Gonna get gimme lemme gotta wanna go, cannot stop, d'ye see, more'n enough.",
    "They DON'T and CAN'T and WON'T.",
    "A rock'n'roll band plays at 9 o'clock.",
    "A sign reading 'STOP'.",
    "The end.)",
    "(The end.)",
    '"The end."',
    "It ends with 'quote.'",
    "Ends with a colon:",
    "Ends with a comma,",
    "a,b,c and 1,2,3 and x:y and 4:5",
    "Three dots. . . and spaced ones . . . here.",
    "Plant no. 3. a tree.",
    "Version 2. the sequel.",
    "Item 2. 3 apples.",
    "Section b. the tree.",
    "Hello.World and hello. world.",
    "Separators\x1cbetween\x1fwords.",
    "Non\xa0breaking and\u2028line\u3000separators.",
    "Asterisks *like this* and stars.",
    "A 'single' word and ''double singles''.",
    "She's 'so' 'tired'",
    "x' y 'z",
    "Yes.",
    ".",
    "?!",
    "...",
    "a.b.c.",
    "Lots of periods.... everywhere....",
    "Long dashes---and-hyphen-words",
    "The price is -3.5 degrees, .5 inches.",
    "WASH. AND ILL. AND OK. ARE ABBREVIATIONS IN THE ENGLISH MODEL.",
    "The bird is ill. the other one is fine.",
    "Administrators. administrators meet.",
    "Wow!!! Look at that.",
]

_SUBJECTS = [
    "a man",
    "A woman",
    "two dogs",
    "the cat",
    "a group of people",
    "A young boy",
    "an old lady",
    "three zebras",
    "a little girl",
    "Some children",
    "a baseball player",
    "the chef",
    "a herd of sheep",
    "A skateboarder",
    "the giraffe's calf",
    "Tom's brother",
    "a Dalmatian",
    "the teddy bear",
    "a tennis player",
    "an elephant",
]
_VERBS = [
    "is riding",
    "sits on",
    "stands next to",
    "is holding",
    "plays with",
    "looks at",
    "walks down",
    "eats",
    "is jumping over",
    "lies on",
    "doesn't like",
    "can't reach",
    "won't leave",
    "is throwing",
    "flies over",
    "is cutting",
    "is wearing",
    "waits by",
    "is parked near",
    "hangs above",
]
_OBJECTS = [
    "a horse",
    "the beach",
    "a red bus",
    "a pizza",
    "a frisbee",
    "the kitchen counter",
    "a surfboard",
    "a traffic light",
    "a bowl of fruit",
    "the snowy hill",
    "a laptop",
    "an umbrella",
    "a kite",
    "the table",
    "a double-decker bus",
    "a stop sign",
    "the sidewalk",
    "a plate of food",
    "a clock tower",
    "a toilet",
]
_TAILS = [
    "",
    ".",
    " .",
    "!",
    "?",
    "...",
    " …",
    '."',
    ".'",
    ".)",
    "'",
    '"',
    ";",
    ",",
    ":",
    ". ",
    ".  \n",
    ". \t",
    " in the park.",
    " on a sunny day.",
    " (near the water).",
    " -- again.",
    " at 12:30.",
    " for $5.",
    " with 1,000 others.",
    " , 3.5 m away.",
    " in the U.S.",
    " at 3 p.m.",
    " with Mr. Brown.",
    " etc.",
]
_EXTRAS = [
    lambda s: s,
    lambda s: s.upper(),
    lambda s: s.capitalize(),
    lambda s: f'"{s}"',
    lambda s: f"“{s}”",
    lambda s: f"'{s}'",
    lambda s: f"‘{s}’",
    lambda s: f"({s})",
    lambda s: f"[{s}]",
    lambda s: f"« {s} »",
    lambda s: f"``{s}''",
    lambda s: s.replace(" ", "  "),
    lambda s: s.replace(" ", "\t", 1),
    lambda s: s.replace(" ", "\n", 1),
    lambda s: s + " 😀",
    lambda s: s.replace("a ", "á ", 1),
    lambda s: s.replace("e", "é", 1),
    lambda s: "   " + s + "   ",
    lambda s: s + " It's sunny. The sky's blue!",
    lambda s: s + " and it... just stops",
    lambda s: s.replace(" ", " - ", 1),
    lambda s: s.replace(" ", "/", 1),
    lambda s: s.replace("is ", "isn't ", 1),
    lambda s: s + " 2. dogs, 3. cats",
]


def generated_captions(n: int = 480, seed: int = 1234) -> list[str]:
    """COCO-like captions with punctuation, quoting, casing, whitespace and unicode variations (deterministic)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}{rng.choice(_TAILS)}"
        for extra in rng.sample(_EXTRAS, rng.randint(0, 2)):
            s = extra(s)
        if rng.random() < 0.3:
            s = s + " " + f"{rng.choice(_SUBJECTS).capitalize()} {rng.choice(_VERBS)}{rng.choice(_TAILS)}"
        out.append(s)
    return out


ALL_CAPTIONS = HANDWRITTEN + generated_captions()

# --------------------------------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference():
    """``text -> tokens`` with NLTK: Punkt (parameters = ENGLISH_SENTENCE_MODEL) then NLTKWordTokenizer."""
    punkt = pytest.importorskip("nltk.tokenize.punkt", reason="nltk (test dependency) is not installed")
    from nltk.tokenize import NLTKWordTokenizer

    params = punkt.PunktParameters()
    params.abbrev_types = set(ENGLISH_SENTENCE_MODEL.abbreviations)
    params.collocations = set(ENGLISH_SENTENCE_MODEL.collocations)
    params.sent_starters = set(ENGLISH_SENTENCE_MODEL.sentence_starters)
    params.ortho_context = defaultdict(int, ENGLISH_SENTENCE_MODEL.ortho_context)
    splitter = punkt.PunktSentenceTokenizer(params)
    words = NLTKWordTokenizer()

    def tokens(text: str) -> list[str]:
        return [t for sentence in splitter.tokenize(text) for t in words.tokenize(sentence)]

    tokens.split = splitter.tokenize  # type: ignore[attr-defined]
    return tokens


def test_caption_corpus_is_varied():
    assert len(ALL_CAPTIONS) >= 500
    joined = "".join(ALL_CAPTIONS)
    needles = ['"', "'", "“", "‘", "«", "`", "n't", "...", "…", "1,000", "3.5", "\t", "\n", "😀", "é", "日", "(", "/"]
    for needle in needles:
        assert needle in joined, needle
    assert "" in ALL_CAPTIONS


def test_tokenize_caption_matches_nltk(reference):
    mismatches = [(c, tokenize_caption(c), reference(c.lower())) for c in ALL_CAPTIONS]
    mismatches = [m for m in mismatches if m[1] != m[2]]
    assert not mismatches, f"{len(mismatches)} of {len(ALL_CAPTIONS)} captions differ, first: {mismatches[:3]}"


def test_word_tokenize_mixed_case_matches_nltk(reference):
    mismatches = [(c, word_tokenize(c), reference(c)) for c in ALL_CAPTIONS]
    mismatches = [m for m in mismatches if m[1] != m[2]]
    assert not mismatches, f"{len(mismatches)} of {len(ALL_CAPTIONS)} captions differ, first: {mismatches[:3]}"


def test_split_sentences_matches_punkt(reference):
    for c in ALL_CAPTIONS:
        for text in (c, c.lower()):
            assert split_sentences(text) == reference.split(text), repr(text)


def test_matches_nltk_word_tokenize_with_installed_english_model():
    nltk = pytest.importorskip("nltk", reason="nltk (test dependency) is not installed")
    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
    except LookupError:
        pytest.skip("NLTK's English punkt_tab model is not installed (no download possible here)")
    for c in ALL_CAPTIONS:
        assert tokenize_caption(c) == nltk.word_tokenize(c.lower()), repr(c)


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        ("A man's dog can't swim.", ["a", "man", "'s", "dog", "ca", "n't", "swim", "."]),
        ('She said "hi" there', ["she", "said", "``", "hi", "''", "there"]),
        ("Two dogs. One cat!", ["two", "dogs", ".", "one", "cat", "!"]),
        ("St. Mark's at 5 p.m. today", ["st.", "mark", "'s", "at", "5", "p.m.", "today"]),
        ("1,000 people, 3.5 km", ["1,000", "people", ",", "3.5", "km"]),
        ("gonna wanna go", ["gon", "na", "wan", "na", "go"]),
        ("CAFÉ “Noir”", ["café", "“", "noir", "”"]),
        ("", []),
    ],
)
def test_known_outputs(caption, expected):
    assert tokenize_caption(caption) == expected


def test_bytes_and_bad_inputs():
    expected = ["café", "au", "lait", "."]
    assert tokenize_caption("Café au lait.".encode()) == tokenize_caption("Café au lait.") == expected
    assert tokenize_caption(b"A dog")[0] == "a"  # no "b'" artefact of str(bytes)
    with pytest.raises(InputError, match="UTF-8"):
        tokenize_caption(b"\xff\xfe bad")
    with pytest.raises(InputError, match="int"):
        tokenize_caption(3)  # type: ignore[arg-type]
    with pytest.raises(InputError):
        word_tokenize(None)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------------------
# Ids and batches
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture
def vocab() -> Vocabulary:
    return Vocabulary(["<pad>", "<start>", "<end>", "<unk>", "a", "dog", "cat", ".", "ca", "n't", "swim", "runs"])


def test_caption_to_ids(vocab):
    assert caption_to_ids("A dog can't swim.", vocab) == [1, 4, 5, 8, 9, 10, 7, 2]
    assert caption_to_ids("A zebra!", vocab) == [1, 4, 3, 3, 2]  # zebra and ! are unknown
    assert caption_to_ids("", vocab) == [1, 2]
    assert caption_to_ids(b"a cat", vocab) == [1, 4, 6, 2]


def test_encode_batch_padding_and_order(vocab):
    tokens, lengths = encode_batch(["a cat", "A dog runs.", ""], vocab)
    assert tokens.dtype == np.int64 and lengths.dtype == np.int64
    assert tokens.shape == (3, 6)
    np.testing.assert_array_equal(lengths, [4, 6, 2])
    np.testing.assert_array_equal(tokens, [[1, 4, 6, 2, 0, 0], [1, 4, 5, 11, 7, 2], [1, 2, 0, 0, 0, 0]])


def test_encode_batch_uses_vocab_pad_id():
    v = Vocabulary(["<start>", "<end>", "<unk>", "<pad>", "dog"])
    tokens, lengths = encode_batch(["dog dog", "dog"], v)
    np.testing.assert_array_equal(tokens, [[0, 4, 4, 1], [0, 4, 1, 3]])
    np.testing.assert_array_equal(lengths, [4, 3])


def test_encode_batch_truncation_keeps_end(vocab):
    tokens, lengths = encode_batch(["a dog runs a cat runs", "a cat"], vocab, max_len=4)
    np.testing.assert_array_equal(tokens, [[1, 4, 5, 2], [1, 4, 6, 2]])
    np.testing.assert_array_equal(lengths, [4, 4])
    tokens, lengths = encode_batch(["a dog"], vocab, max_len=2)
    np.testing.assert_array_equal(tokens, [[1, 2]])
    tokens, lengths = encode_batch(["a"], vocab, max_len=10)  # shorter than max_len: untouched, T = longest
    np.testing.assert_array_equal(tokens, [[1, 4, 2]])


def test_encode_batch_errors(vocab):
    with pytest.raises(InputError, match="empty"):
        encode_batch([], vocab)
    with pytest.raises(InputError, match="caption 1"):
        encode_batch(["a dog", 7, "a cat"], vocab)  # type: ignore[list-item]
    with pytest.raises(InputError, match="caption 2"):
        encode_batch(["a dog", "a cat", None], vocab)  # type: ignore[list-item]
    with pytest.raises(InputError, match="single caption"):
        encode_batch("a dog", vocab)
    for bad in (1, 0, 2.5, True):
        with pytest.raises(InputError, match="max_len"):
            encode_batch(["a dog"], vocab, max_len=bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------------------
# Runtime dependencies
# --------------------------------------------------------------------------------------------------------------


def test_module_imports_neither_nltk_nor_torch():
    code = (
        "import sys, vsrt.text.tokenize as t; t.tokenize_caption('A dog\\'s toy. Two cats!'); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'nltk', 'torch', 'regex'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
