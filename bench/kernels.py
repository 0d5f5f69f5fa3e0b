"""`charrnn bench train-kernels`: training-step time with oneDNN (mkldnn) kernels on and off.

The `run.mkldnn=on` default is chosen from this table: one optimiser step (forward,
backward, AdamW) per cell type, each configuration timed in the same run, reported with the
ratio off/on so the choice survives this machine's run-to-run drift.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from training.config import ModelConfig
from training.model import CharRNN

VOCAB = 100


def time_step(cell: str, layers: int, hidden: int, batch: int, seq_len: int, mkldnn: bool, repeats: int) -> float:
    """Median seconds per training step."""
    torch.backends.mkldnn.enabled = mkldnn  # type: ignore[assignment]
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(cell=cell, layers=layers, hidden_size=hidden, embedding_size=64), VOCAB)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, VOCAB, (batch, seq_len))
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        logits, _ = model(tokens)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), tokens.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i:  # the first step warms up kernels and allocations
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(layers: int, hidden: int, batches: list[int], seq_len: int, repeats: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for cell in ("rnn", "lstm", "gru"):
        for batch in batches:
            off = time_step(cell, layers, hidden, batch, seq_len, False, repeats)
            on = time_step(cell, layers, hidden, batch, seq_len, True, repeats)
            rows.append(
                {
                    "cell": cell,
                    "batch": batch,
                    "off_ms": round(off * 1e3, 1),
                    "on_ms": round(on * 1e3, 1),
                    "off/on": round(off / on, 2),
                    "kchars/s (best)": round(batch * seq_len / min(on, off) / 1e3, 1),
                    "faster": "on" if on < off else "off",
                }
            )
            print(" | ".join(str(v) for v in rows[-1].values()), flush=True)
    return rows
