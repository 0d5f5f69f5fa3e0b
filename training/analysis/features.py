"""Character-level features of a text, to score hidden units against: Python source or prose (a play).

Each feature describes the state *after reading* a character, matching the hidden state
recorded at that character. For Python, string literals and brackets come from the `tokenize` module
(a real lexer: triple quotes, escapes, prefixes and comments are handled as Python does),
so the labels are right even where a hand-written quote counter would be fooled. For prose, the
features are what a play's layout makes visible: the speaker's name line, words, line position.
"""

from __future__ import annotations

import io
import logging
import re
import tokenize
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

OPENERS, CLOSERS = "([{", ")]}"
_FSTRING_START = getattr(tokenize, "FSTRING_START", -1)  # Python >= 3.12 splits f-strings into tokens
_FSTRING_END = getattr(tokenize, "FSTRING_END", -1)


@dataclass(frozen=True)
class Feature:
    name: str
    values: np.ndarray  # one per character
    binary: bool  # scored by ROC-AUC when binary, else by correlation
    description: str


def _line_offsets(text: str) -> list[int]:
    """Offset of the first character of each line as `tokenize` numbers them (from 1, split at \\n)."""
    offsets = [0, 0]
    for pos, ch in enumerate(text):
        if ch == "\n":
            offsets.append(pos + 1)
    return offsets


def string_and_bracket_masks(text: str) -> tuple[np.ndarray, np.ndarray]:
    """(inside a string literal, inside brackets) per character; raises SyntaxError if Python can't lex it.

    A string's opening quote counts as inside (after reading it we are in the string), its last
    character as outside (after reading it we have left). Likewise for brackets.
    """
    offsets = _line_offsets(text)
    in_string = np.zeros(len(text), dtype=bool)
    depth = np.zeros(len(text) + 1, dtype=np.int64)
    fstring_starts: list[int] = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            start = offsets[tok.start[0]] + tok.start[1]
            end = offsets[tok.end[0]] + tok.end[1] if tok.end[0] < len(offsets) else len(text)
            if tok.type == tokenize.STRING:
                in_string[start : end - 1] = True
            elif tok.type == _FSTRING_START:
                fstring_starts.append(start)
            elif tok.type == _FSTRING_END and fstring_starts:
                in_string[fstring_starts.pop() : end - 1] = True
            elif tok.type == tokenize.OP and tok.string in OPENERS:
                depth[start] += 1
            elif tok.type == tokenize.OP and tok.string in CLOSERS:
                depth[start] -= 1
    except tokenize.TokenError as exc:
        raise SyntaxError(str(exc)) from exc
    return in_string, np.cumsum(depth)[: len(text)] > 0


def layout_features(text: str) -> dict[str, np.ndarray]:
    """Position in line, start of line and indentation width, from the characters alone."""
    column = np.zeros(len(text), dtype=np.int64)
    indent = np.zeros(len(text), dtype=np.int64)
    col = width = 0
    leading = True
    for pos, ch in enumerate(text):
        if leading and ch in " \t":
            width += 4 if ch == "\t" else 1
        elif ch != "\n":
            leading = False
        column[pos], indent[pos] = col, width
        col += 1
        if ch == "\n":
            col = width = 0
            leading = True
    return {"column": column, "start_of_line": column == 0, "indent": indent}


def python_features(text: str) -> list[Feature]:
    in_string, in_brackets = string_and_bracket_masks(text)
    layout = layout_features(text)
    return [
        Feature("in_string", in_string, True, "inside a string literal (tokenize)"),
        Feature("in_brackets", in_brackets, True, "inside (), [] or {} (tokenize)"),
        Feature("start_of_line", layout["start_of_line"], True, "first character of a line"),
        Feature("column", layout["column"].astype(np.float64), False, "position in the line"),
        Feature("indent", layout["indent"].astype(np.float64), False, "indentation width of the line"),
    ]


def lexable(text: str) -> bool:
    """Whether `tokenize` can lex `text` (files that it cannot are left out of the analysis)."""
    try:
        string_and_bracket_masks(text)
    except (SyntaxError, IndentationError):
        return False
    return True


def python_document_features(documents: list[str], separator: str = "\n") -> tuple[str, list[Feature]]:
    """Features of documents joined by `separator` (each lexed on its own, as files are)."""
    parts = [python_features(doc) for doc in documents]
    text = separator.join(documents)
    sep_features = python_features(separator) if separator else None
    joined = []
    for k, first in enumerate(parts[0]):
        pieces: list[np.ndarray] = []
        for i, feats in enumerate(parts):
            if i and sep_features is not None:
                pieces.append(sep_features[k].values)
            pieces.append(feats[k].values)
        joined.append(Feature(first.name, np.concatenate(pieces), first.binary, first.description))
    layout = layout_features(text)  # layout runs across document boundaries
    fixed = [
        Feature(f.name, layout[f.name].astype(f.values.dtype), f.binary, f.description) if f.name in layout else f
        for f in joined
    ]
    return text, fixed


# A speaker's line in a play as tiny shakespeare writes it: a capitalised name alone on its line, then a colon
# ("ROMEO:", "First Citizen:").
_SPEAKER_LINE = re.compile(r"^[A-Z][A-Za-z' ]{0,40}:$", re.MULTILINE)


def prose_features(text: str) -> list[Feature]:
    """A play's visible structure: the speaker's name line, words, the start of and position in a line,
    and how many lines into the current speech the text is."""
    speaker = np.zeros(len(text), dtype=bool)
    for match in _SPEAKER_LINE.finditer(text):
        speaker[match.start() : match.end()] = True  # the name and its colon; the newline leaves it
    layout = layout_features(text)
    in_word = np.fromiter((ch.isalpha() for ch in text), dtype=bool, count=len(text))
    lines_into_speech = np.zeros(len(text), dtype=np.float64)
    count = 0.0
    for pos, ch in enumerate(text):
        if speaker[pos]:
            count = 0.0
        lines_into_speech[pos] = count
        if ch == "\n" and not speaker[pos]:
            count += 1.0
    return [
        Feature("in_speaker", speaker, True, "the speaker's name line (NAME:)"),
        Feature("in_word", in_word, True, "inside a word (a letter)"),
        Feature("start_of_line", layout["start_of_line"], True, "first character of a line"),
        Feature("column", layout["column"].astype(np.float64), False, "position in the line"),
        Feature("lines_into_speech", lines_into_speech, False, "lines since the speaker's name"),
    ]


def prose_document_features(documents: list[str], separator: str = "\n") -> tuple[str, list[Feature]]:
    """Features of documents joined by `separator`: prose features need no per-document lexing."""
    text = separator.join(documents)
    return text, prose_features(text)


@dataclass(frozen=True)
class FeatureSet:
    """What a corpus' characters are scored against, and the feature whose unit the analysis draws."""

    name: str
    headline: str  # the feature whose best unit is drawn (the string unit for code)
    accept: Callable[[str], bool] | None  # which held-out documents can be labelled
    document_features: Callable[[list[str]], tuple[str, list[Feature]]]


FEATURE_SETS = {
    "python": FeatureSet("python", "in_string", lexable, python_document_features),
    "prose": FeatureSet("prose", "in_speaker", None, prose_document_features),
}
