"""Caption tokenisation exactly as VSRN / SCAN preprocess captions, without NLTK.

The original code (``data.py`` of VSRN, VSR++, SCAN) turns a caption into ids with::

    tokens = nltk.tokenize.word_tokenize(caption.lower())
    ids = [vocab('<start>')] + [vocab(t) for t in tokens] + [vocab('<end>')]

``nltk.word_tokenize`` first splits the text into sentences with the Punkt sentence splitter and NLTK's
English Punkt model, then applies NLTK's improved Penn-Treebank word rules (``NLTKWordTokenizer``) to each
sentence. Both stages are re-implemented here in plain Python (``re`` + ``unicodedata``): NLTK is not imported
and no NLTK data is needed.

Sentence splitting (:func:`split_sentences`)
    A Punkt-equivalent decision procedure: a ``.``/``?``/``!`` followed by whitespace or closing punctuation
    is a candidate; the word before it and the token after it decide:

    * ``?``, ``!`` and a word ending in ``.`` end a sentence, unless the word (without its final period, or
      the part after its last hyphen) is a known abbreviation (``mr.``, ``st.``, ``u.s.``, ``jan.``…);
    * an ellipsis (``..``, ``...``) does not end a sentence;
    * a single-letter initial (``j.``) or a number (``3.``, ``1,000.``) followed by a lower-case word or by
      ``, ; : . ! ?`` does not end a sentence (Punkt's orthographic heuristic);
    * an abbreviation or ellipsis followed by a capitalised frequent sentence starter (``The``, ``He``,
      ``However``…) does end one; an initial followed by a capitalised word does not;
    * known collocations (``##number## international``…) never end a sentence;
    * closing quotes and brackets after the break stay with the sentence they close.

    The English Punkt model (trained by NLTK on WSJ text) is a table of learned parameters. Kept here
    verbatim: its 156 abbreviations, 37 collocations and 39 frequent sentence starters. Its orthographic
    context table (20,366 word types with the case/position contexts they were seen in) is kept only for the
    4 types that matter to lower-case text (seen sentence-initially in lower case and never capitalised);
    every other type counts as "never seen". **On lower-cased text — every caption, since captions are
    lower-cased first — this gives exactly the English model's decisions** (the few characters that
    ``str.lower`` leaves upper case, such as mathematical letters, occur in no type the model knows). On
    mixed-case text given straight to :func:`word_tokenize`, a period after an abbreviation, initial or
    ellipsis followed by a capitalised word can be decided differently from the full model (the full table
    says, per word, whether it is seen capitalised mid-sentence); see :data:`ENGLISH_SENTENCE_MODEL`.

Word rules (:func:`treebank_words`)
    Opening double quotes become two backticks, closing ones two apostrophes; ``«“‘„`` and ``»”’`` are
    split off; contractions and clitics are split (``don't → do n't``, ``can't → ca n't``,
    ``cannot → can not``, ``gonna → gon na``, ``'s 'm 'd 'll 're 've``); ``, :`` are split off except
    before a digit; ``; @ # $ % & * ? !``, brackets, ``--``, unicode dashes and ellipses are split off; a
    period is split off only at the end of the sentence.

Unicode character classes follow NLTK, which matches with the third-party ``regex`` engine: whitespace is
Unicode ``White_Space`` (so U+001C–U+001F are not whitespace to the rules, while ``str.split`` still splits
on them), and a word character is a letter, mark, decimal digit, letter number, connector punctuation,
ZWNJ/ZWJ, or a circled/squared Latin letter. Characters that this Python's Unicode database does not yet
know (assigned in a later Unicode version than ``unicodedata.unidata_version``) may be classed differently.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from vsrt.errors import InputError
from vsrt.text.vocab import Vocabulary

__all__ = [
    "ENGLISH_SENTENCE_MODEL",
    "SentenceModel",
    "caption_to_ids",
    "encode_batch",
    "split_sentences",
    "tokenize_caption",
    "treebank_words",
    "word_tokenize",
]

# --------------------------------------------------------------------------------------------------------------
# Character classes (those of the ``regex`` engine that NLTK matches with)
# --------------------------------------------------------------------------------------------------------------

#: Unicode White_Space: what ``\s`` matches in NLTK's rules (unlike ``re``, not U+001C–U+001F).
_SPACE_CHARS = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_SP = "[" + _SPACE_CHARS + "]"
_NON_SP = "[^" + _SPACE_CHARS + "]"

#: Symbols (category So) that are Unicode "Alphabetic" and hence word characters: circled/squared Latin letters.
_ALPHABETIC_SYMBOL_RANGES = ((0x24B6, 0x24E9), (0x1F130, 0x1F149), (0x1F150, 0x1F169), (0x1F170, 0x1F189))


def _is_word_char(ch: str) -> bool:
    """True for a character that ``\\w`` matches in the ``regex`` engine (letters, marks, Nd, Nl, Pc, ZWNJ/ZWJ…)."""
    if ch.isascii():
        return ch.isalnum() or ch == "_"
    cat = unicodedata.category(ch)
    if cat[0] in "LM" or cat in ("Nd", "Nl", "Pc") or ch in "\u200c\u200d":
        return True
    code = ord(ch)
    return any(lo <= code <= hi for lo, hi in _ALPHABETIC_SYMBOL_RANGES)


# --------------------------------------------------------------------------------------------------------------
# Sentence model: the parameters of NLTK's English Punkt model that the splitter uses
# --------------------------------------------------------------------------------------------------------------

# Orthographic-context flags (Kiss & Strunk): where a word type was seen, and with which first-letter case.
_BEG_UC, _MID_UC, _UNK_UC = 1 << 1, 1 << 2, 1 << 3
_BEG_LC, _MID_LC, _UNK_LC = 1 << 4, 1 << 5, 1 << 6
_ANY_UC = _BEG_UC | _MID_UC | _UNK_UC
_ANY_LC = _BEG_LC | _MID_LC | _UNK_LC

_NUMBER_TYPE = "##number##"


@dataclass(frozen=True)
class SentenceModel:
    """Punkt parameters: abbreviation types (lower case, no final period), collocations (pairs of types whose
    first word ends in a period), frequent sentence starters, and orthographic contexts (type → flags; a type
    not listed counts as never seen)."""

    abbreviations: frozenset[str]
    collocations: frozenset[tuple[str, str]]
    sentence_starters: frozenset[str]
    ortho_context: Mapping[str, int]


_ENGLISH_ABBREVIATIONS = """
a.a a.c a.d a.g a.h a.m a.m.e a.s a.t adm ala ariz aug ave b.f b.v bros c c.i.t c.o.m.b c.v calif chg cie co col
colo conn corp cos ct d d.c d.h d.w dec dr e e.f e.h e.l e.m f f.g f.j feb fla fri ft g g.d g.f g.k ga gen h h.c
h.f h.m i.m.s ill inc j.b j.c j.j j.k j.p j.r jan jr k kan ky l l.a l.f l.p lt ltd m m.b.a m.d.c m.j maj messrs
mg mich minn mr mrs ms n n.c n.d n.h n.j n.m n.v n.y nev nov oct ok okla ore p p.a.m p.m pa ph.d prof r r.a r.h
r.i r.j r.k r.t rep reps s s.a s.a.y s.c s.g s.p.a s.s sen sep sept sr st sw t t.j tenn tues u.k u.n u.s u.s.a
u.s.s.r v va vs vt w w.c w.r w.va w.w wash wed wis yr
"""

_ENGLISH_COLLOCATIONS = """
abreast aes business cbot colgate commodities cooper corrections credit dividend financing genentech henley
insider international leisure letters notable pay-fone pegasus pepper review rj wedgestone who zimmer
"""

_ENGLISH_SENTENCE_STARTERS = """
according although among both but despite even he however i if in indeed instead it many meanwhile moreover most
nevertheless nonetheless nor sales separately similarly since so some the there these they this though thus
under when while yet
"""

#: NLTK's English Punkt model (``punkt_tab/english``), reduced to what decides breaks in lower-case text.
#:
#: ``abbreviations``, ``collocations`` and ``sentence_starters`` are the model's full lists. The model also lists
#: the abbreviation type ``". . "`` (so the spaced ellipsis ``. . .`` never ends a sentence), kept here. Of its
#: orthographic-context table only the types seen sentence-initially in lower case and never capitalised are
#: kept (for a lower-case next word those are the only ones that answer "unknown" rather than "not a sentence
#: start"); the full table would be needed for exact decisions before capitalised words.
ENGLISH_SENTENCE_MODEL = SentenceModel(
    abbreviations=frozenset(_ENGLISH_ABBREVIATIONS.split()) | {". . "},
    collocations=frozenset(
        {(_NUMBER_TYPE, w) for w in _ENGLISH_COLLOCATIONS.split()}
        | {
            ("b", "edelman"),
            ("b", "levine"),
            ("b", "smith"),
            ("b", "stewart"),
            ("b", "wigton"),
            ("i", "magnin"),
            ("i", "toussie"),
            ("j", "aron"),
            ("j", "fialka"),
            ("j", "walter"),
            ("o", "ludcke"),
        }
    ),
    sentence_starters=frozenset(_ENGLISH_SENTENCE_STARTERS.split()),
    ortho_context=MappingProxyType(
        {"administrators": _BEG_LC | _MID_LC, "b-week": _BEG_LC, "r-revised": _BEG_LC, "z-holiday": _BEG_LC}
    ),
)

# --------------------------------------------------------------------------------------------------------------
# Sentence splitting (Punkt decision procedure)
# --------------------------------------------------------------------------------------------------------------

_SENTENCE_END_CHARS = (".", "?", "!")
#: Characters that cannot be inside a word for the splitter's own word segmentation.
_NON_WORD = "[)\";}\\]*:@'({\\[\u2018\u2019\u201c\u201d\u00ab\u00bb?!]"
#: Multi-character punctuation: dash runs, period runs, spaced ellipses.
_MULTI_PUNCT = r"(?:-{2,}|\.{2,}|(?:\." + _SP + r"){2,}\.)"
#: Characters a word may not start with.
_WORD_START = r'[^("`{\[:;&#*@)}\]\-,]'
_WORD_END = "|".join((_SP, "$", _NON_WORD, _MULTI_PUNCT, ",(?=" + "|".join(("$", _SP, _NON_WORD, _MULTI_PUNCT)) + ")"))
_SEGMENT_WORDS = re.compile(_MULTI_PUNCT + "|(?=" + _WORD_START + ")" + _NON_SP + "+?(?=" + _WORD_END + ")|" + _NON_SP)
#: A sentence-end character followed by non-word punctuation or by whitespace and a next token.
_BREAK_CANDIDATE = re.compile("[.?!](?=(?P<after>" + _NON_WORD + "|" + _SP + "+(?P<next>" + _NON_SP + "+)))")
#: Closing punctuation at the start of a sentence that belongs to the previous one.
_CLOSING_RUN = re.compile("[\"')\\]}\u2018\u2019\u201c\u201d\u00ab\u00bb]+?(?:" + _SP + "+|(?=--)|$)", re.MULTILINE)
_NUMERIC_TOKEN = re.compile(r"-?[.,]?\d[\d,.-]*\.?")
_ASCII_WHITESPACE = " \t\n\r\x0b\x0c"
#: Tokens the orthographic heuristic never takes for a sentence start.
_INNER_PUNCT = frozenset(";:,.!?")


class _Token:
    """A token of the splitter's word segmentation with its break annotations."""

    __slots__ = ("text", "kind", "period_final", "sentbreak", "abbr", "ellipsis")

    def __init__(self, text: str) -> None:
        self.text = text
        low = text.lower()
        self.kind = _NUMBER_TYPE if _NUMERIC_TOKEN.fullmatch(low) else low
        self.period_final = text.endswith(".")
        self.sentbreak = False
        self.abbr = False
        self.ellipsis = False

    @property
    def kind_no_period(self) -> str:
        return self.kind[:-1] if len(self.kind) > 1 and self.kind.endswith(".") else self.kind

    @property
    def kind_no_sentperiod(self) -> str:
        return self.kind_no_period if self.sentbreak else self.kind

    @property
    def is_initial(self) -> bool:
        """One letter (not a digit) and a period, e.g. ``j.``."""
        t = self.text
        return len(t) == 2 and t[1] == "." and _is_word_char(t[0]) and not t[0].isdecimal()


def _segment(text: str) -> list[_Token]:
    """The splitter's word segmentation, line by line (blank lines skipped)."""
    return [_Token(m.group(0)) for line in text.split("\n") if line.strip() for m in _SEGMENT_WORDS.finditer(line)]


def _starts_sentence(tok: _Token, model: SentenceModel) -> bool | None:
    """Orthographic heuristic: True / False when the case of ``tok`` says it does / does not start a sentence."""
    if tok.text in _INNER_PUNCT:
        return False
    ctx = model.ortho_context.get(tok.kind_no_sentperiod, 0)
    first = tok.text[0]
    if first.isupper() and ctx & _ANY_LC and not ctx & _MID_UC:
        return True
    if first.islower() and (ctx & _ANY_UC or not ctx & _BEG_LC):
        return False
    return None


def _abbreviation_ends_sentence(nxt: _Token, next_kind: str, model: SentenceModel) -> bool:
    """After an abbreviation or ellipsis: the next word is a sentence start by case, or a capitalised frequent
    sentence starter."""
    return _starts_sentence(nxt, model) is True or (nxt.text[0].isupper() and next_kind in model.sentence_starters)


def _annotate(tokens: list[_Token], model: SentenceModel) -> None:
    """Mark sentence breaks, abbreviations and ellipses: by type first, then by the token that follows."""
    for tok in tokens:
        t = tok.text
        if t in _SENTENCE_END_CHARS:
            tok.sentbreak = True
        elif len(t) >= 2 and t.strip(".") == "":
            tok.ellipsis = True
        elif tok.period_final and not t.endswith(".."):
            stem = t[:-1].lower()
            if stem in model.abbreviations or stem.split("-")[-1] in model.abbreviations:
                tok.abbr = True
            else:
                tok.sentbreak = True
    for tok, nxt in zip(tokens, tokens[1:]):
        if not tok.period_final:
            continue
        kind, next_kind, initial = tok.kind_no_period, nxt.kind_no_sentperiod, tok.is_initial
        if (kind, next_kind) in model.collocations:
            tok.sentbreak, tok.abbr = False, True
            continue
        if (tok.abbr or tok.ellipsis) and not initial and _abbreviation_ends_sentence(nxt, next_kind, model):
            tok.sentbreak = True
            continue
        if initial or kind == _NUMBER_TYPE:
            starts = _starts_sentence(nxt, model)
            if starts is False or (
                starts is None
                and initial
                and nxt.text[0].isupper()
                and not model.ortho_context.get(next_kind, 0) & _ANY_LC
            ):
                tok.sentbreak, tok.abbr = False, True


def _has_inner_break(context: str, model: SentenceModel) -> bool:
    """True if some token of ``context`` other than its last one ends a sentence."""
    tokens = _segment(context)
    _annotate(tokens, model)
    return any(tok.sentbreak for tok in tokens[:-1])


def _last_ascii_space(text: str) -> int:
    """Index of the last ASCII whitespace character in ``text``, 0 when there is none."""
    for i in range(len(text) - 1, -1, -1):
        if text[i] in _ASCII_WHITESPACE:
            return i
    return 0


def _break_contexts(text: str) -> Iterator[tuple[re.Match[str], str]]:
    """Candidate breaks with their decision context: the word before, the end character, what follows.

    Of consecutive end characters (``"wow!!! ok"``) only the last is a candidate. A word is delimited by the
    last ASCII whitespace before the end character; as in NLTK, whitespace at the very start of that search
    window counts as none (the previous word start is reused).
    """
    prev_match: re.Match[str] | None = None
    prev_start = prev_stop = 0
    for m in _BREAK_CANDIDATE.finditer(text):
        space = _last_ascii_space(text[prev_stop : m.start()])
        start = prev_stop + space + 1 if space else prev_start
        if prev_match is not None and prev_stop <= start:
            yield prev_match, text[prev_start:prev_stop] + prev_match.group(0) + prev_match.group("after")
        prev_match, prev_start, prev_stop = m, start, m.start()
    if prev_match is not None:
        yield prev_match, text[prev_start:prev_stop] + prev_match.group(0) + prev_match.group("after")


def _sentence_spans(text: str, model: SentenceModel) -> Iterator[tuple[int, int]]:
    """Raw sentence spans: cut after each break; the next sentence starts at the following token."""
    last = 0
    for m, context in _break_contexts(text):
        if _has_inner_break(context, model):
            yield last, m.end()
            last = m.start("next") if m.group("next") else m.end()
    yield last, len(text.rstrip())


def split_sentences(text: str, model: SentenceModel = ENGLISH_SENTENCE_MODEL) -> list[str]:
    """Split ``text`` into sentences as NLTK's ``sent_tokenize`` does (Punkt with ``model``).

    Whitespace inside a sentence is kept; closing quotes/brackets right after a break stay with the sentence
    they close; empty sentences are dropped.
    """
    spans = list(_sentence_spans(text, model))
    out: list[str] = []
    shift = 0
    for (start, stop), following in zip(spans, [*spans[1:], None]):
        start += shift
        if following is None:
            if start < stop:
                out.append(text[start:stop])
            continue
        m = _CLOSING_RUN.match(text, following[0], following[1]) if following[0] < following[1] else None
        if m is not None:
            out.append(text[start : following[0] + len(m.group(0).rstrip())])
            shift = m.end() - following[0]
        else:
            shift = 0
            if start < stop:
                out.append(text[start:stop])
    return out


# --------------------------------------------------------------------------------------------------------------
# Word rules (NLTK's improved Penn Treebank tokenizer), applied to one sentence
# --------------------------------------------------------------------------------------------------------------

_Rule = tuple["re.Pattern[str]", str]


def _rules(*pairs: tuple[str, str]) -> tuple[_Rule, ...]:
    return tuple((re.compile(p), r) for p, r in pairs)


#: Opening quotes, except the apostrophe (see _split_opening_apostrophe).
_OPENING_QUOTES = _rules(
    ("[\u00ab\u201c\u2018\u201e]|`+", r" \g<0> "),  # « “ ‘ „ and backtick runs stand alone
    ('^"', "``"),  # a double quote opening the sentence
    ("``", r" \g<0> "),
    ("([ (\\[{<])(\"|'')", r"\1 `` "),  # " or '' after a space or an opening bracket
)

_CLITIC_AFTER_APOSTROPHE = re.compile("re|ve|ll|m|t|s|d|n", re.IGNORECASE)


def _split_opening_apostrophe(text: str) -> str:
    """An apostrophe that opens a quotation (not after a word character, before one, and not starting a clitic
    ``'re 've 'll 'm 't 's 'd 'n`` that ends there) gets a space after it."""
    if "'" not in text:
        return text
    pieces: list[str] = []
    last = 0
    n = len(text)
    for i, ch in enumerate(text):
        if ch != "'" or i + 1 >= n or not _is_word_char(text[i + 1]):
            continue
        if i > 0 and _is_word_char(text[i - 1]):
            continue
        clitic = _CLITIC_AFTER_APOSTROPHE.match(text, i + 1)
        if clitic is not None and (clitic.end() == n or not _is_word_char(text[clitic.end()])):
            continue
        pieces.append(text[last : i + 1] + " ")
        last = i + 1
    pieces.append(text[last:])
    return "".join(pieces)


_PERIOD_CLOSERS_WIDE = "\\])}>\"'\u00bb\u201d\u2019 "  # closers that may follow the final period (incl. space)
_PERIOD_CLOSERS = "\\])}>\"'"

_PUNCTUATION = _rules(
    ("([^.])(\\.)([" + _PERIOD_CLOSERS_WIDE + "]*)" + _SP + "*$", r"\1 \2 \3 "),  # final period
    (r"([:,])([^\d])", r" \1 \2"),  # , and : not followed by a digit
    (r"([:,])$", r" \1 "),
    (r"\.{2,}", r" \g<0> "),  # ellipsis
    (r"[;@#$%&]", r" \g<0> "),
    ("[\u2012-\u2015]", r" \g<0> "),  # figure dash, en dash, em dash, horizontal bar
    ("([^.])(\\.)([" + _PERIOD_CLOSERS + "]*)" + _SP + "*$", r"\1 \2\3 "),  # final period (narrow closers)
    (r"[?!]", r" \g<0> "),
    (r"([^'])' ", r"\1 ' "),  # apostrophe closing a quotation
    (r"\*", r" \g<0> "),
    (r"[\]\[(){}<>]", r" \g<0> "),  # brackets
    (r"--", r" \g<0> "),
)

#: Applied to the sentence padded with a space on each side.
_CLOSING_QUOTES = _rules(
    ("[\u00bb\u201d\u2019]", r" \g<0> "),
    ("''", " '' "),
    ('"', " '' "),
    (_SP + "+", " "),
    ("([^' ])('[sSmMdD]|') ", r"\1 \2 "),  # 's 'm 'd and a bare closing apostrophe
    ("([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) ", r"\1 \2 "),
)

#: Words split in two (MacIntyre's list), matched case-insensitively; ``re`` semantics for \\b and \\s.
_CONTRACTIONS = _rules(
    *(
        (r"(?i)\b(" + head + ")(" + tail + ")" + end, r" \1 \2 ")
        for head, tail, end in (
            ("can", "not", r"\b"),
            ("d", "'ye", r"\b"),
            ("gim", "me", r"\b"),
            ("gon", "na", r"\b"),
            ("got", "ta", r"\b"),
            ("lem", "me", r"\b"),
            ("more", "'n", r"\b"),
            ("wan", "na", r"(?=\s)"),
        )
    ),
    (r"(?i) ('t)(is)\b", r" \1 \2 "),
    (r"(?i) ('t)(was)\b", r" \1 \2 "),
)


#: Every contraction rule needs one of these (case-insensitive) substrings; text without them skips the rules.
_CONTRACTION_HINT = re.compile(r"(?i)cannot|d'ye|gimme|gonna|gotta|lemme|more'n|wanna| 't(?:is|was)")


def _apply(rules: tuple[_Rule, ...], text: str) -> str:
    for pattern, replacement in rules:
        text = pattern.sub(replacement, text)
    return text


def treebank_words(sentence: str) -> list[str]:
    """Word tokens of one sentence, as NLTK's ``NLTKWordTokenizer().tokenize`` gives them."""
    text = _apply(_OPENING_QUOTES, sentence)
    text = _split_opening_apostrophe(text)
    text = _apply(_PUNCTUATION, text)
    text = _apply(_CLOSING_QUOTES, " " + text + " ")
    if _CONTRACTION_HINT.search(text):
        text = _apply(_CONTRACTIONS, text)
    return text.split()


# --------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------


def word_tokenize(text: str) -> list[str]:
    """``nltk.tokenize.word_tokenize(text)`` for English: Punkt sentence split, then the Treebank word rules.

    Exact for text without upper-case letters (see the module docstring for mixed-case text).
    """
    if not isinstance(text, str):
        raise InputError(f"word_tokenize takes a str, got {type(text).__name__}")
    return [tok for sentence in split_sentences(text) for tok in treebank_words(sentence)]


def _as_text(caption: object, what: str) -> str:
    if isinstance(caption, str):
        return caption
    if isinstance(caption, (bytes, bytearray)):
        try:
            return bytes(caption).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"{what} is not valid UTF-8 ({exc})") from None
    raise InputError(f"{what} is a {type(caption).__name__}, expected str (or UTF-8 bytes)")


def tokenize_caption(caption: str | bytes) -> list[str]:
    """Tokens of a caption as VSRN/SCAN make them: ``word_tokenize(caption.lower())``.

    ``bytes`` are decoded as UTF-8 first (never ``str(b'...')``, which would yield ``"b'...'"``), then
    lower-cased like a ``str``. (The Python-2 originals lower-cased the undecoded bytes, i.e. ASCII letters
    only, so a non-ASCII capital such as ``É`` stayed upper case there.)
    """
    return word_tokenize(_as_text(caption, "caption").lower())


def caption_to_ids(caption: str | bytes, vocab: Vocabulary) -> list[int]:
    """``<start>`` + vocabulary ids of the caption's tokens (unknown words → ``<unk>``) + ``<end>``."""
    start, end = vocab.word2idx["<start>"], vocab.word2idx["<end>"]
    return [start, *(vocab(tok) for tok in tokenize_caption(caption)), end]


def encode_batch(
    captions: Sequence[str], vocab: Vocabulary, max_len: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Captions → ``(tokens int64 [B, T], lengths int64 [B])``, in the given order (no sorting).

    Each row is :func:`caption_to_ids` right-padded with ``vocab.pad_id``; ``T`` is the longest row and the
    lengths count the ``<start>``/``<end>`` markers. ``max_len`` (>= 2) truncates a longer row to its first
    ``max_len - 1`` ids followed by ``<end>``.
    """
    if isinstance(captions, (str, bytes, bytearray)):
        raise InputError("encode_batch takes a sequence of captions, not a single caption")
    try:
        items = list(captions)
    except TypeError:
        raise InputError(f"captions must be a sequence of strings, got {type(captions).__name__}") from None
    if not items:
        raise InputError("encode_batch got an empty list of captions")
    if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 2):
        raise InputError(f"max_len must be an int >= 2 (room for <start> and <end>), got {max_len!r}")
    end = vocab.word2idx["<end>"]
    rows: list[list[int]] = []
    for i, caption in enumerate(items):
        ids = caption_to_ids(_as_text(caption, f"caption {i}"), vocab)
        if max_len is not None and len(ids) > max_len:
            ids = [*ids[: max_len - 1], end]
        rows.append(ids)
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    tokens = np.full((len(rows), int(lengths.max())), vocab.pad_id, dtype=np.int64)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
    return tokens, lengths
