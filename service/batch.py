"""The live rows of a decode batch and their algebra: `concatenate` (rows join), `filter` (rows leave),
`record` (a step's characters), `flush` (chunks out), `gather` (watched units).

Per-row numbers live in numpy columns so a step costs a few vectorised calls whatever the batch size;
Python runs per row only for rows that need it (stop strings, watched units, a due flush). Each row's
characters wait in `pending` (token ids) until its flush: at most `max_chunk_chars` plus a held-back stop
prefix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import NamedTuple, TypeVar

import numpy as np

from charrnn.engine import States
from charrnn.quoting import quote
from service.context import Context
from service.errors import InvalidRequest
from service.stream import NO_VALUES, Checkpoint, Chunk, Finished, FinishReason, FlushPolicy, Stream

T = TypeVar("T", bound=np.generic)
_FIRST_CAPACITY = 16  # rows the columns hold before they first grow


class StopMatcher:
    """Finds stop strings at the end of the text and how many trailing chars might start one."""

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(s for s in stops if s)
        self.longest = max((len(s) for s in self.stops), default=0)

    def check(self, tail: str) -> tuple[str | None, int]:
        """(matched stop, chars to hold back) for `tail`, the last `longest` characters."""
        hold = 0
        for stop in self.stops:
            if tail.endswith(stop):
                return stop, len(stop)
            for n in range(min(len(stop) - 1, len(tail)), hold, -1):
                if tail.endswith(stop[:n]):
                    hold = n
                    break
        return None, hold


@dataclass
class Row:
    """What a live row needs beyond its numbers: its stream, stop matching and watched values."""

    stream: Stream
    matcher: StopMatcher | None
    tail: str = ""  # the last `matcher.longest` characters generated
    stop: str = ""  # the stop string that matched
    values: list[np.ndarray] = field(default_factory=list)  # watched values of the pending characters

    @property
    def units(self) -> int:
        return len(self.stream.job.watch)

    @property
    def prompt_chars(self) -> int:
        return len(self.stream.job.prompt)


@dataclass
class Columns:
    """Per-row numbers, one typed array each; in a batch's storage the live rows are the first ones."""

    temperature: np.ndarray  # float64
    top_k: np.ndarray  # int64
    top_p: np.ndarray  # float64
    seeds: np.ndarray  # uint64
    positions: np.ndarray  # uint64: draws taken from the row's generator
    generated: np.ndarray  # int64: characters sampled
    max_chars: np.ndarray  # int64
    pending: np.ndarray  # int32 [rows, pending width]: token ids not yet flushed
    pending_len: np.ndarray  # int64: how many of `pending` are set
    held: np.ndarray  # int64: trailing pending chars that might start a stop string
    flushed_once: np.ndarray  # bool
    last_flush: np.ndarray  # float64: when the row last flushed
    sent: np.ndarray  # int64: characters handed out
    next_checkpoint: np.ndarray  # int64: chars at which the next resume point is due; 0 = never

    @classmethod
    def allocate(cls, rows: int, width: int) -> Columns:
        f8, i8, u8 = np.float64, np.int64, np.uint64
        return cls(
            np.zeros(rows, f8), np.zeros(rows, i8), np.zeros(rows, f8), np.zeros(rows, u8), np.zeros(rows, u8),
            np.zeros(rows, i8), np.zeros(rows, i8), np.zeros((rows, width), np.int32), np.zeros(rows, i8),
            np.zeros(rows, i8), np.zeros(rows, bool), np.zeros(rows, f8), np.zeros(rows, i8), np.zeros(rows, i8),
        )  # fmt: skip

    def arrays(self) -> tuple[np.ndarray, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))

    def head(self, n: int) -> Columns:
        """Views of the first `n` rows (writing through them writes the storage)."""
        return Columns(*(a[:n] for a in self.arrays()))


class Batch:
    """Live rows: streams plus their stacked states, next-char logits, and their columns.

    The columns are typed arrays of a fixed capacity (doubled when rows outgrow it, up to `max_rows`, never
    shrunk): rows joining are written after the live ones, rows leaving are condensed out, so a step never
    reallocates them. `columns` views the live rows. States and logits are the model's own outputs each step.
    """

    def __init__(self, layers: int, hidden: int, num_states: int, vocab: Sequence[str], model_sha256: str,
                 flush: FlushPolicy, max_stop_chars: int, max_rows: int):  # fmt: skip
        self.layers, self.hidden = layers, hidden
        self.chars = np.array(list(vocab), dtype=object)
        self.model_sha256 = model_sha256
        self.flush_policy = flush
        self.width = flush.max_chunk_chars + max_stop_chars + 1  # pending ids a row may hold
        self.max_rows = max_rows
        self.rows: list[Row] = []
        self.states: States = tuple(np.zeros((layers, 0, hidden), np.float32) for _ in range(num_states))
        self.logits = np.zeros((0, len(vocab)), np.float32)
        self._storage = Columns.allocate(min(max_rows, _FIRST_CAPACITY), self.width)
        self.columns = self._storage.head(0)
        self._gather: _Gather | None = None  # None while no row watches units
        self._matching: list[tuple[int, Row, StopMatcher]] = []  # rows with stop strings, checked per step
        self.failures: dict[int, tuple[str, BaseException]] = {}  # rows that failed alone this step

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def capacity(self) -> int:
        return len(self._storage.temperature)

    # --- algebra ----------------------------------------------------------------------------------
    def prepare(self, stream: Stream, context: Context) -> Entry:
        """Everything `stream` needs to join, from `context` (the state after its prompt); raises if this one
        row cannot run (InvalidRequest naming the parameter), so a bad row fails before it shares anything."""
        job = stream.job
        context.check_shapes(len(self.states), self.layers, self.hidden, len(self.chars))
        if context.logits is None:
            raise InvalidRequest("a stream starts after a prompt or a state")
        states = context.states
        if states is None:
            states = tuple(np.zeros((self.layers, self.hidden), np.float32) for _ in self.states)
        for unit in job.watch:  # a unit out of range would pick another row's values
            if not (0 <= unit.state < len(states) and 0 <= unit.layer < self.layers and 0 <= unit.index < self.hidden):
                raise InvalidRequest(f"watched unit {unit} is outside the model's states", param="watch")
        matcher = StopMatcher(job.stops) if job.stops else None
        return Entry(
            Row(stream, matcher),
            states,
            context.logits,
            _typed("temperature", job.sampling.temperature, np.float64),
            _typed("top_k", job.sampling.top_k, np.int64),
            _typed("top_p", job.sampling.top_p, np.float64),
            _typed("seed", stream.seed, np.uint64),
            _typed("position", stream.position, np.uint64),
            _typed("max_chars", job.max_chars, np.int64),
            _typed("checkpoint_every", job.checkpoint_every, np.int64),
        )

    def concatenate(self, entries: Sequence[Entry]) -> None:
        """Prepared rows join after the live ones (nothing here depends on one row's values: it cannot fail
        for one of them)."""
        n, k = len(self.rows), len(entries)
        if n + k > self.capacity:
            self._grow(n + k)
        c = self._storage
        new = slice(n, n + k)
        c.temperature[new] = [e.temperature for e in entries]
        c.top_k[new] = [e.top_k for e in entries]
        c.top_p[new] = [e.top_p for e in entries]
        c.seeds[new] = [e.seed for e in entries]
        c.positions[new] = [e.position for e in entries]
        c.max_chars[new] = [e.max_chars for e in entries]
        c.next_checkpoint[new] = [e.checkpoint_every for e in entries]
        for counter in (c.generated, c.pending_len, c.held, c.flushed_once, c.last_flush, c.sent):
            counter[new] = 0
        states = tuple(np.stack([e.states[s] for e in entries], axis=1) for s in range(len(self.states)))
        self.states = tuple(np.concatenate([a, b], axis=1) for a, b in zip(self.states, states, strict=True))
        self.logits = np.concatenate([self.logits, np.stack([e.logits for e in entries])])
        self.rows.extend(e.row for e in entries)
        self.columns = c.head(n + k)
        self._regather()

    def _grow(self, rows: int) -> None:
        """Room for `rows` rows: double the storage (the live rows copied over)."""
        capacity = self.capacity
        while capacity < rows:
            capacity *= 2
        grown = Columns.allocate(min(max(capacity, rows), max(self.max_rows, rows)), self.width)
        n = len(self.rows)
        for old, new in zip(self._storage.arrays(), grown.arrays(), strict=True):
            new[:n] = old[:n]
        self._storage = grown

    def filter(self, keep: np.ndarray) -> None:
        """Keep the rows where `keep` is True: they move up, in order, over the ones that leave."""
        n, m = len(self.rows), int(keep.sum())
        self.rows = [r for r, k in zip(self.rows, keep, strict=True) if k]
        self.states = tuple(s[:, keep] for s in self.states)
        self.logits = self.logits[keep]
        for a in self._storage.arrays():
            a[:m] = a[:n][keep]
        self.columns = self._storage.head(m)
        self._regather()

    def _regather(self) -> None:
        """Rows moved: rebuild the per-row work lists (only when rows join or leave, never per step)."""
        watching = any(r.units for r in self.rows)
        self._gather = _Gather(self.rows, self.layers, self.hidden) if watching else None
        self._matching = [(i, r, r.matcher) for i, r in enumerate(self.rows) if r.matcher is not None]

    # --- a step -----------------------------------------------------------------------------------
    def record(self, ids: np.ndarray) -> np.ndarray:
        """Take the step's sampled ids (after the model read them); returns the rows that are done."""
        c = self.columns
        c.pending[np.arange(len(self.rows)), c.pending_len] = ids
        c.pending_len += 1
        c.generated += 1
        c.positions += np.uint64(1)
        done = c.generated >= c.max_chars
        for i, row, matcher in self._matching:
            try:
                row.tail = (row.tail + self.chars[ids[i]])[-matcher.longest :]
                matched, hold = matcher.check(row.tail)
            except Exception as exc:  # this row's stop strings: it fails alone
                self.failures[i] = ("record", exc)
                continue
            c.held[i] = hold
            if matched is not None:
                row.stop = matched
                done[i] = True
        if self._gather is not None:
            self._gather(self.states)  # the state after reading this step's character
        return done

    def flush(self, done: np.ndarray, now: float) -> list[Stream]:
        """Hand out the chunks that are due (every done row's last one); returns the streams to wake."""
        c = self.columns
        ready = c.pending_len - c.held  # characters that may go out (none of them might start a stop string)
        due = self.flush_policy.due(ready, c.flushed_once, c.last_flush, now)
        checkpoint = (c.next_checkpoint > 0) & (c.sent + ready >= c.next_checkpoint) & (c.held == 0)
        woken = []
        for i in np.flatnonzero(due | checkpoint | done).tolist():
            if i in self.failures:
                continue
            try:
                woken.append(self._flush_row(i, bool(done[i]), bool(checkpoint[i]), now))
            except Exception as exc:  # this row's chunk: it fails alone
                self.failures[i] = ("flush", exc)
        return woken

    def take_failures(self) -> dict[int, tuple[str, BaseException]]:
        """Rows that failed alone since the last call: index -> (phase, error); the caller fails and filters them."""
        failures, self.failures = self.failures, {}
        return failures

    def _flush_row(self, i: int, done: bool, checkpoint: bool, now: float) -> Stream:
        c = self.columns
        row = self.rows[i]
        stream = row.stream
        count = int(c.pending_len[i])
        if done and row.stop:
            count -= len(row.stop)  # the stop string is not part of the text
        elif not done:
            count -= int(c.held[i])  # a possible stop string waits until it can't be one
        text = "".join(self.chars[c.pending[i, :count]]) if count > 0 else ""
        values = NO_VALUES
        if row.units and count > 0:
            values = np.concatenate(row.values[:count])
            del row.values[:count]
        c.sent[i] += max(count, 0)
        rest = int(c.pending_len[i]) - max(count, 0)
        if rest > 0:
            c.pending[i, :rest] = c.pending[i, count : count + rest].copy()
        c.pending_len[i] = rest
        c.flushed_once[i] |= count > 0
        c.last_flush[i] = now
        finished = self._finished(i) if done else None
        point = None
        if checkpoint and not done:
            chars, every = int(c.sent[i]), int(stream.job.checkpoint_every)
            point = Checkpoint(chars, self.context(i))
            c.next_checkpoint[i] = (chars // every + 1) * every
        stream.put(Chunk(text, finished, values, point))
        return stream

    def _finished(self, i: int) -> Finished:
        row = self.rows[i]
        reason = FinishReason.STOP if row.stop else FinishReason.LENGTH
        generated = int(self.columns.generated[i])
        return Finished(reason, self.context(i), row.prompt_chars, generated, row.stream.seed, row.stop)

    def cancel(self, i: int) -> Stream:
        """End row i as cancelled (what was generated and not yet sent is dropped); the caller filters it."""
        row = self.rows[i]
        stream = row.stream
        finished = Finished(
            FinishReason.CANCELLED, self.context(i), row.prompt_chars, int(self.columns.generated[i]), stream.seed
        )
        stream.put(Chunk("", finished, NO_VALUES))
        return stream

    def context(self, i: int) -> Context:
        """Row i's context: its state, next-char logits and generator position, copied out."""
        return Context(
            tuple(s[:, i].copy() for s in self.states),
            self.logits[i].copy(),
            self.rows[i].stream.seed,
            int(self.columns.positions[i]),
            self.model_sha256,
        )


class Entry(NamedTuple):
    """A row ready to join: checked and converted to the columns' types (`Batch.prepare`)."""

    row: Row
    states: States  # each [layers, hidden]
    logits: np.ndarray  # [vocab]
    temperature: np.float64
    top_k: np.int64
    top_p: np.float64
    seed: np.uint64
    position: np.uint64
    max_chars: np.int64
    checkpoint_every: np.int64


def _typed(name: str, value: object, kind: type[T]) -> T:
    """`value` as the column's numpy type; InvalidRequest naming `name` when it does not fit."""
    try:
        return kind(value)
    except (OverflowError, TypeError, ValueError) as exc:
        raise InvalidRequest(f"{name} {quote(str(value))} cannot be represented ({exc})", param=name) from exc


class _Gather:
    """Picks every watched unit of every watching row out of the states: one `np.take` per state kind."""

    def __init__(self, rows: Sequence[Row], layers: int, hidden: int):
        batch = len(rows)
        picks: dict[int, tuple[list[int], list[int]]] = {}  # state -> (flat indices, output positions)
        self.spans: list[tuple[Row, int, int]] = []
        pos = 0
        for i, row in enumerate(rows):
            if not row.units:
                continue
            self.spans.append((row, pos, pos + row.units))
            for unit in row.stream.job.watch:
                flat, out = picks.setdefault(unit.state, ([], []))
                flat.append((unit.layer * batch + i) * hidden + unit.index)
                out.append(pos)
                pos += 1
        self.size = pos
        self.picks = [(k, np.array(flat, np.int64), np.array(out, np.int64)) for k, (flat, out) in picks.items()]

    def __call__(self, states: States) -> None:
        """Append each watching row's values in `states` (the state after this step's character)."""
        values = np.empty(self.size, np.float32)
        for state, flat, out in self.picks:
            values[out] = np.take(states[state], flat)
        for row, a, b in self.spans:
            row.values.append(values[a:b])
