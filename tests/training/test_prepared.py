"""`charrnn prepare` and training from a prepared (memory-mapped) corpus.

The in-memory pipeline (`training.data.prepare`) is the reference: a prepared directory must hold the
same vocabulary, ids, split and corpus facts, whatever the chunking of the streaming passes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY_OVERRIDES, make_text
from training.config import DataConfig, TrainingConfig, apply_overrides
from training.data import prepare
from training.prepared import META_FILE, TOKENS_FILE, open_prepared, prepare_corpus
from training.train import Trainer, load_checkpoint


def _corpus_dir(root: Path) -> Path:
    """Three files: code-like text, non-ASCII (2-, 3- and 4-byte UTF-8), and CRLF line ends."""
    root.mkdir()
    (root / "a.py").write_text(make_text(2000, seed=3), encoding="utf-8")
    (root / "b.txt").write_text("Grüße, naïve café – 東京 🐍\n" * 40 + "rare: ǅ\n", encoding="utf-8")
    (root / "c.txt").write_bytes(b"windows\r\nline ends\r\n" * 30)
    return root


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"vocab_policy": "refuse", "train_fraction": 0.95},
        {"vocab_min_count": 5, "train_fraction": 0.5},
    ],
)
@pytest.mark.parametrize("chunk_chars", [7, 1 << 22])
def test_prepared_equals_the_in_memory_dataset(tmp_path: Path, settings: dict[str, object], chunk_chars: int) -> None:
    corpus = _corpus_dir(tmp_path / "corpus")
    config = DataConfig(corpus=str(corpus), **settings)  # type: ignore[arg-type]
    prepare_corpus(config, tmp_path / "prepared", chunk_chars=chunk_chars)
    reference = prepare(config)
    got = open_prepared(tmp_path / "prepared", DataConfig(**settings))  # type: ignore[arg-type]
    assert got.vocab == reference.vocab
    assert got.corpus == reference.corpus
    assert got.describe_split() == reference.describe_split()
    np.testing.assert_array_equal(got.train_ids, reference.train_ids)
    np.testing.assert_array_equal(got.val_ids, reference.val_ids)
    assert isinstance(got.train_ids, np.memmap) and got.train_ids.dtype == np.uint8


def test_wide_vocabularies_get_wider_tokens(tmp_path: Path) -> None:
    text = "".join(chr(0x100 + i) for i in range(300)) * 3
    (tmp_path / "wide.txt").write_text(text, encoding="utf-8")
    config = DataConfig(corpus=str(tmp_path / "wide.txt"))
    meta = prepare_corpus(config, tmp_path / "prepared")
    got = open_prepared(tmp_path / "prepared", DataConfig())
    assert meta["tokens"]["dtype"] == "uint16" and len(got.vocab) == 301
    np.testing.assert_array_equal(got.train_ids, prepare(config).train_ids)


def test_training_adopts_the_prepared_settings(tmp_path: Path, tiny_corpus: Path) -> None:
    prepare_corpus(DataConfig(corpus=str(tiny_corpus), train_fraction=0.8), tmp_path / "prepared")
    config = apply_overrides(TrainingConfig(), [*TINY_OVERRIDES, f"run.out_dir={tmp_path / 'run'}"])
    config.data.corpus = f"prepared:{tmp_path / 'prepared'}"
    trainer = Trainer(config)
    assert config.data.train_fraction == 0.8  # recorded in the run's config, checkpoint and manifest
    trainer.train(stop_at=20)
    in_memory = apply_overrides(TrainingConfig(), [*TINY_OVERRIDES, f"run.out_dir={tmp_path / 'mem'}"])
    in_memory.data.corpus, in_memory.data.train_fraction = str(tiny_corpus), 0.8
    reference = Trainer(in_memory)
    reference.train(stop_at=20)
    assert trainer.best_val == reference.best_val  # same batches, same validation split
    saved = load_checkpoint(tmp_path / "run" / "last.pt")
    assert saved["corpus"] == load_checkpoint(tmp_path / "mem" / "last.pt")["corpus"]
    assert saved["config"]["data"]["corpus"].startswith("prepared:")


def test_a_truncated_token_file_is_refused(tmp_path: Path, tiny_corpus: Path) -> None:
    prepare_corpus(DataConfig(corpus=str(tiny_corpus)), tmp_path / "prepared")
    tokens = tmp_path / "prepared" / TOKENS_FILE
    tokens.write_bytes(tokens.read_bytes()[:-10])
    with pytest.raises(ValueError, match="prepare the corpus again"):
        open_prepared(tmp_path / "prepared", DataConfig())


def charrnn(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "charrnn.cli", *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def test_prepare_then_train_from_the_command_line(tmp_path: Path, tiny_corpus: Path) -> None:
    out = tmp_path / "prepared"
    prepared = charrnn("prepare", "--corpus", str(tiny_corpus), "--out", str(out), "data.train_fraction=0.85")
    assert prepared.returncode == 0, prepared.stderr
    assert f"--corpus prepared:{out}" in prepared.stdout
    meta = json.loads((out / META_FILE).read_text())
    assert meta["data"]["train_fraction"] == 0.85 and meta["corpus"]["files"] == 1
    again = charrnn("prepare", "--corpus", str(tiny_corpus), "--out", str(out))  # a prepared dir is replaced
    assert again.returncode == 0, again.stderr
    trained = charrnn(
        "train", "--corpus", f"prepared:{out}", "--out", str(tmp_path / "run"), *TINY_OVERRIDES, "optim.max_steps=10"
    )
    assert trained.returncode == 0, trained.stderr
    assert "bits/char" in trained.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--corpus", "{tmp}/missing.txt"], "corpus path '{tmp}/missing.txt' does not exist"),
        (["--corpus", "{corpus}", "model.layers=3"], "prepare takes data.* settings only, not 'model.layers=3'"),
        (["--corpus", "{corpus}", "data.train_fraction=2"], "data.train_fraction must be in (0, 1)"),
        (["--corpus", "{bad}"], "is not UTF-8"),
    ],
)
def test_prepare_refuses_mistakes_in_one_line(tmp_path: Path, tiny_corpus: Path, args: list[str], message: str) -> None:
    (tmp_path / "bad.txt").write_bytes(b"fine \xff\xfe")
    subs = {"tmp": str(tmp_path), "corpus": str(tiny_corpus), "bad": str(tmp_path / "bad.txt")}
    result = charrnn("prepare", *[a.format(**subs) for a in args], "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message.format(**subs) in result.stderr, result.stderr


def test_prepare_will_not_write_into_an_unrelated_directory(tmp_path: Path, tiny_corpus: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me", encoding="utf-8")
    result = charrnn("prepare", "--corpus", str(tiny_corpus), "--out", str(tmp_path / "mine"))
    assert result.returncode == 2 and "is not a prepared corpus" in result.stderr
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]


def test_training_on_a_directory_that_was_not_prepared_says_so(tmp_path: Path) -> None:
    result = charrnn("train", "--corpus", f"prepared:{tmp_path}", "--out", str(tmp_path / "run"), *TINY_OVERRIDES)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "run charrnn prepare first" in result.stderr, result.stderr


# ---------------------------------------------------------------------------------------------------------
# Memory: a corpus far larger than what the processes may grow by.

LARGE_BYTES = 200 * 1024 * 1024
SMALL_BYTES = 2 * 1024 * 1024
_ALPHABET = np.array([ord(c) for c in "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJ\n\n.,;:()[]=+-_'\"0123456789éü€🐍"])


def write_corpus(directory: Path, total_bytes: int, files: int = 4) -> int:
    """Deterministic random text in `files` files, at least `total_bytes` of UTF-8; returns its size."""
    directory.mkdir()
    rng = np.random.default_rng(0)
    size = 0
    for index in range(files):
        with open(directory / f"part{index}.txt", "wb") as f:
            while size < total_bytes * (index + 1) // files:
                block = _ALPHABET[rng.integers(0, _ALPHABET.size, 1 << 20)].astype(np.uint32)
                data = block.tobytes().decode("utf-32-le").encode("utf-8")
                size += f.write(data)
    return size


def peak_rss_bytes(*args: str) -> int:
    """Run `charrnn ARGS` and return that process' own peak resident set (ru_maxrss from wait4)."""
    proc = subprocess.Popen([sys.executable, "-m", "charrnn.cli", *args], stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, stderr[-2000:]
    return usage.ru_maxrss * 1024  # kilobytes on Linux


@pytest.mark.slow
def test_a_large_prepared_corpus_trains_in_bounded_memory(tmp_path: Path) -> None:
    """Prepare and train on a 200 MB corpus: each process' peak RSS grows by less than a quarter of the
    corpus over the same command on a 2 MB corpus (the in-memory path grows by about 13 times the corpus
    on this kind of text: the text at 4 bytes per character, and 8 bytes per character of ids)."""
    train = [*TINY_OVERRIDES, "optim.max_steps=5", "run.eval_interval=5", "run.sample_interval=0"]
    peaks = {}
    for name, size in (("small", SMALL_BYTES), ("large", LARGE_BYTES)):
        corpus_bytes = write_corpus(tmp_path / name, size)
        prepared = tmp_path / f"{name}-prepared"
        peaks[name, "prepare"] = peak_rss_bytes("prepare", "--corpus", str(tmp_path / name), "--out", str(prepared))
        peaks[name, "train"] = peak_rss_bytes(
            "train", "--corpus", f"prepared:{prepared}", "--out", str(tmp_path / f"{name}-run"), *train
        )
    growth = {step: peaks["large", step] - peaks["small", step] for step in ("prepare", "train")}
    print(
        f"corpus {corpus_bytes / 2**20:.0f} MiB; peak RSS small/large: prepare {peaks['small', 'prepare'] / 2**20:.0f}"
        f"/{peaks['large', 'prepare'] / 2**20:.0f} MiB, train {peaks['small', 'train'] / 2**20:.0f}"
        f"/{peaks['large', 'train'] / 2**20:.0f} MiB; growth prepare {growth['prepare'] / 2**20:.1f} MiB, "
        f"train {growth['train'] / 2**20:.1f} MiB"
    )
    assert corpus_bytes >= LARGE_BYTES
    run = load_checkpoint(tmp_path / "large-run" / "last.pt")
    assert run["step"] == 5 and run["corpus"]["bytes"] == corpus_bytes + 3  # a newline joins each two files
    assert growth["train"] < corpus_bytes / 4, growth
    assert growth["prepare"] < corpus_bytes / 4, growth
