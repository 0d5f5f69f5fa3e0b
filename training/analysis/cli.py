"""`charrnn analyze ...` and `charrnn bench cells`. Nothing heavy is imported until a handler runs."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path("models/default")
DEFAULT_OUT = Path("runs/analysis")


def _model_args(parser: argparse.ArgumentParser, out_name: str) -> None:
    parser.add_argument(
        "--model", type=Path, default=DEFAULT_MODEL_DIR, help="artifact directory (default %(default)s)"
    )
    parser.add_argument("--checkpoint", type=Path, help="a training checkpoint (RUN/best.pt) instead of --model")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT / out_name, help="output directory (default %(default)s)"
    )


def _text_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--text", type=Path, action="append", help="Python file(s) to analyze (default: the corpus' held-out split)"
    )
    parser.add_argument("--chars", type=int, default=24_000, help="held-out characters to use (default %(default)s)")


def register(sub: Any, bench_sub: Any) -> None:
    analyze = sub.add_parser("analyze", help="hidden units, gates, gradient flow, the hello model, progression")
    what = analyze.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)

    hello = what.add_parser("hello", help="the lecture's 4-letter model: train it, print its states step by step")
    hello.add_argument("--hidden", type=int, default=3, help="hidden units (the lecture uses 3)")
    hello.add_argument("--seed", type=int, default=0)
    hello.set_defaults(handler=_hello)

    units = what.add_parser("units", help="score every hidden unit against code features; draw the quote unit")
    _model_args(units, "units")
    _text_args(units)
    units.add_argument("--unit", help="draw this unit (e.g. c1:42) instead of the best string-tracking one")
    units.set_defaults(handler=_units)

    gates = what.add_parser("gates", help="how often each LSTM/GRU gate is saturated (< 0.1 or > 0.9)")
    _model_args(gates, "gates")
    _text_args(gates)
    gates.set_defaults(handler=_gates)

    grads = what.add_parser("gradients", help="gradient norm through time, exploding gradients and clipping")
    _model_args(grads, "gradients")
    _text_args(grads)
    grads.add_argument("--extra", type=Path, action="append", default=[], help="more trained checkpoints to compare")
    grads.add_argument("--steps", type=int, default=120, help="time steps to backpropagate through")
    grads.set_defaults(handler=_gradients)

    progression = what.add_parser("progression", help="the fixed-seed samples of a training run, step by step")
    _model_args(progression, "progression")
    progression.add_argument("--run", type=Path, help="run directory with samples.jsonl (default: the model's)")
    progression.set_defaults(handler=_progression)

    cells = bench_sub.add_parser("cells", help="tanh RNN vs LSTM vs GRU at equal parameters and wall-clock")
    cells.add_argument("--corpus", help="corpus (e.g. ../shared/data/tinyshakespeare.txt)")
    cells.add_argument("--minutes", type=float, help="training budget per cell")
    cells.add_argument("--report-only", action="store_true", help="redo the table and plot from the runs in --out")
    cells.add_argument("--out", type=Path, default=Path("runs/bench-cells"), help="run and report directory")
    cells.add_argument("--cells", default="rnn,lstm,gru", help="comma list (default %(default)s)")
    cells.add_argument("overrides", nargs="*", metavar="section.key=value", help="settings for every cell")
    cells.set_defaults(handler=_bench_cells)


def _load(args: argparse.Namespace) -> Any:
    from training.analysis.weights import load_model

    loaded = load_model(args.model, args.checkpoint)
    log.info("loaded %s", loaded.describe())
    return loaded


def _fail(command: str, exc: Exception) -> int:
    print(f"charrnn {command}: {exc}", file=sys.stderr)
    return 1


def _hello(args: argparse.Namespace) -> int:
    from training.analysis.hello import describe, train_hello

    result = train_hello(hidden=args.hidden, seed=args.seed)
    sys.stdout.write(describe(result))
    return 0 if result.predicted == result.targets else 1


def _units(args: argparse.Namespace) -> int:
    from charrnn.artifact import ArtifactError
    from training.analysis.heldout import HeldoutError
    from training.analysis.units import QUOTE_FEATURE, analyze_units, markdown

    try:
        report = analyze_units(_load(args), args.out, args.text, args.chars, args.unit)
    except (ArtifactError, HeldoutError, KeyError, ValueError) as exc:
        return _fail("analyze units", exc)
    sys.stdout.write(markdown(report))
    quote = report.score(QUOTE_FEATURE)
    print(
        f"\nquote unit {quote.unit} ({'+' if quote.sign > 0 else '-'}): held-out AUC {quote.heldout:.3f} "
        f"(shuffled-label control {quote.control_shuffled:.3f}, shifted {quote.control_shifted:.3f})"
    )
    print(f"wrote {args.out}/units.md, units.json, unit.html, unit.png")
    return 0


def _gates(args: argparse.Namespace) -> int:
    from charrnn.artifact import ArtifactError
    from training.analysis.gates import analyze_gates, markdown
    from training.analysis.heldout import HeldoutError

    try:
        report = analyze_gates(_load(args), args.out, args.text, args.chars)
    except (ArtifactError, HeldoutError, ValueError) as exc:
        return _fail("analyze gates", exc)
    sys.stdout.write(markdown(report))
    print(f"wrote {args.out}/gates.md, gates.json, gates.png")
    return 0


def _gradients(args: argparse.Namespace) -> int:
    from charrnn.artifact import ArtifactError
    from training.analysis.gradients import analyze_gradients, markdown
    from training.analysis.heldout import HeldoutError
    from training.analysis.weights import load_model

    try:
        extra = [load_model(checkpoint=path) for path in args.extra]
        report = analyze_gradients(_load(args), args.out, extra, args.text, args.chars, args.steps)
    except (ArtifactError, HeldoutError, ValueError) as exc:
        return _fail("analyze gradients", exc)
    sys.stdout.write(markdown(report))
    print(f"wrote {args.out}/gradients.md, gradients.json, gradients.png")
    return 0


def _progression(args: argparse.Namespace) -> int:
    from charrnn.artifact import ArtifactError
    from training.analysis.progression import find_run, write_progression

    try:
        run = args.run or find_run(args.model, args.checkpoint)
        path = write_progression(run, args.out)
    except (ArtifactError, FileNotFoundError, ValueError) as exc:
        return _fail("analyze progression", exc)
    print(f"wrote {path}")
    return 0


def _bench_cells(args: argparse.Namespace) -> int:
    from training.analysis.cells import CELLS, base_config, load_result, run_cells, write_report

    cells = tuple(c.strip() for c in args.cells.split(",") if c.strip())
    if not cells or any(c not in CELLS for c in cells):
        return _fail("bench cells", ValueError(f"--cells must be a comma list of {', '.join(CELLS)}"))
    if args.report_only:
        try:
            results = [load_result(args.out / cell) for cell in cells]
        except (OSError, ValueError) as exc:
            return _fail("bench cells", exc)
    elif args.corpus is None or args.minutes is None:
        return _fail("bench cells", ValueError("--corpus and --minutes are required (or --report-only)"))
    else:
        try:
            base = base_config(args.corpus, args.minutes, args.out, list(args.overrides))
        except ValueError as exc:
            return _fail("bench cells", exc)
        results = run_cells(base, args.out, cells)
    if args.report_only:
        command = shlex.join(["charrnn", "bench", "cells", "--report-only", "--out", str(args.out)])
    else:
        settings = ["--corpus", args.corpus, "--minutes", f"{args.minutes:g}", "--cells", ",".join(cells)]
        command = shlex.join(["charrnn", "bench", "cells", *settings, *args.overrides])
    sys.stdout.write(write_report(results, args.out, command))
    print(f"wrote {args.out}/cells.md, cells.json, cells.png")
    return 0
