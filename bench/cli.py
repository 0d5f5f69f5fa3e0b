"""`charrnn bench ...`: every benchmark in one place. Nothing heavy is imported until a handler runs.

Each benchmark prints a table whose ratios compare against a baseline measured in the same run
(docs/benchmarks.md records the runs).
"""

from __future__ import annotations

import argparse
import importlib
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

_DEFAULTS = argparse.ArgumentDefaultsHelpFormatter


def register(sub: Any) -> None:
    bench = sub.add_parser("bench", help="benchmarks (quality, serve, cells, ...)")
    which = bench.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)

    q = which.add_parser(
        "quality", help="train for a wall-clock budget and report validation loss", formatter_class=_DEFAULTS
    )
    q.add_argument("--corpus", required=True, help="corpus file, directory or glob (tiny shakespeare: see docs)")
    q.add_argument("--minutes", type=float, required=True, help="training wall-clock budget")
    q.add_argument("--out", default="runs/bench-quality", help="run directory")
    q.add_argument("overrides", nargs="*", metavar="section.key=value", help="override a setting")
    q.set_defaults(handler=_quality)

    k = which.add_parser(
        "train-kernels", help="training step time with oneDNN kernels on and off", formatter_class=_DEFAULTS
    )
    k.add_argument("--layers", type=int, default=2)
    k.add_argument("--hidden", type=int, default=256)
    k.add_argument("--batch", type=int, action="append", help="batch sizes (repeatable; default 16, 64)")
    k.add_argument("--seq-len", type=int, default=128)
    k.add_argument("--repeats", type=int, default=5)
    k.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    k.set_defaults(handler=_kernels)

    o = which.add_parser(
        "train-options",
        help="training step time of bf16, weight drop and the weights' average against fp32",
        formatter_class=_DEFAULTS,
    )
    o.add_argument("--layers", type=int, default=2)
    o.add_argument("--hidden", type=int, default=512)
    o.add_argument("--embedding", type=int, default=128)
    o.add_argument("--batch", type=int, default=8, help="streams (one process' share of the lecture's 16)")
    o.add_argument("--seq-len", type=int, default=128)
    o.add_argument("--rounds", type=int, default=7, help="steps per option, interleaved")
    o.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch's default)")
    o.set_defaults(handler=_train_options)

    t = which.add_parser(
        "train-processes",
        help="training chars/s of one process against N under torchrun (one thread each)",
        formatter_class=_DEFAULTS,
    )
    t.add_argument("--corpus", required=True, help="corpus file, directory, glob or prepared:DIR")
    t.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="process counts, 1 (the baseline) first")
    t.add_argument("--steps", type=int, default=40, help="optimiser steps per run")
    t.add_argument("--repeats", type=int, default=2, help="runs per process count (the order alternates)")
    t.add_argument("--out", type=Path, default=Path("runs/bench-train-processes"), help="run directories")
    t.add_argument("overrides", nargs="*", metavar="section.key=value", help="settings for every run")
    t.set_defaults(handler=_train_processes)

    c = which.add_parser(
        "cells", help="tanh RNN vs LSTM vs GRU at equal parameters and wall-clock", formatter_class=_DEFAULTS
    )
    c.add_argument("--corpus", help="corpus file, directory or glob (tiny shakespeare: see docs)")
    c.add_argument("--minutes", type=float, help="training budget per cell")
    c.add_argument("--report-only", action="store_true", help="redo the table and plot from the runs in --out")
    c.add_argument("--out", type=Path, default=Path("runs/bench-cells"), help="run and report directory")
    c.add_argument("--cells", default="rnn,lstm,gru", help="comma list")
    c.add_argument("overrides", nargs="*", metavar="section.key=value", help="settings for every cell")
    c.set_defaults(handler=_cells)

    s = which.add_parser(
        "serve",
        help="served chars/s and chars per server CPU-second vs the in-process ONNX Runtime ceiling",
        formatter_class=_DEFAULTS,
    )
    s.add_argument("--model", type=Path, default=Path("models/default"), help="fp32 model artifact directory")
    s.add_argument("--streams", type=int, nargs="+", default=[1, 16, 64, 256], help="concurrent streams to measure")
    s.add_argument("--pairs", type=int, default=3, help="interleaved ceiling/served rounds per stream count")
    s.add_argument("--warmup", type=float, default=4.0, help="seconds of load before each measured window")
    s.add_argument("--duration", type=float, default=15.0, help="seconds in each measured window")
    s.add_argument("--ceiling-seconds", type=float, default=5.0, help="seconds per in-process ceiling run")
    s.add_argument("--max-chars", type=int, default=2000, help="characters per request")
    s.add_argument("--max-live-streams", type=int, default=256, help="the servers' --max-live-streams")
    s.add_argument(
        "--int8-streams", type=int, default=64, help="stream count at which int8 is measured too (0: skip int8)"
    )
    s.add_argument("--int8-model", type=Path, help="int8 artifact (default: --model quantized into a temp dir)")
    s.add_argument("--out", type=Path, default=Path("bench-results/serve"), help="directory for JSON and PNG")
    s.add_argument(
        "--server-flags",
        type=shlex.split,
        default=[],
        help="extra `charrnn serve` flags (one quoted string) for every server, e.g. '--intra-op-threads 2'",
    )
    s.add_argument("--skip-interference", action="store_true", help="skip the Score/feed interference case")
    s.set_defaults(handler=_lazy("bench.serve:main"))

    fa = which.add_parser(
        "fairness",
        help="one model's load vs another's time to first character, on one server",
        formatter_class=_DEFAULTS,
    )
    fa.add_argument("--a-model", type=Path, default=Path("models/default"), help="the loaded model's artifact")
    fa.add_argument("--b-model", type=Path, default=Path("models/shakespeare"), help="the measured model's artifact")
    fa.add_argument("--a-name", default="default", help="A's name in the repository (the default model)")
    fa.add_argument("--b-name", default="shakespeare", help="B's name in the repository")
    fa.add_argument("--a-streams", type=int, default=64, help="concurrent streams on A")
    fa.add_argument("--b-chars", type=int, default=200, help="characters per request on B (short: many first chars)")
    fa.add_argument("--rounds", type=int, default=3, help="interleaved rounds of B alone, then B beside A")
    fa.add_argument("--warmup", type=float, default=4.0, help="seconds of load before each measured window")
    fa.add_argument("--duration", type=float, default=15.0, help="seconds in each measured window")
    fa.add_argument("--server-flags", type=shlex.split, default=[], help="extra `charrnn serve` flags (one string)")
    fa.add_argument("--out", type=Path, default=Path("bench-results/fairness"), help="directory for the JSON")
    fa.set_defaults(handler=_lazy("bench.fairness:main"))

    e = which.add_parser("sse", help="server CPU per character: SSE (HTTP) vs gRPC streams", formatter_class=_DEFAULTS)
    e.add_argument("--model", type=Path, default=Path("models/default"), help="model artifact directory")
    e.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    e.add_argument("--repeats", type=int, default=3, help="alternating runs per edge and count (the median is shown)")
    e.add_argument("--streams", type=int, nargs="+", default=[1, 64], help="concurrent streams to measure")
    e.add_argument("--max-chars", type=int, default=2000, help="characters per request")
    e.add_argument("--flush-interval-ms", type=float, default=100.0, help="server coalescing interval")
    e.add_argument("--out", type=Path, default=Path("bench-results/sse"), help="directory for the JSON")
    e.set_defaults(handler=_lazy("bench.http:main_sse"))

    f = which.add_parser(
        "http-frameworks",
        help="event-loop CPU per streamed event: aiohttp vs starlette on uvicorn",
        formatter_class=_DEFAULTS,
    )
    f.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    f.add_argument("--streams", type=int, nargs="+", default=[1, 64], help="concurrent requests")
    f.add_argument("--events", type=int, nargs="+", default=[1, 100], help="events per request")
    f.add_argument("--out", type=Path, default=Path("bench-results/http-frameworks"), help="directory for the JSON")
    f.set_defaults(handler=_lazy("bench.http:main_frameworks"))

    z = which.add_parser(
        "quantize",
        help="decode ceiling in-process: fp32 vs per-row int8 vs ONNX Runtime's per-tensor int8",
        formatter_class=_DEFAULTS,
    )
    z.add_argument("--model", type=Path, default=Path("models/default"), help="fp32 model artifact directory")
    z.add_argument("--batch", type=int, nargs="+", default=[1, 64, 256], help="rows per decode step")
    z.add_argument("--seconds", type=float, default=0.5, help="length of one timed run")
    z.add_argument("--rounds", type=int, default=7, help="timed runs per form and batch size, interleaved")
    z.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    z.add_argument("--out", type=Path, help="directory for the JSON")
    z.set_defaults(handler=_lazy("bench.quantize:main"))

    m = which.add_parser(
        "sessions", help="RSS per server-side session vs its raw state bytes", formatter_class=_DEFAULTS
    )
    m.add_argument("--model", type=Path, default=Path("models/default"), help="model artifact directory")
    m.add_argument("--sessions", type=int, default=4000, help="sessions to create")
    m.add_argument("--out", type=Path, default=Path("bench-results/sessions"), help="directory for the JSON")
    m.set_defaults(handler=_lazy("bench.sessions:main"))

    o = which.add_parser(
        "overload", help="10x the stream limit: refusals, admitted streams' pace, RSS", formatter_class=_DEFAULTS
    )
    o.add_argument("--model", type=Path, default=Path("models/default"), help="model artifact directory")
    o.add_argument("--max-live-streams", type=int, default=16, help="the server's live-stream limit")
    o.add_argument("--max-queued-streams", type=int, default=16, help="the server's queue limit")
    o.add_argument("--factor", type=int, default=10, help="concurrent clients = factor x (live + queued limits)")
    o.add_argument("--seconds", type=float, default=60.0, help="length of the overload phase")
    o.add_argument("--baseline-streams", type=int, default=4, help="streams for the unloaded inter-chunk figure")
    o.add_argument("--baseline-seconds", type=float, default=10.0, help="length of the unloaded phase")
    o.add_argument("--max-chars", type=int, default=400, help="characters per request")
    o.add_argument("--flush-interval-ms", type=float, default=100.0, help="server coalescing interval")
    o.add_argument("--out", type=Path, default=Path("bench-results/overload"), help="directory for the JSON")
    o.set_defaults(handler=_lazy("bench.reliability:main_overload"))

    w = which.add_parser(
        "soak",
        help="mixed gRPC and HTTP traffic, hostile requests and bystanders for N minutes: errors, RSS, exactness",
        formatter_class=_DEFAULTS,
    )
    w.add_argument("--model", type=Path, default=Path("models/default"), help="model artifact directory")
    w.add_argument("--minutes", type=float, default=30.0, help="length of the soak")
    w.add_argument("--streams", type=int, default=64, help="concurrent stream clients (also the server's limit)")
    w.add_argument("--http-share", type=float, default=0.5, help="share of the stream clients that use HTTP")
    w.add_argument("--session-clients", type=int, default=4, help="concurrent session-churn clients")
    w.add_argument("--cancel-share", type=float, default=0.2, help="share of streams cancelled after a few chunks")
    w.add_argument("--resume-share", type=float, default=0.3, help="share of generations continued from a token")
    w.add_argument("--score-share", type=float, default=0.1, help="share of a gRPC client's turns that Score")
    w.add_argument("--hostile-per-second", type=float, default=5.0, help="hostile requests a second (0: none)")
    w.add_argument("--max-chars", type=int, default=400, help="characters per request")
    w.add_argument("--session-ttl", type=float, default=5.0, help="the server's session TTL (left sessions expire)")
    w.add_argument(
        "--warm-up-seconds", type=float, default=120.0, help="RSS baseline point (at most a third of the run)"
    )
    w.add_argument("--sample-seconds", type=float, default=10.0, help="RSS sampling interval")
    w.add_argument("--drain-seconds", type=float, default=30.0, help="wait past the TTL for the gauges to reach zero")
    w.add_argument("--out", type=Path, default=Path("bench-results/soak"), help="directory for the report")
    w.set_defaults(handler=_lazy("bench.soak:main"))


def _lazy(target: str) -> Callable[[argparse.Namespace], int]:
    """A handler that imports `module:function` only when it runs (the command starts without it)."""

    def handler(args: argparse.Namespace) -> int:
        module, _, function = target.partition(":")
        return int(getattr(importlib.import_module(module), function)(args))

    return handler


def _usage(command: str, exc: Exception) -> int:
    print(f"charrnn bench {command}: {exc}", file=sys.stderr)
    return 2


def print_table(rows: list[dict[str, Any]]) -> None:
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + "---|" * len(rows[0]))
    for row in rows:
        print("| " + " | ".join(str(v) for v in row.values()) + " |")


def _quality(args: argparse.Namespace) -> int:
    from training.config import TrainingConfig, apply_overrides
    from training.train import Trainer

    config = TrainingConfig()
    config.data.corpus = args.corpus
    config.run.out_dir = args.out
    config.optim.max_minutes = args.minutes
    try:
        apply_overrides(config, list(args.overrides))
    except ValueError as exc:
        return _usage("quality", exc)
    result = Trainer(config).train()
    row = {
        "corpus": config.data.corpus,
        "minutes": args.minutes,
        "cell": config.model.cell,
        "layers": config.model.layers,
        "hidden": config.model.hidden_size,
        "steps": result.steps,
        "val_nats": round(result.best_val_loss, 4),
        "val_bpc": round(result.best_val_bpc, 4),
        "wall_min": round(result.wall_time_s / 60, 1),
    }
    print_table([row])
    (Path(args.out) / "bench-quality.json").write_text(json.dumps(row, indent=2) + "\n", encoding="utf-8")
    return 0


def _kernels(args: argparse.Namespace) -> int:
    import torch

    from bench.kernels import run

    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"LSTM/GRU/RNN {args.layers}x{args.hidden}, T={args.seq_len}, median of {args.repeats} steps, "
        f"{torch.get_num_threads()} torch threads"
    )
    print_table(run(args.layers, args.hidden, args.batch or [16, 64], args.seq_len, args.repeats))
    return 0


def _train_options(args: argparse.Namespace) -> int:
    import torch

    from bench.train_options import run
    from training.config import ModelConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    config = ModelConfig(cell="lstm", layers=args.layers, hidden_size=args.hidden, embedding_size=args.embedding)
    print(
        f"LSTM {args.layers}x{args.hidden}, embedding {args.embedding}, {args.batch} x {args.seq_len} characters a "
        f"step, median of {args.rounds} interleaved steps, {torch.get_num_threads()} torch threads"
    )
    print_table(run(config, args.batch, args.seq_len, args.rounds))
    return 0


def _train_processes(args: argparse.Namespace) -> int:
    import os
    import statistics

    from bench.train_processes import run
    from training.config import TrainingConfig, apply_overrides
    from training.data import resolve_corpus
    from training.prepared import META_FILE, PREFIX

    try:
        if args.processes[0] != 1 or min(args.processes) < 1:
            raise ValueError("--processes must start with 1 (the baseline) and hold positive counts")
        config = apply_overrides(TrainingConfig(), list(args.overrides))
        # Before any run starts: a corpus the runs cannot read is one line, not a failed run's traceback.
        if args.corpus.startswith(PREFIX):
            prepared = Path(args.corpus[len(PREFIX) :])
            if not (prepared / META_FILE).is_file():
                raise ValueError(f"{prepared} is not a prepared corpus (no {META_FILE}): run charrnn prepare first")
        else:
            resolve_corpus(args.corpus)  # CorpusError (a ValueError) names the part that matches nothing
    except ValueError as exc:
        return _usage("train-processes", exc)
    m, o = config.model, config.optim
    load_before = os.getloadavg()
    rows = run(args.processes, args.corpus, args.out, args.steps, args.repeats, list(args.overrides))
    load_after = os.getloadavg()
    print(
        f"{m.cell} {m.layers}x{m.hidden_size}, global batch {o.batch_size} x {o.seq_len}, {args.steps} steps, "
        f"one torch thread per process, {os.cpu_count()} CPUs; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after"
    )
    print_table(rows)
    for count in args.processes[1:]:
        ratios = [r["vs_1_process"] for r in rows if r["processes"] == count]
        print(f"{count} processes: median {statistics.median(ratios):.2f}x one process over {len(ratios)} repeats")
    report = {"load_average": [load_before, load_after], "config": config.to_dict(), "rows": rows}
    (args.out / "bench-train-processes.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


def _cells(args: argparse.Namespace) -> int:
    from bench.cells import CELLS, base_config, load_result, run_cells, write_report

    cells = tuple(c.strip() for c in args.cells.split(",") if c.strip())
    if not cells or any(c not in CELLS for c in cells):
        return _usage("cells", ValueError(f"--cells must be a comma list of {', '.join(CELLS)}"))
    if args.report_only:
        try:
            results = [load_result(args.out / cell) for cell in cells]
        except (OSError, ValueError) as exc:
            return _usage("cells", exc)
    elif args.corpus is None or args.minutes is None:
        return _usage("cells", ValueError("--corpus and --minutes are required (or --report-only)"))
    else:
        try:
            base = base_config(args.corpus, args.minutes, args.out, list(args.overrides))
        except ValueError as exc:
            return _usage("cells", exc)
        results = run_cells(base, args.out, cells)
    if args.report_only:
        command = shlex.join(["charrnn", "bench", "cells", "--report-only", "--out", str(args.out)])
    else:
        settings = ["--corpus", args.corpus, "--minutes", f"{args.minutes:g}", "--cells", ",".join(cells)]
        command = shlex.join(["charrnn", "bench", "cells", *settings, *args.overrides])
    sys.stdout.write(write_report(results, args.out, command))
    print(f"wrote {args.out}/cells.md, cells.json, cells.png")
    return 0
