from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from charrnn.vocab import UnknownCharactersError, Vocabulary
from training.config import DataConfig
from training.data import BpttBatches, CorpusError, eval_streams, load_corpus, prepare, split_text, stdlib_files


def test_split_is_contiguous_first_part_train() -> None:
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    train, val = split_text(text, 0.9)
    assert train + val == text
    assert len(train) == 900 and len(val) == 100


def test_split_refuses_empty_parts() -> None:
    with pytest.raises(ValueError, match="empty split"):
        split_text("ab", 0.1)


def test_vocabulary_is_built_from_train_split_only(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("a" * 90 + "b" * 9 + "Z", encoding="utf-8")
    data = prepare(DataConfig(corpus=str(path), train_fraction=0.9))
    assert "Z" not in data.vocab and "b" not in data.vocab  # only the first 90 chars train
    assert data.unknown_in_val == 10
    assert data.vocab.unknown_char == "\ufffd"
    assert data.vocab.decode(data.val_ids[-1:]) == "\ufffd"


def test_vocabulary_refuse_policy_names_the_characters() -> None:
    vocab = Vocabulary.build("hello", policy="refuse")
    with pytest.raises(UnknownCharactersError, match="'x'"):
        vocab.encode("hex")
    ids, dropped = vocab.encode_lossy("hex")
    assert vocab.decode(ids) == "he" and dropped == 1


def test_vocabulary_round_trips_through_json(tmp_path: Path) -> None:
    vocab = Vocabulary.build('ab"c\n\t ü')
    vocab.save(tmp_path / "v.json")
    again = Vocabulary.load(tmp_path / "v.json")
    assert again == vocab
    assert again.decode(again.encode("cab\n")) == "cab\n"


def test_min_count_folds_rare_characters_into_unknown() -> None:
    vocab = Vocabulary.build("aaab", min_count=2)
    assert "b" not in vocab
    assert vocab.decode(vocab.encode("ab")) == "a\ufffd"


def test_corpus_from_directory_glob_and_list(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b.txt").write_text("bbb", encoding="utf-8")
    (tmp_path / "d" / "a.txt").write_text("aaa", encoding="utf-8")
    by_dir = load_corpus(str(tmp_path / "d"))
    by_glob = load_corpus(str(tmp_path / "d" / "*.txt"))
    by_list = load_corpus(f"{tmp_path / 'd' / 'a.txt'},{tmp_path / 'd' / 'b.txt'}")
    assert by_dir.text == by_glob.text == by_list.text == "aaa\nbbb"
    assert by_dir.sha256 == by_list.sha256 and by_dir.files == 2


def test_corpus_refuses_missing_and_non_utf8(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="does not exist; give files, a directory"):
        load_corpus(str(tmp_path / "nope.txt"))
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok \xff\xfe")
    with pytest.raises(
        CorpusError, match=f"corpus file {re.escape(str(bad))} is not UTF-8 text .*leave it out of --corpus"
    ):
        load_corpus(str(bad))


def test_directory_with_binary_files_is_refused_naming_them(tmp_path: Path) -> None:
    """Refused, not skipped: skipping would train on another corpus than the one named."""
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("some text\n", encoding="utf-8")
    (folder / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (folder / "sub" / "blob.bin").write_bytes(b"ascii but binary\x00\x01")  # valid UTF-8, still not text
    with pytest.raises(CorpusError) as info:
        load_corpus(str(folder))
    message = str(info.value)
    assert message.startswith(f"corpus file {folder / 'img.png'} is not UTF-8 text"), message
    assert "(and 1 more file)" in message and f"--corpus '{folder}/**/*.txt'" in message and "\n" not in message
    (folder / "img.png").unlink()
    with pytest.raises(CorpusError, match=r"blob\.bin is binary, not text"):
        load_corpus(str(folder))


def test_hidden_files_under_a_directory_are_not_corpus(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "index").write_bytes(b"\x00\xff")
    (tmp_path / ".notes").write_text("not this", encoding="utf-8")
    (tmp_path / "a.txt").write_text("text", encoding="utf-8")
    corpus = load_corpus(str(tmp_path))
    assert corpus.text == "text" and corpus.files == 1


def test_builtin_corpus_is_deterministic_stdlib_source() -> None:
    files = stdlib_files()
    assert len(files) > 50
    assert [f.name for f in files] == sorted(f.name for f in files)
    assert all(f.suffix == ".py" for f in files)


def test_bptt_windows_continue_each_stream() -> None:
    ids = np.arange(1001, dtype=np.int64)
    batches = BpttBatches(ids, batch_size=4, seq_len=10)
    x0, y0, first = batches.window(0)
    x1, _, second = batches.window(1)
    assert first and not second
    assert x0.shape == (4, 10)
    np.testing.assert_array_equal(y0, x0 + 1)  # targets are the next character
    np.testing.assert_array_equal(x1[:, 0], x0[:, -1] + 1)  # row b of window k+1 continues row b of window k
    assert batches.window(batches.windows_per_epoch)[2]  # wraps to a new epoch


def test_epoch_shift_starts_each_later_epoch_elsewhere_in_the_streams() -> None:
    """With a shift seed, epoch 0 is the plain layout and each later epoch starts every stream 0..T-1
    characters in (the ids are positions, so a window's first value says where it starts); the windows still
    continue each other and stay inside their streams, and the draw is a pure function of the step."""
    ids = np.arange(4 * 1000 + 1, dtype=np.int64)  # 4 streams of 1000 characters
    plain, shifted = BpttBatches(ids, 4, 10), BpttBatches(ids, 4, 10, shift_seed=3)
    n = shifted.windows_per_epoch
    assert n == plain.windows_per_epoch - 1  # room for the shift
    for k in range(n):
        np.testing.assert_array_equal(shifted.window(k)[0], plain.window(k)[0])
    shifts = []
    for epoch in range(1, 21):
        x, y, first = shifted.window(epoch * n)
        shift = int(x[0, 0])
        assert first and 0 <= shift <= 9
        np.testing.assert_array_equal(x[:, 0], np.arange(4) * 1000 + shift)
        np.testing.assert_array_equal(y, x + 1)
        last, _, _ = shifted.window(epoch * n + n - 1)
        np.testing.assert_array_equal(last[:, 0], x[:, 0] + (n - 1) * 10)
        assert int(last[0, -1]) < 1000  # still in row 0's stream
        shifts.append(shift)
    assert len(set(shifts)) > 3  # 20 draws of 10 values
    again = BpttBatches(ids, 4, 10, shift_seed=3, part=(1, 2))
    np.testing.assert_array_equal(again.window(5 * n + 7)[0], shifted.window(5 * n + 7)[0][2:])


def test_eval_streams_score_every_character_once() -> None:
    ids = np.arange(103, dtype=np.int64)
    targets = np.concatenate([y.reshape(-1) for _, y in eval_streams(ids, streams=4, seq_len=7, min_stream_len=10)])
    assert targets.size == ((ids.size - 1) // 4) * 4
    assert len(set(targets.tolist())) == targets.size


def test_bptt_parts_are_the_rows_of_the_whole_batch() -> None:
    """n processes with B/n rows each see exactly the windows one process with B rows sees."""
    ids = np.arange(2001, dtype=np.int64)
    whole = BpttBatches(ids, batch_size=8, seq_len=10)
    parts = [BpttBatches(ids, batch_size=8, seq_len=10, part=(p, 4)) for p in range(4)]
    for k in (0, 1, whole.windows_per_epoch):
        x, y, first = whole.window(k)
        got = [part.window(k) for part in parts]
        np.testing.assert_array_equal(np.concatenate([g[0] for g in got]), x)
        np.testing.assert_array_equal(np.concatenate([g[1] for g in got]), y)
        assert all(g[2] == first for g in got) and got[1][0].shape == (2, 10)
    with pytest.raises(ValueError, match="does not split evenly over 3 processes"):
        BpttBatches(ids, batch_size=8, seq_len=10, part=(0, 3))


def test_eval_stream_parts_score_the_split_once_together() -> None:
    ids = np.arange(1203, dtype=np.int64)
    whole = [y for _, y in eval_streams(ids, streams=5, seq_len=7, min_stream_len=10)]
    for parts in (2, 3, 7):  # uneven groups, and more parts than streams (some empty)
        got = [[y for _, y in eval_streams(ids, 5, 7, 10, part=(p, parts))] for p in range(parts)]
        rows = [np.concatenate(windows, axis=1) for windows in got if windows]
        np.testing.assert_array_equal(np.concatenate(rows), np.concatenate(whole, axis=1))


def test_windows_are_int64_even_from_narrow_ids() -> None:
    ids = np.arange(401, dtype=np.int64).astype(np.uint16)
    x, y, _ = BpttBatches(ids, batch_size=4, seq_len=10).window(0)
    (ex, ey), *_ = eval_streams(ids, streams=2, seq_len=10, min_stream_len=10)
    assert {x.dtype, y.dtype, ex.dtype, ey.dtype} == {np.dtype(np.int64)}
