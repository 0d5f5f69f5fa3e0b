"""`charrnn bench quantize`: the in-process decode ceiling of fp32 against two int8 forms.

Three forms of one model, each through the server's Engine (same session options): the fp32
artifact, the per-row int8 graph `charrnn quantize` writes (training/quantize_graph.py), and
ONNX Runtime's own per-tensor dynamic quantization (`quantize_dynamic`: DynamicQuantizeLSTM and
MatMulInteger), which is fast but not batch invariant. For each batch size the forms run in
interleaved rounds of decode steps (T = 1, argmax fed back, as `charrnn bench serve`'s ceiling);
each round records wall-clock and CPU time, and the table reports medians and their ratios to
fp32 from the same run. On a machine shared with other work, chars per CPU-second is the steadier
figure: a process that loses its core stops accumulating CPU time but not wall time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from charrnn.artifact import Manifest

log = logging.getLogger(__name__)

FORMS = ("fp32", "int8 per-row", "int8 per-tensor (ORT)")


@dataclass(frozen=True)
class Row:
    form: str
    batch: int
    chars_per_s: float  # median over rounds, wall clock
    chars_per_cpu_s: float  # median over rounds, process CPU time
    vs_fp32_wall: float
    vs_fp32_cpu: float
    alone_vs_batched_max_abs: float  # row 0's logits alone vs inside the batch
    size_mb: float


def _write_forms(source: Path, manifest: Manifest, tmp: Path) -> dict[str, tuple[Path, Manifest]]:
    """Model files for the three forms, each with the manifest the Engine needs to run it."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from training.quantize_graph import build_int8_graph, read_weights

    src = source / manifest.onnx.file
    onnx.save(build_int8_graph(read_weights(str(src), manifest), manifest), str(tmp / "row.onnx"))
    quantize_dynamic(str(src), str(tmp / "tensor.onnx"), weight_type=QuantType.QInt8)

    def spec(file: str, precision: str) -> Manifest:
        return dataclasses.replace(manifest, onnx=dataclasses.replace(manifest.onnx, file=file, precision=precision))

    return {
        FORMS[0]: (source, manifest),
        FORMS[1]: (tmp, spec("row.onnx", "int8")),
        FORMS[2]: (tmp, spec("tensor.onnx", "int8")),
    }


def _timed_run(engine: Any, batch: int, seconds: float) -> tuple[float, float]:
    """(chars per wall second, chars per CPU second) of decode steps for `seconds`."""
    states = engine.zero_states(batch)
    ids = np.zeros((batch, 1), np.int64)
    for _ in range(3):
        logits, states = engine.run(ids, states)
    steps = 0
    wall, cpu = time.perf_counter(), time.process_time()
    while time.perf_counter() - wall < seconds:
        logits, states = engine.run(ids, states)
        ids = logits[:, -1].argmax(axis=1)[:, None]
        steps += 1
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return batch * steps / wall, batch * steps / max(cpu, 1e-9)


def _alone_vs_batched(engine: Any, batch: int) -> float:
    """Max |logits of row 0 alone - row 0 in the batch| from random tokens and states."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, engine.vocab_size, (batch, 1))
    states = tuple((rng.standard_normal(s.shape) * 0.5).astype(np.float32) for s in engine.zero_states(batch))
    batched, _ = engine.run(tokens, states)
    alone, _ = engine.run(tokens[:1], tuple(s[:, :1] for s in states))
    return float(np.abs(alone[0] - batched[0]).max())


def run(model: Path, batches: list[int], seconds: float, rounds: int, threads: int) -> list[Row]:
    from charrnn.engine import Engine, EngineOptions
    from training.quantize import fp32_manifest

    manifest = fp32_manifest(model)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="charrnn-bench-quantize-") as tmp_name:
        forms = _write_forms(model, manifest, Path(tmp_name))
        options = EngineOptions(intra_op_threads=threads)
        engines = {name: Engine(directory, options, spec) for name, (directory, spec) in forms.items()}
        sizes = {name: (d / spec.onnx.file).stat().st_size / 1e6 for name, (d, spec) in forms.items()}
        for batch in batches:
            samples: dict[str, list[tuple[float, float]]] = {name: [] for name in engines}
            for r in range(rounds):
                for name, engine in engines.items():
                    samples[name].append(_timed_run(engine, batch, seconds))
                log.info("batch %d: round %d of %d", batch, r + 1, rounds)
            wall = {name: statistics.median(s[0] for s in v) for name, v in samples.items()}
            cpu = {name: statistics.median(s[1] for s in v) for name, v in samples.items()}
            for name, engine in engines.items():
                rows.append(
                    Row(
                        name, batch, wall[name], cpu[name], wall[name] / wall[FORMS[0]], cpu[name] / cpu[FORMS[0]],
                        _alone_vs_batched(engine, batch), sizes[name],
                    )
                )  # fmt: skip
    return rows


def kernel_table(batch: int = 64, k: int = 512, n: int = 1024, repeats: int = 200) -> str:
    """One [batch, k] x [k, n] product per element type on ONNX Runtime's CPU kernels, timed in CPU time:
    why activations are uint8 (int8 x int8 has no fast x86 kernel) and why not bfloat16 or float16."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = rng.standard_normal((k, n))
    int8_weights = rng.integers(-127, 128, (k, n), np.int8)
    cases: dict[str, tuple[str, int, Any, np.ndarray | None]] = {  # (op, A's type, its numpy type, B or None)
        "float32 MatMul": ("MatMul", TensorProto.FLOAT, np.float32, weights.astype(np.float32)),
        "float16 MatMul": ("MatMul", TensorProto.FLOAT16, np.float16, weights.astype(np.float16)),
        "bfloat16 MatMul": ("MatMul", TensorProto.BFLOAT16, np.float32, None),  # numpy has no bfloat16
        "uint8 x int8 MatMulInteger": ("MatMulInteger", TensorProto.UINT8, np.uint8, int8_weights),
        "int8 x int8 MatMulInteger": ("MatMulInteger", TensorProto.INT8, np.int8, int8_weights),
    }
    lines = [f"| [{batch}, {k}] x [{k}, {n}] | microseconds (CPU) |", "|---|---|"]
    for name, (op, a_type, a_np, b) in cases.items():
        b_init = (
            numpy_helper.from_array(b, "b")
            if b is not None
            else helper.make_tensor("b", TensorProto.BFLOAT16, [k, n], np.zeros(k * n, np.uint16).tobytes(), raw=True)
        )
        out_type = TensorProto.INT32 if op == "MatMulInteger" else a_type
        graph = helper.make_graph(
            [helper.make_node(op, ["a", "b"], ["y"])], "kernel",
            [helper.make_tensor_value_info("a", a_type, [batch, k])],
            [helper.make_tensor_value_info("y", out_type, [batch, n])], [b_init],
        )  # fmt: skip
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(
                helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(),
                options,
                providers=["CPUExecutionProvider"],
            )
        except Exception as exc:  # ONNX Runtime raises its own types; the message is the finding
            lines.append(f"| {name} | no CPU kernel ({type(exc).__name__}) |")
            continue
        a = rng.integers(0, 100, (batch, k)).astype(a_np)
        for _ in range(10):
            session.run(None, {"a": a})
        start = time.process_time()
        for _ in range(repeats):
            session.run(None, {"a": a})
        lines.append(f"| {name} | {(time.process_time() - start) / repeats * 1e6:.0f} |")
    return "\n".join(lines)


def table(rows: list[Row]) -> str:
    lines = [
        "| form | batch | chars/s | x fp32 | chars/CPU-s | x fp32 (CPU) | row alone vs batched, max abs diff | MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        diff = f"{r.alone_vs_batched_max_abs:.3g}" if r.batch > 1 else "-"
        lines.append(
            f"| {r.form} | {r.batch} | {r.chars_per_s / 1e3:.1f} K | {r.vs_fp32_wall:.2f} | "
            f"{r.chars_per_cpu_s / 1e3:.1f} K | {r.vs_fp32_cpu:.2f} | {diff} | {r.size_mb:.2f} |"
        )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    import os
    import sys

    from training.quantize import fp32_manifest
    from training.quantize_graph import QuantizeError

    try:
        fp32_manifest(args.model)  # before any timing: a wrong --model is one line and exit 2
    except QuantizeError as exc:
        print(f"charrnn bench quantize: {exc}", file=sys.stderr)
        return 2
    load = os.getloadavg()
    rows = run(args.model, args.batch, args.seconds, args.rounds, args.threads)
    print(
        f"{args.model}: decode steps (T=1), {args.threads} ONNX Runtime thread(s), median of {args.rounds} "
        f"interleaved {args.seconds:g}-second runs; load average {load[0]:.2f} at start, "
        f"{os.getloadavg()[0]:.2f} at end"
    )
    print(table(rows))
    print()
    print(kernel_table())
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        report = {
            "model": str(args.model),
            "threads": args.threads,
            "seconds": args.seconds,
            "rounds": args.rounds,
            "load_average_start": load[0],
            "load_average_end": os.getloadavg()[0],
            "rows": [dataclasses.asdict(r) for r in rows],
        }
        (args.out / "bench-quantize.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0
