"""Character vocabulary shared by training and serving (no torch, no onnxruntime)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from charrnn.artifact import UNKNOWN_POLICIES, VocabularySpec
from charrnn.quoting import quote

# Stands in for characters the model never saw (as UTF-8 decoders do for bad bytes).
DEFAULT_UNKNOWN_CHAR = "\ufffd"


class UnknownCharactersError(ValueError):
    """Text holds characters outside the vocabulary and the policy is to refuse them."""

    def __init__(self, chars: list[str]):
        self.chars = chars
        shown = ", ".join(quote(c) for c in chars[:10])
        more = f" and {len(chars) - 10} more" if len(chars) > 10 else ""
        super().__init__(f"characters outside the model's vocabulary: {shown}{more}")


@dataclass(frozen=True)
class Vocabulary:
    """Ordered characters; token id = position. `unknown_char` is set when the policy is 'replace'."""

    chars: tuple[str, ...]
    unknown_policy: str = "replace"
    unknown_char: str | None = DEFAULT_UNKNOWN_CHAR
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.unknown_policy not in UNKNOWN_POLICIES:
            raise ValueError(f"unknown_policy must be one of {UNKNOWN_POLICIES}, not {self.unknown_policy!r}")
        if self.unknown_policy == "replace" and self.unknown_char not in self.chars:
            raise ValueError("the 'replace' policy needs unknown_char inside the vocabulary")
        if self.unknown_policy == "refuse":
            object.__setattr__(self, "unknown_char", None)
        object.__setattr__(self, "_index", {c: i for i, c in enumerate(self.chars)})
        if len(self._index) != len(self.chars):
            raise ValueError("vocabulary characters must be distinct")

    @classmethod
    def build(
        cls,
        text: str,
        *,
        policy: str = "replace",
        min_count: int = 1,
        unknown_char: str = DEFAULT_UNKNOWN_CHAR,
    ) -> Vocabulary:
        """Vocabulary of `text`'s characters seen at least `min_count` times, sorted by code point."""
        return cls.from_counts(Counter(text), policy=policy, min_count=min_count, unknown_char=unknown_char)

    @classmethod
    def from_counts(
        cls,
        counts: Mapping[str, int],
        *,
        policy: str = "replace",
        min_count: int = 1,
        unknown_char: str = DEFAULT_UNKNOWN_CHAR,
    ) -> Vocabulary:
        """Vocabulary of the characters counted at least `min_count` times (a corpus too large to hold counts
        them in pieces), sorted by code point."""
        chars = sorted(c for c, n in counts.items() if n >= min_count and c != unknown_char)
        if policy == "replace":
            chars.append(unknown_char)
        return cls(tuple(chars), policy, unknown_char if policy == "replace" else None)

    def __len__(self) -> int:
        return len(self.chars)

    def __contains__(self, char: object) -> bool:
        return char in self._index

    def unknown(self, text: str) -> list[str]:
        """Distinct characters of `text` outside the vocabulary, in order of first appearance."""
        return list(dict.fromkeys(c for c in text if c not in self._index))

    def encode(self, text: str) -> np.ndarray:
        """Token ids (int64). Unknown characters are replaced or refused, per the policy."""
        missing = self.unknown(text)
        if missing:
            if self.unknown_char is None:
                raise UnknownCharactersError(missing)
            fill = self._index[self.unknown_char]
            return np.fromiter((self._index.get(c, fill) for c in text), dtype=np.int64, count=len(text))
        return np.fromiter((self._index[c] for c in text), dtype=np.int64, count=len(text))

    def encode_lossy(self, text: str) -> tuple[np.ndarray, int]:
        """Encode for training/evaluation: unknowns become unknown_char, or are dropped under 'refuse'.

        Returns the ids and how many characters were replaced or dropped.
        """
        missing = set(self.unknown(text))
        if not missing:
            return self.encode(text), 0
        if self.unknown_char is not None:
            return self.encode(text), sum(1 for c in text if c in missing)
        kept = "".join(c for c in text if c not in missing)
        return self.encode(kept), len(text) - len(kept)

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    # --- persistence (JSON, never pickle) -------------------------------------------------
    def to_spec(self) -> VocabularySpec:
        return VocabularySpec(list(self.chars), self.unknown_policy, self.unknown_char)

    @classmethod
    def from_spec(cls, spec: VocabularySpec) -> Vocabulary:
        return cls(tuple(spec.chars), spec.unknown_policy, spec.unknown_char)

    def save(self, path: Path) -> None:
        spec = self.to_spec()
        payload = {"chars": spec.chars, "unknown_policy": spec.unknown_policy, "unknown_char": spec.unknown_char}
        path.write_text(json.dumps(payload, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls.from_spec(VocabularySpec(data["chars"], data["unknown_policy"], data.get("unknown_char")))
