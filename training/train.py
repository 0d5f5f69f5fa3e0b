"""The training loop: truncated BPTT, AdamW with warm-up and cosine decay, clipping, evaluation,
fixed-seed samples, checkpoints that can resume exactly, a metrics log and loss curves.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from charrnn.vocab import Vocabulary
from training.config import TrainingConfig
from training.data import BpttBatches, Dataset, eval_streams, prepare
from training.model import CharRNN, State, detach_state
from training.progress import Progress
from training.sample import ReferenceSampling, TorchStepper, generate

log = logging.getLogger(__name__)

LN2 = math.log(2.0)
CHECKPOINT_FORMAT = 1
EVAL_STREAMS = 32
EVAL_SEQ_LEN = 256


def lr_at(step: int, config: TrainingConfig, time_fraction: float = 0.0) -> float:
    """Linear warm-up to the peak, then cosine decay to lr * min_lr_ratio at the end of the run.

    The end is max_steps, or the wall-clock budget when that comes first: `time_fraction`
    (elapsed / budget) advances the decay too, so a budget-bound run still anneals.
    """
    o = config.optim
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    span = max(1, o.max_steps - o.warmup_steps)
    progress = min(1.0, max((step - o.warmup_steps) / span, time_fraction))
    floor = o.lr * o.min_lr_ratio
    return floor + 0.5 * (o.lr - floor) * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: CharRNN, config: TrainingConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not biases or the embedding), as nanoGPT does."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        (decay if param.dim() >= 2 and "embedding" not in name else no_decay).append(param)
    o = config.optim
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2))


@torch.no_grad()
def evaluate(model: CharRNN, ids: np.ndarray, max_chars: int = 0) -> float:
    """Mean validation loss in nats over the whole split, carrying the state through it."""
    was_training = model.training
    model.eval()
    if max_chars and ids.size > max_chars:
        ids = ids[:max_chars]
    state: State | None = None
    total, count = 0.0, 0
    for x, y in eval_streams(ids, EVAL_STREAMS, EVAL_SEQ_LEN):
        logits, state = model(torch.from_numpy(x), state)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.from_numpy(y).reshape(-1), reduction="sum")
        total += float(loss)
        count += y.size
    model.train(was_training)
    return total / max(1, count)


def clip_gradients(model: CharRNN, config: TrainingConfig) -> tuple[float, bool]:
    """Returns the pre-clip global gradient norm and whether clipping changed the gradients."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = float(torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]))
    o = config.optim
    if o.clip_mode == "norm":
        clipped = norm > o.clip
        torch.nn.utils.clip_grads_with_norm_(params, o.clip, torch.tensor(norm))
    elif o.clip_mode == "value":
        clipped = any(bool((p.grad.abs() > o.clip).any()) for p in params if p.grad is not None)
        torch.nn.utils.clip_grad_value_(params, o.clip)
    else:
        clipped = False
    return norm, clipped


@dataclass
class TrainResult:
    out_dir: Path
    best_checkpoint: Path
    steps: int
    best_val_loss: float
    wall_time_s: float

    @property
    def best_val_bpc(self) -> float:
        return self.best_val_loss / LN2


def _rng_state() -> dict[str, Any]:
    np_state: tuple[Any, ...] = np.random.get_state(legacy=True)  # type: ignore[assignment]
    return {
        "torch": torch.get_rng_state(),
        "python": json.dumps(random.getstate()),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2])},
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    np.random.set_state(("MT19937", state["numpy"]["keys"].numpy().astype(np.uint32), state["numpy"]["pos"], 0, 0.0))


def save_checkpoint(path: Path, **payload: Any) -> None:
    """Only tensors, numbers, strings, lists and dicts: loadable with weights_only=True (no code runs)."""
    tmp = path.with_suffix(".tmp")
    torch.save({"format": CHECKPOINT_FORMAT, **payload}, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    if data.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a charrnn checkpoint (format {data.get('format')!r})")
    return data


def model_from_checkpoint(data: dict[str, Any]) -> tuple[CharRNN, Vocabulary, TrainingConfig]:
    config = TrainingConfig.from_dict(data["config"])
    vocab = Vocabulary(tuple(data["vocab"]["chars"]), data["vocab"]["unknown_policy"], data["vocab"]["unknown_char"])
    model = CharRNN(config.model, len(vocab))
    model.load_state_dict(data["model"])
    model.eval()
    return model, vocab, config


class Trainer:
    """One run: owns the model, optimiser, data, logs and checkpoints of `config.run.out_dir`."""

    def __init__(self, config: TrainingConfig, dataset: Dataset | None = None, resume: Path | None = None):
        config.validate()
        self.config = config
        self.out_dir = Path(config.run.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.backends.mkldnn.enabled = config.run.mkldnn == "on"  # type: ignore[assignment]
        if config.run.threads:
            torch.set_num_threads(config.run.threads)
        self._seed(config.run.seed)
        self.dataset = dataset or prepare(config.data)
        self.vocab = self.dataset.vocab
        if self.vocab.unknown_char is None and self.vocab.unknown(config.run.sample_prime):
            raise ValueError(f"run.sample_prime has characters outside the vocabulary: {config.run.sample_prime!r}")
        self.model = CharRNN(config.model, len(self.vocab))
        self.optimizer = build_optimizer(self.model, config)
        self.batches = BpttBatches(self.dataset.train_ids, config.optim.batch_size, config.optim.seq_len)
        self.step = 0
        self.best_val = math.inf
        self.evals_without_gain = 0
        self.elapsed = 0.0  # training wall time so far, across resumes
        self.clipped_steps = 0
        self.state: State = self.model.initial_state(config.optim.batch_size)
        if resume is not None:
            self._restore(load_checkpoint(resume))
        self.vocab.save(self.out_dir / "vocab.json")
        config.save(self.out_dir / "config.json")

    @staticmethod
    def _seed(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _restore(self, data: dict[str, Any]) -> None:
        saved = TrainingConfig.from_dict(data["config"])
        if saved.model != self.config.model:
            raise ValueError("the checkpoint's model config differs from this run's; resume with the same model")
        if data["corpus"]["sha256"] != self.dataset.corpus.sha256:
            raise ValueError("the checkpoint was trained on a different corpus (sha256 mismatch)")
        self.model.load_state_dict(data["model"])
        self.optimizer.load_state_dict(data["optimizer"])
        self.step = int(data["step"])
        self.best_val = float(data["best_val_loss"])
        self.evals_without_gain = int(data["evals_without_gain"])
        self.elapsed = float(data["wall_time_s"])
        self.clipped_steps = int(data["clipped_steps"])
        self.state = tuple(data["carried_state"])
        _set_rng_state(data["rng"])
        log.info("resumed from step %d (best val %.4f nats)", self.step, self.best_val)

    def _checkpoint_payload(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "config": self.config.to_dict(),
            "vocab": {
                "chars": list(self.vocab.chars),
                "unknown_policy": self.vocab.unknown_policy,
                "unknown_char": self.vocab.unknown_char,
            },
            "corpus": self.dataset.corpus.describe(),
            "split": self.dataset.describe_split(),
            "step": self.step,
            "best_val_loss": self.best_val,
            "evals_without_gain": self.evals_without_gain,
            "wall_time_s": self.elapsed,
            "clipped_steps": self.clipped_steps,
            "carried_state": list(self.state),
            "rng": _rng_state(),
            "torch_version": str(torch.__version__),
        }

    def _sample(self, log_file: Path) -> None:
        r = self.config.run
        was_training = self.model.training
        self.model.eval()
        prime = r.sample_prime or "\n"
        text = generate(
            TorchStepper(self.model),
            self.vocab,
            prime,
            r.sample_chars,
            ReferenceSampling(temperature=0.8, seed=r.sample_seed),
        )
        self.model.train(was_training)
        with open(log_file, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": self.step, "prime": prime, "text": text}, ensure_ascii=False) + "\n")

    def _train_step(self) -> tuple[float, float, bool]:
        x, y, starts_epoch = self.batches.window(self.step)
        if starts_epoch:
            self.state = self.model.initial_state(self.config.optim.batch_size)
        budget_s = self.config.optim.max_minutes * 60.0
        lr = lr_at(self.step, self.config, self.elapsed / budget_s if budget_s else 0.0)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        logits, state = self.model(torch.from_numpy(x), self.state)
        self.state = detach_state(state)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.from_numpy(y).reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm, clipped = clip_gradients(self.model, self.config)
        self.optimizer.step()
        self.step += 1
        self.clipped_steps += int(clipped)
        return float(loss.detach()), norm, clipped

    def train(self, stop_at: int | None = None) -> TrainResult:
        """Train to optim.max_steps (or the time budget); `stop_at` pauses earlier, checkpointed,
        so that `--resume` can continue exactly where it left off."""
        c = self.config
        end = min(c.optim.max_steps, stop_at) if stop_at else c.optim.max_steps
        metrics_path = self.out_dir / "metrics.jsonl"
        samples_path = self.out_dir / "samples.jsonl"
        best_path, last_path = self.out_dir / "best.pt", self.out_dir / "last.pt"
        budget_s = c.optim.max_minutes * 60.0
        chars_per_step = c.optim.batch_size * self.batches.seq_len
        self.model.train()
        log.info(
            "training %s %dx%d (%d parameters) on %s: %d train / %d val chars, vocab %d",
            c.model.cell, c.model.layers, c.model.hidden_size, self.model.num_parameters(),
            self.dataset.corpus.name, self.dataset.train_ids.size, self.dataset.val_ids.size, len(self.vocab),
        )  # fmt: skip
        progress = Progress(total=c.optim.max_steps, initial=self.step, enabled=c.run.progress)
        if self.step == 0:  # a fresh run owns its logs; only --resume appends to them
            for path in (metrics_path, samples_path):
                path.unlink(missing_ok=True)
        if self.step == 0 and c.run.sample_interval:
            self._sample(samples_path)
        window_start, window_steps, loss_sum = time.perf_counter(), 0, 0.0
        stop_reason = "max_steps"
        with open(metrics_path, "a", encoding="utf-8") as metrics:
            while self.step < end:
                t0 = time.perf_counter()
                loss, norm, _ = self._train_step()
                self.elapsed += time.perf_counter() - t0
                window_steps += 1
                loss_sum += loss
                now = time.perf_counter()
                chars_per_s = window_steps * chars_per_step / max(1e-9, now - window_start)
                progress.update(self.step, loss=loss, chars_per_s=chars_per_s)
                record: dict[str, Any] = {}
                if self.step % c.run.log_interval == 0:
                    record.update(
                        train_loss=loss_sum / window_steps, grad_norm=norm, lr=self.optimizer.param_groups[0]["lr"],
                        chars_per_s=chars_per_s, clipped_fraction=self.clipped_steps / self.step,
                    )  # fmt: skip
                    window_start, window_steps, loss_sum = now, 0, 0.0
                last = self.step == end or (budget_s and self.elapsed >= budget_s)
                if self.step % c.run.eval_interval == 0 or last:
                    t0 = time.perf_counter()
                    val = evaluate(self.model, self.dataset.val_ids, c.run.eval_max_chars)
                    record.update(val_loss=val, val_bpc=val / LN2)
                    improved = val < self.best_val
                    if improved:
                        self.best_val, self.evals_without_gain = val, 0
                    else:
                        self.evals_without_gain += 1
                    if c.run.sample_interval and self.step % c.run.sample_interval == 0:
                        self._sample(samples_path)
                    self.elapsed += time.perf_counter() - t0
                    payload = self._checkpoint_payload()
                    save_checkpoint(last_path, **payload)
                    if improved:
                        save_checkpoint(best_path, **payload)
                    progress.note(f"step {self.step}: val {val:.4f} nats ({val / LN2:.3f} bits/char)")
                    patience = c.run.early_stop_patience
                    if patience and self.evals_without_gain >= patience:
                        stop_reason = f"early stop: no gain in {patience} evaluations"
                if record:
                    record.update(step=self.step, wall_time_s=round(self.elapsed, 3))
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
                if stop_reason != "max_steps":
                    break
                if budget_s and self.elapsed >= budget_s:
                    stop_reason = f"time budget of {c.optim.max_minutes} minutes reached"
                    break
        progress.close()
        log.info("stopped at step %d (%s); best val %.4f nats", self.step, stop_reason, self.best_val)
        self._plot(metrics_path)
        return TrainResult(self.out_dir, best_path, self.step, self.best_val, self.elapsed)

    def _plot(self, metrics_path: Path) -> None:
        try:
            from training.plots import plot_loss_curves

            plot_loss_curves(metrics_path, self.out_dir / "loss.png")
        except ImportError:  # matplotlib is optional at training time
            log.warning("matplotlib is not installed: no loss.png")
