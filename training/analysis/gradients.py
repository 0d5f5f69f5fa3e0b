"""`charrnn analyze gradients`: how far back the loss reaches, and what happens when it explodes.

For the loss at the last step T of a window, ‖∂L_T/∂h_{T−k}‖ (top layer) against k, on
unrolled cells that share the model's weights. Untrained twins of every cell (same sizes,
fresh initialisation) show the cells' built-in behaviour; trained models show what training
did. Scaling a tanh RNN's recurrent weights up is the lecture's "multiply by 3 again and
again": the backward pass multiplies by W_hh at every step, so its largest singular value
decides between vanishing and exploding; norm clipping then caps the update's length.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training.analysis.heldout import DEFAULT_MAX_CHARS, heldout_documents
from training.analysis.render import pyplot
from training.analysis.unroll import unroll
from training.analysis.weights import LoadedModel
from training.config import ModelConfig
from training.model import CharRNN

CELLS = ("rnn", "lstm", "gru")
SCALES = (1.0, 2.0, 3.0, 4.0)  # recurrent weight multipliers for the tanh RNN
WARMUP = 50  # characters read (without gradients) before each window, so the state is not zero
STREAMS = 8  # windows per model; the curve is their median
CLIP = 1.0
LR = 0.1  # the plain SGD step used to show what clipping does to an update


@dataclass(frozen=True)
class Curve:
    label: str
    cell: str
    trained: bool
    scale: float
    norms: list[float]  # norms[k] = median over windows of ‖∂L_T/∂h_{T−k}‖


@dataclass(frozen=True)
class ClipRow:
    scale: float
    grad_norm: float  # global norm of the full parameter gradient of the window's mean loss
    loss: float
    loss_after_raw: float  # after one SGD step (lr LR) with the raw gradient
    loss_after_clipped: float  # ... with the gradient clipped to norm CLIP


@dataclass
class GradientsReport:
    model: str
    steps: int
    curves: list[Curve] = field(default_factory=list)
    clipping: list[ClipRow] = field(default_factory=list)


def twin(config: ModelConfig, cell: str, vocab_size: int, seed: int = 0) -> CharRNN:
    """A fresh, untrained model of the same size with another cell."""
    torch.manual_seed(seed)
    fresh = ModelConfig(**{**config.__dict__, "cell": cell, "dropout": 0.0, "tie_weights": False})
    return CharRNN(fresh, vocab_size).eval()


def scaled(model: CharRNN, factor: float) -> CharRNN:
    """A copy of `model` with every recurrent matrix W_hh multiplied by `factor`."""
    copy = CharRNN(model.config, model.vocab_size)
    copy.load_state_dict(model.state_dict())
    with torch.no_grad():
        for name, param in copy.rnn.named_parameters():
            if name.startswith("weight_hh"):
                param.mul_(factor)
    return copy.eval()


def windows(ids: np.ndarray, steps: int, streams: int = STREAMS) -> torch.Tensor:
    """`streams` windows of WARMUP + steps + 1 characters, spread evenly over the text."""
    length = WARMUP + steps + 1
    if ids.size < length:
        raise ValueError(f"the text has {ids.size} characters; {length} are needed for {steps} steps")
    starts = np.linspace(0, ids.size - length, streams).astype(np.int64)
    return torch.from_numpy(np.stack([ids[s : s + length] for s in starts]).astype(np.int64))


def gradient_norms(model: CharRNN, batch: torch.Tensor) -> list[float]:
    """Median over windows of ‖∂L_T/∂h_{T−k}‖ for k = 0..steps-1, top layer."""
    with torch.no_grad():
        _, state = model(batch[:, :WARMUP])
    tokens, target = batch[:, WARMUP:-1], batch[:, -1]
    trace = unroll(model, tokens, state)
    assert trace.logits is not None
    loss = F.cross_entropy(trace.logits[:, -1], target, reduction="sum")  # rows are independent
    steps = trace.steps[-1]
    grads = torch.autograd.grad(loss, steps, allow_unused=True)
    norms = [g.norm(dim=-1).median().item() if g is not None else 0.0 for g in grads]
    return norms[::-1]  # index k = distance from the last step


def clipping_row(model: CharRNN, batch: torch.Tensor, factor: float) -> ClipRow:
    """The full-gradient norm of a scaled model and the loss after one raw or clipped SGD step."""

    def window_loss(m: CharRNN) -> torch.Tensor:
        logits, _ = m(batch[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))

    def loss_after(step_scale: float, grads: list[torch.Tensor]) -> float:
        moved = scaled(model, factor)
        with torch.no_grad():
            for p, g in zip(moved.parameters(), grads, strict=True):
                p.sub_(LR * step_scale * g)
            value = float(window_loss(moved))
        return value if math.isfinite(value) else float("inf")

    base = scaled(model, factor)
    loss = window_loss(base)
    grads = list(torch.autograd.grad(loss, list(base.parameters())))
    norm = float(torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in grads])))
    return ClipRow(
        scale=factor,
        grad_norm=round(norm, 4),
        loss=round(float(loss.detach()), 4),
        loss_after_raw=round(loss_after(1.0, grads), 4),
        loss_after_clipped=round(loss_after(min(1.0, CLIP / max(norm, 1e-12)), grads), 4),
    )


def analyze_gradients(
    loaded: LoadedModel,
    out: Path,
    extra: list[LoadedModel] | None = None,
    texts: list[Path] | None = None,
    max_chars: int = DEFAULT_MAX_CHARS,
    steps: int = 120,
) -> GradientsReport:
    text = "\n".join(heldout_documents(loaded, texts, max_chars))
    ids, _ = loaded.vocab.encode_lossy(text)
    batch = windows(ids, steps)
    report = GradientsReport(loaded.describe(), steps)
    for trained in [loaded, *(extra or [])]:
        if trained.vocab != loaded.vocab:
            raise ValueError(f"{trained.source} has another vocabulary than {loaded.source}")
        report.curves.append(
            Curve(f"{trained.describe()} trained", trained.cell, True, 1.0, gradient_norms(trained.model, batch))
        )
    config, vocab_size = loaded.model.config, loaded.model.vocab_size
    for cell in CELLS:
        model = twin(config, cell, vocab_size)
        report.curves.append(Curve(f"{cell} untrained", cell, False, 1.0, gradient_norms(model, batch)))
    rnn = twin(config, "rnn", vocab_size)
    for factor in SCALES[1:]:
        curve = gradient_norms(scaled(rnn, factor), batch)
        report.curves.append(Curve(f"rnn untrained, W_hh x{factor:g}", "rnn", False, factor, curve))
    report.clipping = [clipping_row(rnn, batch, factor) for factor in SCALES]
    out.mkdir(parents=True, exist_ok=True)
    (out / "gradients.json").write_text(json.dumps(asdict(report)) + "\n", encoding="utf-8")
    (out / "gradients.md").write_text(markdown(report), encoding="utf-8")
    plot_gradients(report, out / "gradients.png")
    return report


def _at(norms: list[float], k: int) -> float:
    return norms[min(k, len(norms) - 1)]


def markdown(report: GradientsReport) -> str:
    ks = [k for k in (0, 10, 30, 60, 100) if k < report.steps] + [report.steps - 1]
    head = " | ".join(f"k={k}" for k in dict.fromkeys(ks))
    lines = [
        f"Model {report.model}. ‖∂L_T/∂h_(T−k)‖ of the top layer, median over {STREAMS} held-out windows.",
        "",
        f"| model | {head} | k={ks[-1]} / k=0 |",
        "|---|" + "---|" * (len(dict.fromkeys(ks)) + 1),
    ]
    for c in report.curves:
        values = " | ".join(f"{_at(c.norms, k):.2e}" for k in dict.fromkeys(ks))
        ratio = _at(c.norms, ks[-1]) / c.norms[0] if c.norms[0] else float("nan")
        lines.append(f"| {c.label} | {values} | {ratio:.1e} |")
    lines += [
        "",
        f"Exploding gradients and norm clipping (tanh RNN, untrained; one SGD step, lr {LR}, clip {CLIP}):",
        "",
        "| W_hh scale | gradient norm | update norm raw / clipped | loss | after raw step | after clipped step |",
        "|---|---|---|---|---|---|",
    ]
    for r in report.clipping:
        update = f"{LR * r.grad_norm:.3g} / {LR * min(r.grad_norm, CLIP):.3g}"
        lines.append(
            f"| x{r.scale:g} | {r.grad_norm:.3g} | {update} | {r.loss:.3f} | {r.loss_after_raw:.3f} "
            f"| {r.loss_after_clipped:.3f} |"
        )
    return "\n".join(lines) + "\n"


def plot_gradients(report: GradientsReport, path: Path) -> Path:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=90)
    colours = {"rnn": "tab:red", "lstm": "tab:blue", "gru": "tab:green"}
    for c in report.curves:
        ax = left if c.scale == 1.0 else right
        style = "-" if c.trained else "--"
        ax.semilogy(
            range(len(c.norms)),
            np.maximum(c.norms, 1e-30),
            style,
            color=colours[c.cell] if c.scale == 1.0 else None,
            label=c.label,
        )
    for c in (c for c in report.curves if c.cell == "rnn" and not c.trained and c.scale == 1.0):
        right.semilogy(range(len(c.norms)), np.maximum(c.norms, 1e-30), "--", color="black", label="rnn untrained, x1")
    left.set_title("trained (solid) and untrained (dashed)")
    right.set_title("tanh RNN with W_hh scaled up")
    for ax in (left, right):
        ax.set_xlabel("k (steps back from T)")
        ax.set_ylabel("‖∂L_T / ∂h_(T−k)‖")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
