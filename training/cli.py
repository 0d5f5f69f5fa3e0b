"""Subcommands of the offline side: prepare, train, export, sample.

Nothing heavy is imported here; each handler imports torch (or onnxruntime) when it runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = "models/default"
PRIME_CHARS = 40  # a corpus' first line, cut to this, primes the training samples


def register(sub: Any) -> None:
    from training.config import describe_settings

    settings_help = "settings (section.key=value), with their defaults:\n" + describe_settings()

    train = sub.add_parser(
        "train",
        help="train a char-RNN on a text corpus",
        epilog=settings_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("overrides", nargs="*", metavar="section.key=value", help="override a setting")
    train.add_argument(
        "--corpus", help="file, directory, glob, comma list or prepared:DIR (default: builtin:python-stdlib)"
    )
    train.add_argument("--out", help="run directory (run.out_dir)")
    train.add_argument("--config", type=Path, help="JSON config file (as saved in a run's config.json)")
    train.add_argument("--resume", type=Path, help="continue from a checkpoint (e.g. RUN/last.pt)")
    train.add_argument("--export", type=Path, metavar="DIR", help="export the best checkpoint to DIR afterwards")
    _name_args(train, " (with --export)")
    train.set_defaults(handler=_train)

    prepare = sub.add_parser(
        "prepare",
        help="encode a corpus once into a memory-mapped token file, for corpora larger than memory",
        description="Stream the corpus twice (vocabulary scan, then encoding) into DIR; train on it with "
        "--corpus prepared:DIR. Only data.* settings apply; training adopts the ones recorded here.",
    )
    prepare.add_argument("overrides", nargs="*", metavar="data.key=value", help="override a data setting")
    prepare.add_argument("--corpus", help="file, directory, glob or comma list (default: builtin:python-stdlib)")
    prepare.add_argument("--out", type=Path, required=True, metavar="DIR", help="directory to write (new or empty)")
    prepare.set_defaults(handler=_prepare)

    export = sub.add_parser("export", help="export a checkpoint to an ONNX model artifact")
    export.add_argument("checkpoint", type=Path, help="checkpoint file (RUN/best.pt)")
    export.add_argument("--out", type=Path, required=True, help="artifact directory to write")
    _name_args(export, "")
    export.add_argument(
        "--quantize", choices=["int8"], help="write the int8 artifact instead (batch invariant; see docs/training.md)"
    )
    _add_gate_arguments(export)
    export.set_defaults(handler=_export)

    quantize = sub.add_parser(
        "quantize", help="write the int8 artifact of an fp32 artifact, refused if validation loss grows too much"
    )
    quantize.add_argument("model", type=Path, help="fp32 artifact directory (e.g. models/default)")
    quantize.add_argument("--out", type=Path, required=True, help="int8 artifact directory to write")
    _add_gate_arguments(quantize)
    quantize.set_defaults(handler=_quantize)

    sample = sub.add_parser("sample", help="sample text locally from an artifact or a checkpoint")
    source = sample.add_mutually_exclusive_group()
    source.add_argument("--model", type=Path, help=f"artifact directory (default {DEFAULT_MODEL_DIR})")
    source.add_argument("--checkpoint", type=Path, help="a training checkpoint instead of an artifact")
    sample.add_argument("--prompt", default="def ", help="text to start from")
    sample.add_argument("--chars", type=int, default=500, help="characters to generate")
    sample.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    sample.add_argument("--top-k", type=int, default=0)
    sample.add_argument("--top-p", type=float, default=1.0)
    sample.add_argument("--seed", type=int, default=0)
    sample.set_defaults(handler=_sample)


def _name_args(parser: argparse.ArgumentParser, when: str) -> None:
    """--name/--version: what the manifest, the server's Info and `charrnn info` call the model."""
    parser.add_argument("--name", help=f"model name in the manifest{when}; unset: the exporter's default")
    parser.add_argument("--version", help=f"model version in the manifest{when}; unset: the exporter's default")


def _add_gate_arguments(parser: argparse.ArgumentParser) -> None:
    from training.config import QualityGate

    default = QualityGate()
    parser.add_argument(
        "--max-loss-increase", type=float, default=default.max_loss_increase, metavar="NATS",
        help=f"refuse when int8 validation loss exceeds fp32 by more (nats/char; default {default.max_loss_increase})",
    )  # fmt: skip
    parser.add_argument(
        "--allow-loss-increase", action="store_true", help="write the int8 artifact anyway, with a warning"
    )
    parser.add_argument(
        "--val-chars", type=int, default=default.val_chars, metavar="N",
        help="score only the first N validation characters (default: the whole split)",
    )  # fmt: skip
    parser.add_argument("--corpus", help="the training corpus, if not where the manifest says (checked by sha256)")


def _gate(args: argparse.Namespace) -> Any:
    from training.config import QualityGate

    return QualityGate(args.max_loss_increase, args.allow_loss_increase, args.val_chars, args.corpus)


def _load_config(args: argparse.Namespace) -> Any:
    from training.config import TrainingConfig, apply_overrides

    config = TrainingConfig()
    if getattr(args, "config", None):
        config = TrainingConfig.from_dict(json.loads(args.config.read_text(encoding="utf-8")))
    if args.corpus:
        config.data.corpus = args.corpus
    if args.out:
        config.run.out_dir = str(args.out)
    return apply_overrides(config, list(args.overrides))


def _prime(args: argparse.Namespace, config: Any, dataset: Any) -> None:
    """Default the samples' prime (`_default_prime`) unless the command line or a config file gave one."""
    primed = args.config is not None or any(o.partition("=")[0].strip() == "run.sample_prime" for o in args.overrides)
    if not primed:
        config.run.sample_prime = _default_prime(config.data, dataset, config.run.sample_prime)


def _default_prime(data: Any, dataset: Any, builtin_prime: str) -> str:
    """The samples' prime when none is given: the config's (`def `) for the builtin Python corpus, else the
    first line of the training text (cut to PRIME_CHARS; empty when that line is), since `def ` means nothing
    in prose. It is decoded from the loaded dataset's first training ids, so it holds only characters of the
    vocabulary (a rare one is folded or dropped as in training) and the corpus is not read again."""
    from training.config import BUILTIN_CORPUS

    if data.corpus == BUILTIN_CORPUS:
        return builtin_prime
    start = dataset.vocab.decode(int(i) for i in dataset.train_ids[: 4 * PRIME_CHARS])
    prime: str = start.split("\n", 1)[0][:PRIME_CHARS]
    log.info("training samples start from the corpus' first line %r (run.sample_prime=... to change it)", prime)
    return prime


def _prepare(args: argparse.Namespace) -> int:
    from training.config import TrainingConfig, apply_overrides
    from training.prepared import PREFIX, prepare_corpus

    config = TrainingConfig()
    if args.corpus:
        config.data.corpus = args.corpus
    try:
        other = [item for item in args.overrides if not item.startswith("data.")]
        if other:
            raise ValueError(f"prepare takes data.* settings only, not {other[0]!r}")
        apply_overrides(config, list(args.overrides))
        meta = prepare_corpus(config.data, args.out)
    except (ValueError, OSError) as exc:
        print(f"charrnn prepare: {exc}", file=sys.stderr)
        return 2
    tokens, split = meta["tokens"], meta["split"]
    print(
        f"wrote {args.out}: {tokens['count']} tokens ({tokens['dtype']}) from {meta['corpus']['bytes']} bytes, "
        f"{split['train_chars']} train / {split['val_chars']} validation; train with --corpus {PREFIX}{args.out}"
    )
    return 0


def _train(args: argparse.Namespace) -> int:
    """Also the entry point of every process under torchrun: rank 0 reports and exports, the others train."""
    from training.prepared import load_dataset

    try:
        if (args.name or args.version) and not args.export:
            raise ValueError("--name and --version name the exported model: add --export DIR")
        config = _load_config(args)
        # Before torch loads and before the run directory exists: a bad corpus (CorpusError) is one line.
        dataset = load_dataset(config.data)
        _prime(args, config, dataset)
    except (ValueError, OSError) as exc:
        print(f"charrnn train: {exc}", file=sys.stderr)
        return 2
    from training.distributed import setup, teardown
    from training.train import Trainer

    try:
        dist = setup(config.run)
    except ValueError as exc:
        print(f"charrnn train: {exc}", file=sys.stderr)
        return 2
    if not dist.is_main:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 tells the story
    elif not config.optim.max_minutes:
        log.warning(
            "no time budget: training runs for optim.max_steps=%d steps, which can take hours on a CPU; "
            "optim.max_minutes=N stops it after N minutes (the learning rate anneals over the budget)",
            config.optim.max_steps,
        )
    # A process that dies or hangs makes the others' next collective fail (run.dist_timeout_s at the
    # latest) with a traceback naming the peer; torchrun then ends the job and reports the first failure.
    finished = False
    try:
        try:
            trainer = Trainer(config, dataset=dataset, resume=args.resume, dist=dist)
        except (ValueError, OSError) as exc:
            print(f"charrnn train: {exc}", file=sys.stderr)
            return 2
        result = trainer.train()
        del trainer  # its DDP wrapper holds the process group
        finished = True
    finally:
        teardown(dist, synchronize=finished)
    if not dist.is_main:
        return 0
    print(
        f"best validation loss {result.best_val_loss:.4f} nats ({result.best_val_bpc:.4f} bits/char) "
        f"after {result.steps} steps, {result.wall_time_s / 60:.1f} min; checkpoint {result.best_checkpoint}"
    )
    if args.export:
        return _export(
            argparse.Namespace(
                checkpoint=result.best_checkpoint, out=args.export, name=args.name, version=args.version, quantize=None
            )
        )
    return 0


def _export(args: argparse.Namespace) -> int:
    from training.export import ExportError, export_checkpoint, export_int8
    from training.quantize import LossIncreaseError, QuantizeError

    try:
        named = {key: value for key, value in (("name", args.name), ("version", args.version)) if value}
        if args.quantize:
            manifest = export_int8(args.checkpoint, args.out, _gate(args), **named)
            print(_describe_int8(args.out, manifest))
            return 0
        manifest = export_checkpoint(args.checkpoint, args.out, **named)
    except (QuantizeError, OSError, ValueError) as exc:  # a missing or invalid checkpoint: load_checkpoint
        print(f"charrnn export: {exc}", file=sys.stderr)
        return 2
    except (ExportError, LossIncreaseError) as exc:
        print(f"charrnn export: {exc}", file=sys.stderr)
        return 1
    parity = manifest.export["parity"]
    print(
        f"wrote {args.out} ({manifest.model.name} {manifest.model.version}): "
        f"{manifest.model.cell} {manifest.model.layers}x{manifest.model.hidden_size}, "
        f"vocab {manifest.model.vocab_size}, val {manifest.training['val_bits_per_char']:.4f} bits/char, "
        f"parity max |Δ| {max(parity['max_abs_error_logits'], parity['max_abs_error_state']):.1e}"
    )
    return 0


def _quantize(args: argparse.Namespace) -> int:
    from training.quantize import LossIncreaseError, QuantizeError, quantize_artifact

    try:
        manifest = quantize_artifact(args.model, args.out, _gate(args))
    except QuantizeError as exc:
        print(f"charrnn quantize: {exc}", file=sys.stderr)
        return 2
    except LossIncreaseError as exc:
        print(f"charrnn quantize: {exc}", file=sys.stderr)
        return 1
    print(_describe_int8(args.out, manifest))
    return 0


def _describe_int8(out: Path, manifest: Any) -> str:
    q = manifest.quantization
    size_mb = (out / manifest.onnx.file).stat().st_size / 1e6
    return (
        f"wrote {out}: int8 {manifest.model.cell} {manifest.model.layers}x{manifest.model.hidden_size}, "
        f"{size_mb:.2f} MB; validation {q.val_loss_nats:.4f} nats/char vs {q.val_loss_nats_fp32:.4f} fp32 "
        f"({q.loss_increase:+.4f}) on {q.val_chars} characters"
    )


def _sample(args: argparse.Namespace) -> int:
    from training.sample import OnnxStepper, ReferenceSampling, Stepper, TorchStepper, generate

    params = ReferenceSampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    stepper: Stepper
    if args.checkpoint:
        from training.train import load_checkpoint, model_from_checkpoint

        model, vocab, _ = model_from_checkpoint(load_checkpoint(args.checkpoint))
        stepper = TorchStepper(model)
    else:
        from charrnn.artifact import ArtifactError

        try:
            onnx_stepper = OnnxStepper(args.model or DEFAULT_MODEL_DIR)
        except ArtifactError as exc:
            print(f"charrnn sample: {exc}", file=sys.stderr)
            return 1
        stepper, vocab = onnx_stepper, onnx_stepper.vocab
    sys.stdout.write(args.prompt + generate(stepper, vocab, args.prompt, args.chars, params) + "\n")
    return 0
