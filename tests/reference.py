"""An ONNX stepper independent of the server's code path, for tests that compare against "a reference".

A bare `onnxruntime.InferenceSession` with default options, fed by the tensor names the manifest
records, read from the JSON directly: it shares no code with `charrnn.engine` (which the server, export's
parity check and the training side's sampler all use), so a bug there cannot hide in both sides.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

States = tuple[np.ndarray, ...]


class PlainOnnxStepper:
    """step(tokens [1, T] int64, state or None) -> (logits [1, T, V], state), one call per step."""

    def __init__(self, model_dir: Path):
        manifest = json.loads((model_dir / "manifest.json").read_text(encoding="utf-8"))
        onnx = manifest["onnx"]
        self.session = ort.InferenceSession(str(model_dir / onnx["file"]), providers=["CPUExecutionProvider"])
        self.tokens = onnx["tokens"]["name"]
        self.logits = onnx["logits"]["name"]
        self.state_names = [(s["input"], s["output"]) for s in onnx["states"]]
        self.kinds = [s["kind"] for s in onnx["states"]]
        self.chars: list[str] = manifest["vocabulary"]["chars"]
        self.layers, self.hidden = manifest["model"]["layers"], manifest["model"]["hidden_size"]

    def encode(self, text: str) -> np.ndarray:
        return np.array([[self.chars.index(ch) for ch in text]], np.int64)

    def step(self, tokens: np.ndarray, state: States | None) -> tuple[np.ndarray, States]:
        if state is None:
            state = tuple(np.zeros((self.layers, 1, self.hidden), np.float32) for _ in self.state_names)
        feed = {self.tokens: tokens} | {name: s for (name, _), s in zip(self.state_names, state, strict=True)}
        outputs = self.session.run([self.logits, *(out for _, out in self.state_names)], feed)
        return outputs[0], tuple(outputs[1:])

    def greedy(self, prompt: str, n: int) -> str:
        """Feed `prompt`, then take the most likely character `n` times."""
        logits, state = self.step(self.encode(prompt), None)
        out = []
        for _ in range(n):
            token = int(np.argmax(logits[0, -1]))
            out.append(self.chars[token])
            logits, state = self.step(np.array([[token]], np.int64), state)
        return "".join(out)
