"""The `charrnn` command end to end, in subprocesses, on a tiny corpus."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_OVERRIDES


def charrnn(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "charrnn.cli", *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def test_train_export_sample_end_to_end(tiny_corpus: Path, tmp_path: Path) -> None:
    run, artifact = tmp_path / "run", tmp_path / "artifact"
    trained = charrnn("train", "--corpus", str(tiny_corpus), "--out", str(run), *TINY_OVERRIDES, "optim.max_steps=20")
    assert trained.returncode == 0, trained.stderr
    assert "bits/char" in trained.stdout
    exported = charrnn("export", str(run / "best.pt"), "--out", str(artifact), "--name", "cli-test")
    assert exported.returncode == 0, exported.stderr
    assert json.loads((artifact / "manifest.json").read_text())["model"]["name"] == "cli-test"
    sampled = charrnn("sample", "--model", str(artifact), "--prompt", "def ", "--chars", "50", "--seed", "1")
    assert sampled.returncode == 0, sampled.stderr
    assert sampled.stdout.startswith("def ") and len(sampled.stdout) == len("def ") + 50 + 1
    again = charrnn("sample", "--checkpoint", str(run / "best.pt"), "--prompt", "def ", "--chars", "50", "--seed", "1")
    assert again.stdout == sampled.stdout  # checkpoint and artifact agree


def test_unknown_setting_is_refused_with_the_valid_ones(tiny_corpus: Path, tmp_path: Path) -> None:
    result = charrnn("train", "--corpus", str(tiny_corpus), "--out", str(tmp_path), "model.hidden=3")
    assert result.returncode == 2
    assert "unknown setting 'model.hidden'" in result.stderr and "hidden_size" in result.stderr


def _one_line_exit_2(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == "", result.stderr
    (line,) = result.stderr.splitlines()
    return line


def test_missing_corpus_is_one_line_and_exit_2(tmp_path: Path) -> None:
    line = _one_line_exit_2(charrnn("train", "--corpus", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "r")))
    assert line.startswith(f"charrnn train: corpus path '{tmp_path / 'nope.txt'}' does not exist; give files"), line
    assert not (tmp_path / "r").exists(), "nothing is written for a corpus that cannot be read"


def test_corpus_directory_with_binary_files_is_one_line_naming_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("some text\n" * 50, encoding="utf-8")
    (folder / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    line = _one_line_exit_2(charrnn("train", "--corpus", str(folder), "--out", str(tmp_path / "r")))
    assert f"corpus file {folder / 'logo.png'} is not UTF-8 text" in line, line
    assert f"select the text files with a glob, e.g. --corpus '{folder}/**/*.txt'" in line, line


def test_sample_on_missing_artifact_says_what_to_do(tmp_path: Path) -> None:
    result = charrnn("sample", "--model", str(tmp_path / "missing"))
    assert result.returncode == 1
    assert "does not exist" in result.stderr


def test_help_lists_settings() -> None:
    result = charrnn("train", "--help")
    assert result.returncode == 0 and "model.hidden_size=256" in result.stdout


def test_train_names_its_export_and_primes_samples_with_the_corpus(tiny_corpus: Path, tmp_path: Path) -> None:
    run, artifact = tmp_path / "run", tmp_path / "mine"
    trained = charrnn(
        "train", "--corpus", str(tiny_corpus), "--out", str(run), "--export", str(artifact), "--name", "mine",
        "--version", "2", *TINY_OVERRIDES, "optim.max_steps=10", "optim.max_minutes=5",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert "no time budget" not in trained.stderr
    model = json.loads((artifact / "manifest.json").read_text())["model"]
    assert (model["name"], model["version"]) == ("mine", "2")
    assert "(mine 2)" in trained.stdout
    first_line = tiny_corpus.read_text(encoding="utf-8").split("\n", 1)[0]
    primes = {json.loads(line)["prime"] for line in (run / "samples.jsonl").read_text().splitlines()}
    assert primes == {first_line[:40]} and first_line.strip() and not first_line.startswith("def ")


def test_an_explicit_prime_wins_and_no_budget_is_warned(tiny_corpus: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    trained = charrnn(
        "train", "--corpus", str(tiny_corpus), "--out", str(run), *TINY_OVERRIDES, "optim.max_steps=4",
        "run.sample_prime=Once",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert "no time budget: training runs for optim.max_steps=4 steps" in trained.stderr
    assert "optim.max_minutes=N" in trained.stderr
    primes = {json.loads(line)["prime"] for line in (run / "samples.jsonl").read_text().splitlines()}
    assert primes == {"Once"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "mine"], "charrnn train: --name and --version name the exported model: add --export DIR"),
        (
            ["--corpus", "/nonexistent/texts"],
            "charrnn train: corpus path '/nonexistent/texts' does not exist; give files, a directory, a glob or a "
            "comma list of them, or builtin:python-stdlib (--corpus)",
        ),
    ],
)
def test_train_mistakes_are_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    result = charrnn("train", "--out", str(tmp_path / "run"), *args)
    assert result.returncode == 2 and result.stderr == message + "\n"


def test_a_prepared_corpus_primes_samples_with_its_first_line(tiny_corpus: Path, tmp_path: Path) -> None:
    prepared, run = tmp_path / "prepared", tmp_path / "run"
    assert charrnn("prepare", "--corpus", str(tiny_corpus), "--out", str(prepared)).returncode == 0
    trained = charrnn("train", "--corpus", f"prepared:{prepared}", "--out", str(run), *TINY_OVERRIDES,
                      "optim.max_steps=4")  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    first_line = tiny_corpus.read_text(encoding="utf-8").split("\n", 1)[0][:40]
    primes = {json.loads(line)["prime"] for line in (run / "samples.jsonl").read_text().splitlines()}
    assert primes == {first_line}


def test_a_rare_character_on_the_first_line_does_not_break_the_default_prime(tmp_path: Path) -> None:
    """With vocab_policy=refuse and vocab_min_count=2 a once-seen character is not in the vocabulary; the
    default prime is the first line as training encoded it (the character dropped), not the raw text."""
    from tests.conftest import make_text

    corpus = tmp_path / "rare.txt"
    corpus.write_text("caf\u00e9 notes def return\n" + make_text(), encoding="utf-8")
    run = tmp_path / "run"
    trained = charrnn(
        "train", "--corpus", str(corpus), "--out", str(run), *TINY_OVERRIDES, "optim.max_steps=4",
        "data.vocab_policy=refuse", "data.vocab_min_count=2",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    primes = {json.loads(line)["prime"] for line in (run / "samples.jsonl").read_text().splitlines()}
    assert primes == {"caf notes def return"}


def test_export_of_a_missing_or_invalid_checkpoint_is_one_line_and_exit_2(tmp_path: Path) -> None:
    import torch

    missing = _one_line_exit_2(charrnn("export", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "a")))
    assert "No such file or directory" in missing and str(tmp_path / "nope.pt") in missing, missing
    (tmp_path / "text.pt").write_text("not a checkpoint\n", encoding="utf-8")
    torch.save({"format": 99}, tmp_path / "other.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    for name in ("text.pt", "other.pt", "list.pt"):
        line = _one_line_exit_2(charrnn("export", str(tmp_path / name), "--out", str(tmp_path / "a")))
        assert line.startswith(f"charrnn export: {tmp_path / name} is not a charrnn checkpoint"), line
        int8 = _one_line_exit_2(
            charrnn("export", str(tmp_path / name), "--out", str(tmp_path / "a"), "--quantize", "int8")
        )
        assert int8 == line
    assert not (tmp_path / "a").exists()
