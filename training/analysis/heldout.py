"""Text the model did not train on: the validation tail of its own corpus, or files given by the user.

For the builtin Python corpus the held-out text is every standard-library file that lies
wholly in the validation split, so each one can be lexed by `tokenize` on its own. The
corpus is rebuilt and its sha256 checked against the one recorded at training time: a
different Python version has different files, and then the split would not be held out.
A prepared corpus (`prepared:DIR`) is opened by training's own loader and its validation ids
decoded, only as many as the analysis reads (the token file is memory-mapped).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from training.analysis.weights import LoadedModel
from training.config import BUILTIN_CORPUS, TrainingConfig
from training.data import load_corpus, split_text, stdlib_files
from training.prepared import PREFIX, load_dataset

log = logging.getLogger(__name__)

DEFAULT_MAX_CHARS = 30_000


class HeldoutError(ValueError):
    """No held-out text can be found for this model; pass --text."""


def validation_documents(loaded: LoadedModel, max_chars: int | None = None) -> list[str]:
    """The validation split of the model's training corpus, as whole documents where possible.

    `max_chars` bounds what a prepared corpus decodes (its split may be larger than memory): its first
    `max_chars` + 1 characters, so that a caller cutting at a line boundary still sees one to cut at."""
    config = loaded.training.get("config", {}).get("data", {})
    spec, fraction = config.get("corpus"), config.get("train_fraction")
    recorded = loaded.training.get("corpus", {}).get("sha256")
    if not spec or fraction is None:
        raise HeldoutError(f"{loaded.source} does not record its training corpus; pass --text FILE")
    if spec.startswith(PREFIX):
        return [_prepared_validation(config, recorded, max_chars)]
    try:
        corpus = load_corpus(spec)
    except (FileNotFoundError, ValueError) as exc:
        raise HeldoutError(f"the training corpus {spec!r} is not available here ({exc}); pass --text FILE") from exc
    if recorded and corpus.sha256 != recorded:
        raise HeldoutError(f"the corpus {spec!r} here differs from the one trained on (sha256); pass --text FILE")
    if spec != BUILTIN_CORPUS:
        return [split_text(corpus.text, fraction)[1]]
    cut = int(len(corpus.text) * fraction)
    documents, offset = [], 0
    for path in stdlib_files():
        doc = path.read_text(encoding="utf-8")
        if offset >= cut:
            documents.append(doc)
        offset += len(doc) + 1  # files are joined with one newline
    return documents


def _prepared_validation(config: dict[str, object], recorded: str | None, max_chars: int | None) -> str:
    """The validation text of a prepared corpus, read as training reads it (`training.prepared.load_dataset`)."""
    spec = config["corpus"]
    try:  # the recorded data settings as training reads them (a setting of another version is a ValueError)
        dataset = load_dataset(TrainingConfig.from_dict({"data": config}).data)
    except (OSError, ValueError) as exc:  # CorpusError is a ValueError
        raise HeldoutError(f"the training corpus {spec!r} is not available here ({exc}); pass --text FILE") from exc
    if recorded and dataset.corpus.sha256 != recorded:
        raise HeldoutError(f"the corpus {spec!r} here differs from the one trained on (sha256); pass --text FILE")
    ids = dataset.val_ids if max_chars is None else dataset.val_ids[: max_chars + 1]
    return dataset.vocab.decode(int(i) for i in ids)


def heldout_documents(
    loaded: LoadedModel,
    texts: list[Path] | None = None,
    max_chars: int = DEFAULT_MAX_CHARS,
    accept: Callable[[str], bool] | None = None,
) -> list[str]:
    """Whole documents, in order, that fit in `max_chars` together (and pass `accept`, e.g. lexable).

    When no document fits, the first one is cut at a line boundary instead.
    """
    documents = [p.read_text(encoding="utf-8") for p in texts] if texts else validation_documents(loaded, max_chars)
    chosen: list[str] = []
    total = 0
    for doc in documents:
        if total + len(doc) <= max_chars and (accept is None or accept(doc)):
            chosen.append(doc)
            total += len(doc) + 1
    if not chosen:  # one long document (a plain-text corpus' validation tail): its first lines
        head = documents[0][: documents[0].rfind("\n", 0, max_chars) + 1] if documents else ""
        chosen = [head] if head and (accept is None or accept(head)) else []
        total = len(head)
    if not chosen:
        raise HeldoutError(f"no held-out document of at most {max_chars} characters is usable; raise --chars")
    log.info("held-out text: %d of %d documents, %d characters", len(chosen), len(documents), total)
    return chosen
