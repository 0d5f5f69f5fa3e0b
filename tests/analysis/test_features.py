"""Feature labels come from Python's own lexer, per character, as the state after reading it."""

from __future__ import annotations

import numpy as np
import pytest

from training.analysis.features import (
    layout_features,
    lexable,
    prose_features,
    python_document_features,
    string_and_bracket_masks,
)


def _marked(text: str, mask: np.ndarray) -> str:
    return "".join(ch if on else "_" for ch, on in zip(text, mask, strict=True))


def test_strings_include_the_opening_quote_and_exclude_the_closing_one() -> None:
    text = 'x = "ab" + f(\'c\')  # "not a string"\n'
    in_string, _ = string_and_bracket_masks(text)
    assert _marked(text, in_string) == "____\"ab______'c_____________________"


def test_triple_quoted_strings_span_lines_and_hold_quotes() -> None:
    text = 'a = """one "two"\nthree"""\nb = 1\n'
    in_string, _ = string_and_bracket_masks(text)
    start, end = text.index('"""'), text.rindex('"""') + 3
    assert in_string[start : end - 1].all()
    assert not in_string[end - 1 :].any() and not in_string[:start].any()


def test_brackets_nest_and_ignore_brackets_inside_strings() -> None:
    text = 'f(a[1], "(")\ng\n'
    _, in_brackets = string_and_bracket_masks(text)
    assert _marked(text, in_brackets) == '_(a[1], "("____'


def test_layout_features() -> None:
    text = "a\n    bc\n"
    layout = layout_features(text)
    assert layout["column"].tolist() == [0, 1, 0, 1, 2, 3, 4, 5, 6]
    assert layout["start_of_line"].tolist() == [True, False, True] + [False] * 6
    assert layout["indent"].tolist()[2:] == [1, 2, 3, 4, 4, 4, 4]


def test_unlexable_text_is_detected() -> None:
    assert lexable("x = (1,\n 2)\n")
    assert not lexable('x = """never closed\n')
    with pytest.raises(SyntaxError):
        string_and_bracket_masks("x = (\n")


def test_documents_are_lexed_separately_and_joined() -> None:
    text, features = python_document_features(['a = "x"\n', "b = 'y'\n"])
    assert text == "a = \"x\"\n\nb = 'y'\n"
    in_string = next(f for f in features if f.name == "in_string").values
    assert len(in_string) == len(text)
    assert _marked(text, in_string) == "____\"x_______'y__"


def test_prose_features_label_a_play_by_hand() -> None:
    text = "ROMEO:\nBut soft!\nWhat light?\n\nFirst Citizen:\nSpeak.\n"
    features = {f.name: f.values for f in prose_features(text)}
    # Labelled by hand: the characters of the two name lines (colon included, newline not).
    speaker = [i for i, _ in enumerate(text) if features["in_speaker"][i]]
    romeo, citizen = text.index("ROMEO:"), text.index("First Citizen:")
    assert speaker == [*range(romeo, romeo + 6), *range(citizen, citizen + 14)]
    assert features["in_word"][text.index("soft")] and not features["in_word"][text.index("!")]
    # Lines into the speech: 0 on the name line, 1 on its first line, 2 on the second.
    into = features["lines_into_speech"]
    assert into[text.index("But")] == 1 and into[text.index("What")] == 2 and into[text.index("Speak")] == 1
    assert features["start_of_line"][text.index("But")] and features["column"][text.index("soft")] == 4
