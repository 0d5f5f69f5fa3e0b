"""Corpus loading, vocabulary, the train/validation split and truncated-BPTT batches.

No torch here: batches are numpy arrays, so the pipeline is testable on its own.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charrnn.vocab import Vocabulary
from training.config import BUILTIN_CORPUS, DataConfig

log = logging.getLogger(__name__)

# The builtin corpus' name carries the Python version: its text (and sha256) differ between versions.
_STDLIB_PREFIX = "python-stdlib"


@dataclass(frozen=True)
class CorpusInfo:
    """The facts that identify a corpus (recorded in checkpoints and manifests), without its text."""

    name: str
    sha256: str  # of the joined text, UTF-8 encoded
    bytes: int
    chars: int
    files: int

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "sha256": self.sha256, "bytes": self.bytes, "chars": self.chars, "files": self.files}


@dataclass(frozen=True)
class Corpus:
    """A text held in memory with the facts that identify it."""

    name: str
    text: str
    sha256: str
    files: int

    @property
    def size_bytes(self) -> int:
        return len(self.text.encode("utf-8"))

    @property
    def info(self) -> CorpusInfo:
        return CorpusInfo(self.name, self.sha256, self.size_bytes, len(self.text), self.files)

    def describe(self) -> dict[str, object]:
        return self.info.describe()


def stdlib_files() -> list[Path]:
    """The builtin corpus: every top-level ``*.py`` module of the running Python's standard library,
    sorted by file name. A few MB of real code: strings, brackets and indentation."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted((p for p in root.glob("*.py") if p.is_file()), key=lambda p: p.name)


class CorpusError(ValueError):
    """A corpus that cannot be trained on as given; the message names the path and what to do instead."""


_SELECT = "give files, a directory, a glob or a comma list of them, or builtin:python-stdlib (--corpus)"


def _visible_files(directory: Path) -> list[Path]:
    """Files under `directory`, sorted, leaving out hidden ones (a name under it that starts with '.')."""
    return sorted(
        p
        for p in directory.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(directory).parts)
    )


def resolve_corpus(spec: str) -> tuple[str, list[Path]]:
    """The corpus' name and its files in reading order (a path, directory, glob, comma list or the builtin).

    A directory means every file under it but hidden ones; CorpusError when a part matches nothing.
    """
    if spec == BUILTIN_CORPUS:
        return f"{_STDLIB_PREFIX}-{sysconfig.get_python_version()}", stdlib_files()
    paths: list[Path] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        path = Path(part)
        if path.is_dir():
            paths.extend(_visible_files(path))
        elif any(ch in part for ch in "*?["):
            paths.extend(sorted(Path(p) for p in glob.glob(part, recursive=True) if Path(p).is_file()))
        elif path.is_file():
            paths.append(path)
        else:
            raise CorpusError(f"corpus path {part!r} does not exist; {_SELECT}")
    if not paths:
        raise CorpusError(f"corpus {spec!r} matched no files; {_SELECT}")
    name = paths[0].stem if len(paths) == 1 else f"{paths[0].parent.name or 'corpus'}-{len(paths)}-files"
    return name, paths


def load_corpus(spec: str) -> Corpus:
    """Read one or more UTF-8 text files (a path, directory, glob, comma list, or the builtin corpus).

    Files are joined in sorted order with a newline between them. A directory means every file under it
    but hidden ones. A file that is not UTF-8 text (undecodable, or binary with NUL bytes) is refused with
    its name rather than silently mangled or skipped: skipping would train on a different corpus than the
    one named. CorpusError (one line) names the first such file, how many there are, and what to do.
    """
    name, paths = resolve_corpus(spec)
    parts = []
    refused: list[tuple[Path, str]] = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            refused.append((path, f"is not UTF-8 text ({exc.reason} at byte {exc.start})"))
            continue
        except OSError as exc:
            raise CorpusError(f"cannot read corpus file {path}: {exc.strerror or exc}") from exc
        if "\x00" in text:
            refused.append((path, "is binary, not text (it holds NUL bytes)"))
            continue
        parts.append(text)
    if refused:
        raise CorpusError(refusal(refused, spec))
    text = "\n".join(parts)
    if len(text) < 2:
        raise CorpusError(f"corpus {spec!r} is too short to train on (under 2 characters); {_SELECT}")
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return Corpus(name=name, text=text, sha256=digest, files=len(paths))


def refusal(refused: list[tuple[Path, str]], spec: str) -> str:
    """One line: the first file that is not text, how many more, and what to do."""
    directories = [Path(p.strip()) for p in spec.split(",") if p.strip() and Path(p.strip()).is_dir()]
    path, why = refused[0]
    others = len(refused) - 1
    more = f" (and {others} more file{'s' if others > 1 else ''})" if others else ""
    folder = next((d for d in directories if d in path.parents), None)
    if folder is not None:
        them = "them" if len(refused) > 1 else "it"
        advice = f"remove {them} from {folder} or select the text files with a glob, e.g. --corpus '{folder}/**/*.txt'"
    else:
        advice = "leave it out of --corpus, or convert it to UTF-8 if it is text (e.g. iconv -f LATIN1 -t UTF-8)"
    return f"corpus file {path} {why}{more}; {advice}"


@dataclass(frozen=True)
class Dataset:
    """The encoded split and the vocabulary built from its training part.

    The id arrays are in memory (`prepare`) or memory-mapped from a prepared corpus (training/prepared.py);
    both are read only through slices, so neither path copies the whole split.
    """

    corpus: CorpusInfo
    vocab: Vocabulary
    train_ids: np.ndarray
    val_ids: np.ndarray
    train_fraction: float
    unknown_in_val: int  # validation characters replaced/dropped as unknown

    def describe_split(self) -> dict[str, object]:
        return {
            "train_fraction": self.train_fraction,
            "train_chars": int(self.train_ids.size),
            "val_chars": int(self.val_ids.size),
            "val_unknown_chars": self.unknown_in_val,
        }


def split_point(chars: int, train_fraction: float) -> int:
    """How many of `chars` characters train: the first `train_fraction` of them, at least one each side."""
    cut = int(chars * train_fraction)
    if cut < 1 or cut >= chars:
        raise ValueError(f"train_fraction {train_fraction} leaves an empty split of {chars} characters")
    return cut


def split_text(text: str, train_fraction: float) -> tuple[str, str]:
    """Contiguous split: the first `train_fraction` of characters trains, the rest validates."""
    cut = split_point(len(text), train_fraction)
    return text[:cut], text[cut:]


def prepare(config: DataConfig, corpus: Corpus | None = None) -> Dataset:
    corpus = corpus or load_corpus(config.corpus)
    train_text, val_text = split_text(corpus.text, config.train_fraction)
    vocab = Vocabulary.build(train_text, policy=config.vocab_policy, min_count=config.vocab_min_count)
    train_ids, folded = vocab.encode_lossy(train_text)
    val_ids, unknown = vocab.encode_lossy(val_text)
    if folded:
        log.info("%d rare training characters folded into the unknown character", folded)
    if unknown:
        log.info("%d validation characters are outside the vocabulary (%s)", unknown, vocab.unknown_policy)
    return Dataset(corpus.info, vocab, train_ids, val_ids, config.train_fraction, unknown)


class BpttBatches:
    """Truncated-BPTT windows over B parallel contiguous streams, as in char-rnn.

    The token sequence is cut into `batch_size` equal streams laid side by side; window k
    holds characters [k*T, (k+1)*T) of every stream, so row b of window k+1 continues row b
    of window k and the hidden state can be carried across windows (detached, not reset).
    `window(i)` is a pure function of i: resuming a run at step i yields the same batches.

    `part=(p, n)` keeps rows [p*B/n, (p+1)*B/n) of that same layout: n processes of B/n rows
    each see exactly the windows one process of B rows sees (distributed training).

    With `shift_seed`, every epoch after the first starts each stream 0 to T-1 characters later (one draw per
    epoch from the seed, the same for every row and process), so the truncation points, where no gradient
    flows back, fall elsewhere on each pass; an epoch then has room for one window fewer.
    """

    def __init__(
        self,
        ids: np.ndarray,
        batch_size: int,
        seq_len: int,
        part: tuple[int, int] = (0, 1),
        shift_seed: int | None = None,
    ):
        index, parts = part
        if batch_size % parts:
            raise ValueError(f"optim.batch_size={batch_size} does not split evenly over {parts} processes")
        stream_len = (ids.size - 1) // batch_size
        if stream_len < 1:
            raise ValueError(f"{ids.size} tokens cannot fill {batch_size} streams; lower optim.batch_size")
        self.seq_len = min(seq_len, stream_len)
        spare = self.seq_len - 1 if shift_seed is not None else 0
        self.windows_per_epoch = max(1, (stream_len - spare) // self.seq_len)
        self.shift_seed = shift_seed
        self.max_shift = min(self.seq_len - 1, stream_len - self.windows_per_epoch * self.seq_len)
        self.rows = batch_size // parts
        usable = stream_len * batch_size
        rows = slice(index * self.rows, (index + 1) * self.rows)
        # Views, not copies: a memory-mapped split stays on disk until a window is read.
        self.inputs = ids[:usable].reshape(batch_size, stream_len)[rows]
        self.targets = ids[1 : usable + 1].reshape(batch_size, stream_len)[rows]

    def window(self, index: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """(inputs [B/n, T], targets [B/n, T], starts_epoch) as int64. Reset the state when starts_epoch."""
        epoch, k = divmod(index, self.windows_per_epoch)
        start = self.shift(epoch) + k * self.seq_len
        cols = slice(start, start + self.seq_len)
        return self.inputs[:, cols].astype(np.int64), self.targets[:, cols].astype(np.int64), k == 0

    def shift(self, epoch: int) -> int:
        """How many characters into each stream `epoch`'s first window starts: 0 without a shift seed."""
        if self.shift_seed is None or epoch == 0 or self.max_shift == 0:
            return 0
        return int(np.random.default_rng([self.shift_seed, epoch]).integers(0, self.max_shift + 1))

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, bool]]:
        for k in range(self.windows_per_epoch):
            yield self.window(k)


def eval_streams(
    ids: np.ndarray, streams: int, seq_len: int, min_stream_len: int = 1000, part: tuple[int, int] = (0, 1)
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Windows covering the whole validation split once, state to be carried throughout.

    Unlike training batches, the tail that does not fill a full window is still yielded, so
    every character but the first of each stream is scored exactly once. Streams are kept
    at least `min_stream_len` long (fewer streams for a short split), since each one starts
    from a zero state and its first characters are scored without context.

    `part=(p, n)` yields only the p-th of n contiguous groups of those streams (as equal as the
    count allows; a group may be empty), so n processes together score the split exactly once.
    """
    streams = max(1, min(streams, (ids.size - 1) // min_stream_len))
    stream_len = (ids.size - 1) // streams
    usable = stream_len * streams
    index, parts = part
    first, last = index * streams // parts, (index + 1) * streams // parts
    if first == last:
        return
    inputs = ids[:usable].reshape(streams, stream_len)[first:last]
    targets = ids[1 : usable + 1].reshape(streams, stream_len)[first:last]
    for start in range(0, stream_len, seq_len):
        cols = slice(start, start + seq_len)
        yield inputs[:, cols].astype(np.int64), targets[:, cols].astype(np.int64)
