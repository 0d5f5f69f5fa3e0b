"""The int8 graph: the fp32 model's weights, rebuilt step by step in ONNX ops, quantized per row.

Why per row. ONNX Runtime's own dynamic quantization (`quantize_dynamic`: DynamicQuantizeLSTM,
DynamicQuantizeLinear + MatMulInteger) picks one activation scale for the whole batch, so a
row's logits depend on the rows beside it, and a seeded stream would change with the traffic
around it. Here each activation row gets its own scale (max |x| / 127 by ReduceMax over the
feature axis, QuantizeLinear along the row axis), weights are int8 with one scale per output
column, and products are summed exactly in int32 (MatMulIntegerToFloat), so every number a row
sees is computed from that row alone: the graph is batch invariant by construction.

Layout, with exactly the I/O contract of the fp32 graph (tokens [B, T] int64 and states
[L, B, H] in; logits [B, T, V] and states out; the same names):
- layer 0's input projection (embedding x W_ih + biases) is a float32 table with one row per
  vocabulary entry, looked up with Gather: exact, and no matmul at run time;
- per step and layer, one int8 matmul of the layer's [input, h] (layer 0: h alone), then the
  cell's gates in float32 (the LSTM cell state c is never quantized);
- the head, quantized the same way, ends each step;
- the first step is unrolled in the main graph, so a decode step (T = 1) runs no control flow;
  the other T - 1 steps run in a Loop over the same step.

Activations are uint8 with zero point 128 (values 1..255, symmetric) because ONNX Runtime's
x86 kernels are fast for uint8 x int8 and fall back to scalar code for int8 x int8.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from charrnn.artifact import Manifest

METHOD = "int8-per-row-dynamic"  # recorded in the manifest's quantization.method
OPSET = 17
IR_VERSION = 8  # what the fp32 exporter writes: every supported ONNX Runtime reads it
MS_DOMAIN = "com.microsoft"  # MatMulIntegerToFloat: an ONNX Runtime operator in every build
# Floor of a row's max |x|, so an all-zero row (the start-of-text state) gets a finite scale.
MIN_ROW_MAX = 1e-30
ACTIVATION_ZERO_POINT = 128


class QuantizeError(Exception):
    """The source artifact cannot be quantized; the message says why."""


@dataclass(frozen=True)
class Layer:
    """One recurrent layer in the pre-activation layout its cell's gates read (see _layout)."""

    w_x: np.ndarray  # [N, input] applied to the layer's input
    w_h: np.ndarray  # [N, H] applied to its previous h
    bias: np.ndarray  # [N]


@dataclass(frozen=True)
class FloatWeights:
    cell: str
    embedding: np.ndarray  # [V, E]; the identity for a one-hot model
    layers: list[Layer]
    head_w: np.ndarray  # [V, H]
    head_b: np.ndarray  # [V]

    @property
    def hidden(self) -> int:
        return self.layers[0].w_h.shape[1]


def _layout(cell: str, w_ih: np.ndarray, w_hh: np.ndarray, b_ih: np.ndarray, b_hh: np.ndarray) -> Layer:
    """Torch's gate blocks rearranged so each cell's float epilogue reads contiguous slices.

    LSTM: [i, f, o, g] (torch: i, f, g, o), so one Sigmoid covers the first 3H columns.
    GRU: [r, z, n_x, n_h]: the candidate needs x W_n and h R_n apart (n = tanh(x W_n + r * h R_n));
    the zero blocks cost layer 0 a quarter more int8 work, and keep one layout for all layers.
    RNN: [h].
    """
    h = w_hh.shape[1]

    def blocks(a: np.ndarray) -> list[np.ndarray]:
        return [a[k * h : (k + 1) * h] for k in range(a.shape[0] // h)]

    if cell == "lstm":
        (xi, xf, xg, xo), (hi, hf, hg, ho) = blocks(w_ih), blocks(w_hh)
        (bi, bf, bg, bo) = blocks(b_ih + b_hh)
        return Layer(
            np.concatenate([xi, xf, xo, xg]), np.concatenate([hi, hf, ho, hg]), np.concatenate([bi, bf, bo, bg])
        )
    if cell == "gru":
        (xr, xz, xn), (hr, hz, hn) = blocks(w_ih), blocks(w_hh)
        (bir, biz, bin_), (bhr, bhz, bhn) = blocks(b_ih), blocks(b_hh)
        zx, zh = np.zeros_like(xn), np.zeros_like(hn)
        return Layer(
            np.concatenate([xr, xz, xn, zx]),
            np.concatenate([hr, hz, zh, hn]),
            np.concatenate([bir + bhr, biz + bhz, bin_, bhn]),
        )
    return Layer(w_ih, w_hh, b_ih + b_hh)


def read_weights(onnx_path: str, manifest: Manifest) -> FloatWeights:
    """The fp32 weights of an exported artifact (the same reader `charrnn analyze` rebuilds models with)."""
    from training.analysis.weights import WeightsError, _state_dict_from_onnx

    m = manifest.model
    try:
        state = _state_dict_from_onnx(onnx.load(onnx_path).graph, m.cell, m.layers, m.embedding_size > 0)
    except WeightsError as exc:
        raise QuantizeError(f"{onnx_path} is not laid out as `charrnn export` writes it: {exc}") from exc
    embedding = state.get("embedding.weight", np.eye(m.vocab_size, dtype=np.float32))
    layers = [
        _layout(m.cell, *(state[f"rnn.{name}_l{k}"] for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")))
        for k in range(m.layers)
    ]
    return FloatWeights(m.cell, embedding, layers, state["head.weight"], state["head.bias"])


def quantize_columns(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """w [N, K] float -> (int8 [K, N] for MatMulInteger's B, float32 scale [N]): symmetric per output column."""
    scale = np.abs(w).max(axis=1) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    return np.ascontiguousarray(q.T), scale


class _Graph:
    """Collects nodes and initializers with unique names; one per ONNX graph or subgraph."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def const(self, value: np.ndarray | list[int] | float, hint: str = "const", dtype: Any = None) -> str:
        name = self._name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], *, outputs: int = 1, domain: str = "", **attrs: Any) -> Any:
        """Append a node; returns its output name, or a list of names when `outputs` > 1."""
        names = [self._name(op_type) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, domain=domain or None, **attrs))
        return names[0] if outputs == 1 else names


@dataclass(frozen=True)
class _QuantLinear:
    """x @ w.T (+ bias) through int8: the weight's initializer names in the main graph."""

    weight: str  # int8 [K, N]
    col_scale: str  # float32 [N]
    bias: str | None  # float32 [N]


def _quant_linear(main: _Graph, w: np.ndarray, bias: np.ndarray | None, hint: str) -> _QuantLinear:
    q, scale = quantize_columns(w)
    b = main.const(bias.astype(np.float32), f"{hint}_bias") if bias is not None else None
    return _QuantLinear(main.const(q, f"{hint}_int8"), main.const(scale, f"{hint}_scale"), b)


def _apply(g: _Graph, x: str, lin: _QuantLinear, zero_point: str, k: dict[str, str]) -> str:
    """x [R, K] float -> [R, N]: a per-row scale, uint8 row quantization, exact int32 products, rescale."""
    row_max = g.op("Max", [g.op("ReduceMax", [g.op("Abs", [x])], axes=[1], keepdims=0), k["min_row_max"]])
    row_scale = g.op("Mul", [row_max, k["inv127"]])  # [R]
    qx = g.op("QuantizeLinear", [x, row_scale, zero_point], axis=0)
    acc = g.op("MatMulIntegerToFloat", [qx, lin.weight, k["one"], lin.col_scale, k["zp"]], domain=MS_DOMAIN)
    y = g.op("Mul", [acc, g.op("Unsqueeze", [row_scale, k["axis1"]])])
    return g.op("Add", [y, lin.bias]) if lin.bias is not None else y


def _lstm_gates(g: _Graph, pre: str, h: str, c: str, k: dict[str, str]) -> tuple[str, str]:
    sig, cand = g.op("Split", [pre, k["split_3h_h"]], outputs=2, axis=1)
    i, f, o = g.op("Split", [g.op("Sigmoid", [sig]), k["split_h_h_h"]], outputs=3, axis=1)
    c_new = g.op("Add", [g.op("Mul", [f, c]), g.op("Mul", [i, g.op("Tanh", [cand])])])
    return g.op("Mul", [o, g.op("Tanh", [c_new])]), c_new


def _gru_gates(g: _Graph, pre: str, h: str, c: str, k: dict[str, str]) -> tuple[str, str]:
    rz, xn, hn = g.op("Split", [pre, k["split_2h_h_h"]], outputs=3, axis=1)
    r, z = g.op("Split", [g.op("Sigmoid", [rz]), k["split_h_h"]], outputs=2, axis=1)
    n = g.op("Tanh", [g.op("Add", [xn, g.op("Mul", [r, hn])])])
    return g.op("Add", [n, g.op("Mul", [z, g.op("Sub", [h, n])])]), ""  # (1 - z) n + z h


def _rnn_gates(g: _Graph, pre: str, h: str, c: str, k: dict[str, str]) -> tuple[str, str]:
    return g.op("Tanh", [pre]), ""


# (graph, pre-activation [B, N], h, c, constants) -> (new h, new c or "" for cells without c)
_CELL_GATES: dict[str, Callable[[_Graph, str, str, str, dict[str, str]], tuple[str, str]]] = {
    "lstm": _lstm_gates,
    "gru": _gru_gates,
    "rnn": _rnn_gates,
}


class _Int8Graph:
    """Builds the model: weights and shared constants live in the main graph, and the Loop body
    reads them from there (ONNX outer scope), so the unrolled first step and the Loop share them."""

    def __init__(self, weights: FloatWeights, manifest: Manifest):
        self.cell, self.layers, self.hidden = weights.cell, len(weights.layers), weights.hidden
        self.vocab = weights.head_w.shape[0]
        self.io = manifest.onnx
        self.lstm = self.cell == "lstm"
        self.main = g = _Graph("")
        h = self.hidden
        i64 = np.int64
        self.k = {
            "min_row_max": g.const(MIN_ROW_MAX, "min_row_max", np.float32),
            "inv127": g.const(1 / 127, "inv127", np.float32),
            "one": g.const(1.0, "one", np.float32),
            "zp": g.const(ACTIVATION_ZERO_POINT, "zp", np.uint8),
            "step1": g.const(1, "step1", i64),  # a scalar: one time step
            "axis0": g.const([0], "axis0", i64),
            "axis1": g.const([1], "axis1", i64),
            "split_3h_h": g.const([3 * h, h], "split", i64),
            "split_h_h_h": g.const([h] * 3, "split", i64),
            "split_2h_h_h": g.const([2 * h, h, h], "split", i64),
            "split_h_h": g.const([h] * 2, "split", i64),
        }
        first = weights.layers[0]
        table = (weights.embedding @ first.w_x.T + first.bias).astype(np.float32)  # [V, N]: layer 0's input part
        self.recurrent = [_quant_linear(g, first.w_h, None, "l0_hh")]
        for n, layer in enumerate(weights.layers[1:], start=1):
            joint = np.concatenate([layer.w_x, layer.w_h], axis=1)
            self.recurrent.append(_quant_linear(g, joint, layer.bias, f"l{n}"))
        self.head = _quant_linear(g, weights.head_w, weights.head_b, "head")
        self.gates = _CELL_GATES[self.cell]
        shape = g.op("Shape", [self.io.tokens.name])
        zero_point = numpy_helper.from_array(np.array([ACTIVATION_ZERO_POINT], np.uint8))
        # [B] uint8: QuantizeLinear along the row axis takes one zero point per row.
        self.row_zero_point = g.op("ConstantOfShape", [g.op("Slice", [shape, self.k["axis0"], self.k["axis1"]])],
                                   value=zero_point)  # fmt: skip
        self.steps = g.op(
            "Squeeze", [g.op("Slice", [shape, self.k["axis1"], g.const([2], "two", i64)]), self.k["axis0"]]
        )
        self.inputs = g.op("Gather", [g.const(table, "l0_input_table"), self.io.tokens.name])  # [B, T, N]

    def step(self, g: _Graph, t: str, h: list[str], c: list[str]) -> tuple[list[str], list[str], str]:
        """Time step `t` of every layer and the head: per-layer (h, c) -> new (h, c), logits [B, V]."""
        k, zp = self.k, self.row_zero_point
        new_h: list[str] = []
        new_c: list[str] = []
        for n in range(self.layers):
            if n == 0:
                x_part = g.op("Gather", [self.inputs, t], axis=1)  # [B, N]
                pre = g.op("Add", [x_part, _apply(g, h[0], self.recurrent[0], zp, k)])
            else:
                pre = _apply(g, g.op("Concat", [new_h[-1], h[n]], axis=1), self.recurrent[n], zp, k)
            hn, cn = self.gates(g, pre, h[n], c[n], k)
            new_h.append(hn)
            new_c.append(cn)
        return new_h, new_c, _apply(g, new_h[-1], self.head, zp, k)

    def loop_body(self) -> onnx.GraphProto:
        """Steps 1 .. T-1: the states are carried, each step's logits are the scan output."""
        body = _Graph("loop/")
        h = [f"loop/h{n}" for n in range(self.layers)]
        c = [f"loop/c{n}" for n in range(self.layers)] if self.lstm else [""] * self.layers
        t = body.op("Add", ["loop/iter", self.k["step1"]])
        new_h, new_c, logits = self.step(body, t, h, c)
        carried = h + (c if self.lstm else [])
        outs = [body.op("Identity", [v]) for v in ["loop/cond", *new_h, *(new_c if self.lstm else []), logits]]
        state: list[str | int] = ["batch", self.hidden]
        return helper.make_graph(
            body.nodes,
            "step",
            [helper.make_tensor_value_info("loop/iter", TensorProto.INT64, []),
             helper.make_tensor_value_info("loop/cond", TensorProto.BOOL, []),
             *(helper.make_tensor_value_info(v, TensorProto.FLOAT, state) for v in carried)],
            [helper.make_tensor_value_info(outs[0], TensorProto.BOOL, []),
             *(helper.make_tensor_value_info(v, TensorProto.FLOAT, state) for v in outs[1:-1]),
             helper.make_tensor_value_info(outs[-1], TensorProto.FLOAT, ["batch", self.vocab])],
        )  # fmt: skip

    def _per_layer(self, name: str) -> list[str]:
        """[L, B, H] -> L tensors [B, H]."""
        g, layers = self.main, self.layers
        parts = g.op("Split", [name, g.const([1] * layers, "ones", np.int64)], outputs=layers, axis=0)
        return [g.op("Squeeze", [p, self.k["axis0"]]) for p in (parts if layers > 1 else [parts])]

    def build(self) -> onnx.ModelProto:
        g, k, io, layers = self.main, self.k, self.io, self.layers
        h0 = self._per_layer(io.states[0].input)
        c0 = self._per_layer(io.states[1].input) if self.lstm else [""] * layers
        h1, c1, logits1 = self.step(g, g.const(0, "t0", np.int64), h0, c0)
        first = h1 + (c1 if self.lstm else [])
        rest = g.op("Sub", [self.steps, k["step1"]])
        loop = g.op("Loop", [rest, "", *first], outputs=len(first) + 1, body=self.loop_body())
        later = g.op("Transpose", [loop[-1]], perm=[1, 0, 2])  # [T-1, B, V] -> [B, T-1, V]
        g.nodes.append(
            helper.make_node("Concat", [g.op("Unsqueeze", [logits1, k["axis1"]]), later], [io.logits.name], axis=1)
        )
        finals = [loop[:layers]] + ([loop[layers : 2 * layers]] if self.lstm else [])
        for spec, per_layer in zip(io.states, finals, strict=True):
            g.nodes.append(
                helper.make_node(
                    "Concat", [g.op("Unsqueeze", [v, k["axis0"]]) for v in per_layer], [spec.output], axis=0
                )
            )
        state_shape: list[int | str] = [layers, "batch", self.hidden]
        graph = helper.make_graph(
            g.nodes,
            "charrnn_int8",
            [helper.make_tensor_value_info(io.tokens.name, TensorProto.INT64, ["batch", "time"]),
             *(helper.make_tensor_value_info(s.input, TensorProto.FLOAT, state_shape) for s in io.states)],
            [helper.make_tensor_value_info(io.logits.name, TensorProto.FLOAT, ["batch", "time", self.vocab]),
             *(helper.make_tensor_value_info(s.output, TensorProto.FLOAT, state_shape) for s in io.states)],
            g.initializers,
        )  # fmt: skip
        opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="charrnn")
        model.ir_version = IR_VERSION
        return model


def build_int8_graph(weights: FloatWeights, manifest: Manifest) -> onnx.ModelProto:
    """The int8 ONNX model of `weights`, with the I/O names of `manifest` (the fp32 artifact's)."""
    return _Int8Graph(weights, manifest).build()
