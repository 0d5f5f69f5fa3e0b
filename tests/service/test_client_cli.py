"""The client commands' input handling: `--unescape`, and mistakes as one line with exit code 2.

`--unescape` is checked end to end: the server scores and continues the unescaped text (its character
count and its continuation match the real characters, passed without the flag).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from charrnn.client.cli import unescape
from charrnn.settings import SettingError
from tests.service.harness import REPO, ServerThread, charrnn_cmd, make_config


@pytest.mark.parametrize(
    ("written", "meant"),
    [
        ("def f():\\n    return '", "def f():\n    return '"),
        ("tab\\there, quote \\' and \\\" ", "tab\there, quote ' and \" "),
        ("a literal \\\\n stays", "a literal \\n stays"),
        ("\\x41\\u00e9\\U0001F600", "Aé😀"),
        ("é ü plain text", "é ü plain text"),
        ("", ""),
    ],
)
def test_unescape_reads_python_escapes(written: str, meant: str) -> None:
    assert unescape(written) == meant


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("bad \\q here", "unknown escape '\\\\q' at position 4"),
        ("ends with \\", "lone backslash"),
        ("\\xZZ", "unknown escape '\\\\x' at position 0"),
        ("\\ud800", "\\ud800 is not a character"),
    ],
)
def test_unescape_refuses_what_it_cannot_read(written: str, message: str) -> None:
    with pytest.raises(SettingError) as err:
        unescape(written)
    assert message in str(err.value)


@pytest.fixture(scope="module")
def server(lstm_dir: Path) -> Iterator[ServerThread]:
    with ServerThread(make_config(lstm_dir)) as srv:
        yield srv


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(charrnn_cmd(*args), cwd=REPO, capture_output=True, text=True, timeout=60)


def test_unescaped_text_reaches_the_server_as_characters(server: ServerThread) -> None:
    target = ["--target", server.target]
    scored = json.loads(run("score", "a\\nb", "--unescape", *target).stdout)
    literal = json.loads(run("score", "a\\nb", *target).stdout)
    real = json.loads(run("score", "a\nb", *target).stdout)
    assert scored["chars"] == 3 and literal["chars"] == 4
    assert scored["bits_per_char"] == real["bits_per_char"]

    sampling = ["--max-chars", "30", "--temperature", "0.8", "--seed", "3", *target]
    unescaped = run("generate", "def f(s):\\n    return ", "--unescape", *sampling)
    direct = run("generate", "def f(s):\n    return ", *sampling)
    assert unescaped.returncode == 0 and unescaped.stdout == direct.stdout
    assert run("generate", "def f(s):\\n    return ", *sampling).stdout != direct.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "x\\q", "--unescape"], "charrnn generate: --unescape: unknown escape '\\\\q' at position 1"),
        (["generate", "x", "--stop", "\\", "--unescape"], "charrnn generate: --unescape: the text ends with"),
        (["score", "x\\", "--unescape"], "charrnn score: --unescape: the text ends with a lone backslash"),
        (["generate", "x", "--watch", "h:0:0", "--watch-scale", "0"], "--watch-scale must be more than 0, got 0.0"),
        (["generate", "x", "--watch", "q:0:0"], "bad hidden unit 'q:0:0'"),
    ],
)
def test_mistakes_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    done = run(*args, "--target", "127.0.0.1:9")  # nothing listens there: refused before any call
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
