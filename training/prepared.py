"""Corpora larger than memory: encode a corpus once into a memory-mapped token file (`charrnn prepare`).

The corpus is streamed twice, a chunk of characters at a time: a scan (sha256, sizes, character counts
per chunk) and the encoding. Neither pass holds the text or its ids, and training reads its windows from
the token file through `np.memmap`, so memory does not grow with the corpus. A prepared directory holds
the same vocabulary, ids, split and corpus facts that `training.data.prepare` builds in memory from the
same corpus and settings (tested), so a run may use either and resume with the other.

Layout of DIR: `tokens.bin` (the ids, train split first, then validation; uint8, uint16 or uint32 by
vocabulary size), `vocab.json` (as in a run directory) and `prepared.json` (everything else; written
last, so a directory without it is not a finished preparation).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from charrnn.vocab import Vocabulary
from training.config import DataConfig
from training.data import CorpusError, CorpusInfo, Dataset, prepare, refusal, resolve_corpus, split_point

log = logging.getLogger(__name__)

PREFIX = "prepared:"  # data.corpus=prepared:DIR trains on a prepared directory
META_FILE = "prepared.json"
TOKENS_FILE = "tokens.bin"
VOCAB_FILE = "vocab.json"
FORMAT_VERSION = 1
CHUNK_CHARS = 1 << 22  # characters per read: bounds both passes' memory (a few tens of MB per chunk)
_CODE_POINTS = 0x110000
# The data settings a preparation fixes: training adopts the recorded values.
_SETTINGS = ("train_fraction", "vocab_policy", "vocab_min_count")


@dataclass(frozen=True)
class _Chunk:
    """Where a chunk of the joined text came from, so that it can be read again on its own."""

    file: int  # index into the corpus' files; -1 for the newline that joins two files
    cookie: int  # the text file's tell() before the read (an opaque position seek() accepts)
    chars: int


class _NotText(Exception):
    """A corpus file that is not UTF-8 text (the streamed twin of `load_corpus`' refusal)."""

    def __init__(self, path: Path, why: str):
        super().__init__(path, why)
        self.path, self.why = path, why


def _chunks(paths: list[Path], chunk_chars: int) -> Iterator[tuple[_Chunk, str]]:
    """The corpus as `training.data.load_corpus` joins it (newline between files), in chunks."""
    for index, path in enumerate(paths):
        if index:
            yield _Chunk(-1, 0, 1), "\n"
        with open(path, encoding="utf-8") as f:
            while True:
                cookie = f.tell()
                try:
                    text = f.read(chunk_chars)
                except UnicodeDecodeError as exc:
                    raise _NotText(path, f"is not UTF-8 text ({exc.reason})") from exc
                if "\x00" in text:
                    raise _NotText(path, "is binary, not text (it holds NUL bytes)")
                if not text:
                    break
                yield _Chunk(index, cookie, len(text)), text


def _read_again(paths: list[Path], chunk: _Chunk) -> str:
    if chunk.file < 0:
        return "\n"
    with open(paths[chunk.file], encoding="utf-8") as f:
        f.seek(chunk.cookie)
        return f.read(chunk.chars)


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def token_dtype(vocab_size: int) -> np.dtype[Any]:
    """The narrowest unsigned integer that holds every id."""
    for dtype in (np.uint8, np.uint16):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    return np.dtype(np.uint32)


@dataclass(frozen=True)
class _Scan:
    info: CorpusInfo
    chunks: list[_Chunk]
    counts: list[tuple[np.ndarray, np.ndarray]]  # per chunk: code points present, their counts


def _scan(name: str, paths: list[Path], chunk_chars: int) -> _Scan:
    digest = hashlib.sha256()
    n_bytes = n_chars = 0
    chunks: list[_Chunk] = []
    counts: list[tuple[np.ndarray, np.ndarray]] = []
    for chunk, text in _chunks(paths, chunk_chars):
        data = text.encode("utf-8")
        digest.update(data)
        n_bytes += len(data)
        n_chars += chunk.chars
        histogram = np.bincount(_code_points(text))
        present = np.flatnonzero(histogram)
        chunks.append(chunk)
        counts.append((present, histogram[present]))
    info = CorpusInfo(name=name, sha256=digest.hexdigest(), bytes=n_bytes, chars=n_chars, files=len(paths))
    return _Scan(info, chunks, counts)


def _train_counts(scan: _Scan, paths: list[Path], cut: int) -> np.ndarray:
    """Character counts of the first `cut` characters; only the chunk holding the cut is read again."""
    counts = np.zeros(_CODE_POINTS, dtype=np.int64)
    start = 0
    for chunk, (present, n) in zip(scan.chunks, scan.counts, strict=True):
        if start + chunk.chars <= cut:
            counts[present] += n
        elif start < cut:
            prefix = np.bincount(_code_points(_read_again(paths, chunk)[: cut - start]))
            counts[: prefix.size] += prefix
        start += chunk.chars
    return counts


def _vocabulary(counts: np.ndarray, config: DataConfig) -> Vocabulary:
    """The vocabulary of per-code-point counts, by the same rules as a text held in memory."""
    by_char = {chr(cp): int(counts[cp]) for cp in np.flatnonzero(counts)}
    return Vocabulary.from_counts(by_char, policy=config.vocab_policy, min_count=config.vocab_min_count)


def prepare_corpus(config: DataConfig, out_dir: Path, chunk_chars: int = CHUNK_CHARS) -> dict[str, Any]:
    """Encode `config.corpus` into `out_dir`; returns what prepared.json records."""
    if config.corpus.startswith(PREFIX):
        raise ValueError(f"{config.corpus!r} is already prepared")
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / META_FILE).exists())):
        raise ValueError(f"{out_dir} exists and is not a prepared corpus: give a new or empty directory")
    name, paths = resolve_corpus(config.corpus)
    try:
        scan = _scan(name, paths, chunk_chars)
    except _NotText as exc:  # the same one line as training from the corpus directly
        raise CorpusError(refusal([(exc.path, exc.why)], config.corpus)) from None
    if scan.info.chars < 2:
        raise ValueError(f"corpus {config.corpus!r} is too short to train on")
    cut = split_point(scan.info.chars, config.train_fraction)
    vocab = _vocabulary(_train_counts(scan, paths, cut), config)
    dtype = token_dtype(len(vocab))
    lookup = np.full(_CODE_POINTS, -1, dtype=np.int64)
    lookup[[ord(c) for c in vocab.chars]] = np.arange(len(vocab))
    unknown_id = vocab.chars.index(vocab.unknown_char) if vocab.unknown_char is not None else -1

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / META_FILE).unlink(missing_ok=True)  # the directory is unfinished until the end
    tokens_tmp = out_dir / (TOKENS_FILE + ".tmp")
    digest = hashlib.sha256()
    start = train_tokens = total_tokens = folded = unknown = 0
    with open(tokens_tmp, "wb") as out:
        for chunk, text in _chunks(paths, chunk_chars):
            digest.update(text.encode("utf-8"))
            ids = lookup[_code_points(text)]
            split = min(max(cut - start, 0), chunk.chars)
            for part, is_train in ((ids[:split], True), (ids[split:], False)):
                missing = part < 0
                n_missing = int(missing.sum())
                if n_missing:  # the 'replace' policy maps to the unknown character, 'refuse' drops
                    part = np.where(missing, unknown_id, part) if unknown_id >= 0 else part[~missing]
                out.write(part.astype(dtype).tobytes())
                total_tokens += part.size
                if is_train:
                    train_tokens += part.size
                    folded += n_missing
                else:
                    unknown += n_missing
            start += chunk.chars
    if digest.hexdigest() != scan.info.sha256:
        tokens_tmp.unlink()
        raise ValueError(f"corpus {config.corpus!r} changed while it was being prepared; prepare it again")
    tokens_tmp.replace(out_dir / TOKENS_FILE)
    vocab.save(out_dir / VOCAB_FILE)
    meta = {
        "format": FORMAT_VERSION,
        "tokens": {"file": TOKENS_FILE, "dtype": dtype.name, "count": total_tokens, "train": train_tokens},
        "data": {key: getattr(config, key) for key in _SETTINGS},
        "corpus": scan.info.describe(),
        "split": {
            "train_fraction": config.train_fraction,
            "train_chars": train_tokens,
            "val_chars": total_tokens - train_tokens,
            "val_unknown_chars": unknown,
        },
        "train_folded_chars": folded,
    }
    meta_tmp = out_dir / (META_FILE + ".tmp")
    meta_tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    meta_tmp.replace(out_dir / META_FILE)
    log.info(
        "prepared %s: %d tokens (%s), vocabulary %d, %d train / %d val", name, total_tokens, dtype.name,
        len(vocab), train_tokens, total_tokens - train_tokens,
    )  # fmt: skip
    return meta


def open_prepared(directory: Path, config: DataConfig) -> Dataset:
    """The prepared split as memory-mapped ids. The settings the preparation fixed (split, vocabulary
    policy, minimum count) are written into `config`, so that the run records what it trained on."""
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{directory} is not a prepared corpus (no {META_FILE}): run charrnn prepare first")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{meta_path} has format {meta.get('format')!r}; this version reads {FORMAT_VERSION}")
    for key, value in meta["data"].items():
        if getattr(config, key) != value:
            log.warning("data.%s=%r ignored: %s was prepared with %r", key, getattr(config, key), directory, value)
            setattr(config, key, value)
    tokens = meta["tokens"]
    dtype = np.dtype(tokens["dtype"])
    path = directory / tokens["file"]
    if not path.is_file() or path.stat().st_size != tokens["count"] * dtype.itemsize:
        raise ValueError(f"{path} is missing or not the size {META_FILE} records; prepare the corpus again")
    ids = np.memmap(path, dtype=dtype, mode="r", shape=(tokens["count"],))
    corpus = CorpusInfo(**meta["corpus"])
    vocab = Vocabulary.load(directory / VOCAB_FILE)
    split = meta["split"]
    return Dataset(corpus, vocab, ids[: tokens["train"]], ids[tokens["train"] :], split["train_fraction"],
                   split["val_unknown_chars"])  # fmt: skip


def load_dataset(config: DataConfig) -> Dataset:
    """A prepared directory (`prepared:DIR`) memory-mapped, or any other corpus encoded in memory."""
    if config.corpus.startswith(PREFIX):
        return open_prepared(Path(config.corpus[len(PREFIX) :]), config)
    return prepare(config)
