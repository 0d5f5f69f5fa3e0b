"""The training loop: truncated BPTT, AdamW with warm-up and cosine decay, clipping, evaluation,
fixed-seed samples, checkpoints that can resume exactly, a metrics log and loss curves.

Under torchrun the same loop runs in every process: each trains its share of the batch's streams,
DistributedDataParallel averages the gradients, validation is sharded and its sums reduced, and rank 0
alone writes anything (training/distributed.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import pickle
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from charrnn.vocab import Vocabulary
from training.averaging import WeightAverage
from training.config import TrainingConfig
from training.data import BpttBatches, Dataset, eval_streams
from training.distributed import Distributed, training_device
from training.model import CharRNN, State, detach_state
from training.prepared import load_dataset
from training.progress import Progress
from training.sample import ReferenceSampling, TorchStepper, generate

log = logging.getLogger(__name__)

LN2 = math.log(2.0)
CHECKPOINT_FORMAT = 2  # 2: per-process RNG states and the world size; format 1 is still read
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


def dropout_at(step: int, config: TrainingConfig, time_fraction: float = 0.0) -> float:
    """model.dropout_start moving linearly to model.dropout over the run (by steps, or by the time budget when
    that is further on); model.dropout without a schedule."""
    m = config.model
    if m.dropout_start is None:
        return m.dropout
    fraction = min(1.0, max(step / config.optim.max_steps, time_fraction))
    return m.dropout_start + (m.dropout - m.dropout_start) * fraction


def _native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (else it emulates it, slower than fp32)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def build_optimizer(model: CharRNN, config: TrainingConfig, fused: bool = True) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not biases or the embedding), as nanoGPT does. The fused kernel
    (one pass over each tensor) takes a third of the time of torch's per-tensor loop (`fused=False`) on a CPU."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        (decay if param.dim() >= 2 and "embedding" not in name else no_decay).append(param)
    o = config.optim
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), fused=fused)


@torch.no_grad()
def evaluate(model: CharRNN, ids: np.ndarray, max_chars: int = 0, part: tuple[int, int] = (0, 1)) -> tuple[float, int]:
    """(summed nats, characters scored) over this process' part of the validation split, carrying the
    state through it; the parts' sums add up to the whole split's."""
    was_training = model.training
    model.eval()
    if max_chars and ids.size > max_chars:
        ids = ids[:max_chars]
    device = next(model.parameters()).device
    state: State | None = None
    total, count = 0.0, 0
    for x, y in eval_streams(ids, EVAL_STREAMS, EVAL_SEQ_LEN, part=part):
        logits, state = model(torch.from_numpy(x).to(device), state)
        targets = torch.from_numpy(y).to(device).reshape(-1)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets, reduction="sum")
        total += float(loss)
        count += y.size
    model.train(was_training)
    return total, count


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


def _rng_state(device: torch.device) -> dict[str, Any]:
    np_state: tuple[Any, ...] = np.random.get_state(legacy=True)  # type: ignore[assignment]
    state = {
        "torch": torch.get_rng_state(),
        "python": json.dumps(random.getstate()),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2])},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    np.random.set_state(("MT19937", state["numpy"]["keys"].numpy().astype(np.uint32), state["numpy"]["pos"], 0, 0.0))


def save_checkpoint(path: Path, **payload: Any) -> None:
    """Only tensors, numbers, strings, lists and dicts: loadable with weights_only=True (no code runs)."""
    tmp = path.with_suffix(".tmp")
    torch.save({"format": CHECKPOINT_FORMAT, **payload}, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint at `path`. OSError when it cannot be read (FileNotFoundError when missing),
    ValueError when it is not a charrnn checkpoint (not a torch file, truncated, or another format)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:  # torch's refusals are long; one line
        raise ValueError(f"{path} is not a charrnn checkpoint ({type(exc).__name__})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a charrnn checkpoint (it holds a {type(data).__name__})")
    if data.get("format") == 1:  # one process' RNG state
        data.update(format=CHECKPOINT_FORMAT, rng=[data["rng"]], world_size=1)
    if data.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a charrnn checkpoint (format {data.get('format')!r})")
    return data


def _keep_rows_until(log_path: Path, step: int) -> None:
    """Drop a JSON-lines log's rows after `step`: a run stopped between checkpoints (killed, or a
    failed process) logged steps that its resumed run logs again."""
    if not log_path.exists():
        return
    if step == 0:
        log_path.unlink()
        return
    lines = log_path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if json.loads(line)["step"] <= step]
    if len(kept) < len(lines):
        tmp = log_path.with_suffix(".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        tmp.replace(log_path)


def model_from_checkpoint(data: dict[str, Any]) -> tuple[CharRNN, Vocabulary, TrainingConfig]:
    config = TrainingConfig.from_dict(data["config"])
    vocab = Vocabulary(tuple(data["vocab"]["chars"]), data["vocab"]["unknown_policy"], data["vocab"]["unknown_char"])
    model = CharRNN(config.model, len(vocab))
    model.load_state_dict(data.get("averaged_model", data["model"]))  # what the run evaluated
    model.eval()
    return model, vocab, config


class Trainer:
    """One run: owns the model, optimiser, data, logs and checkpoints of `config.run.out_dir`.

    `dist` places the run in a torchrun job (training/distributed.py); without it the run is one
    process on `run.device`.
    """

    def __init__(
        self,
        config: TrainingConfig,
        dataset: Dataset | None = None,
        resume: Path | None = None,
        dist: Distributed | None = None,
    ):
        config.validate()
        self.config = config
        self.dist = dist or Distributed(device=training_device(config.run))
        self.out_dir = Path(config.run.out_dir)
        torch.backends.mkldnn.enabled = config.run.mkldnn == "on"  # type: ignore[assignment]
        if config.run.precision == "bf16" and self.dist.device.type == "cpu" and not _native_bf16():
            log.warning("run.precision=bf16 on a CPU without native bf16 (AVX-512 BF16 or AMX): slower than fp32")
        if config.run.threads:
            torch.set_num_threads(config.run.threads)
        self._seed(config.run.seed)
        self.dataset = dataset or load_dataset(config.data)
        self.vocab = self.dataset.vocab
        if self.vocab.unknown_char is None and self.vocab.unknown(config.run.sample_prime):
            raise ValueError(f"run.sample_prime has characters outside the vocabulary: {config.run.sample_prime!r}")
        shift_seed = config.run.seed if config.optim.epoch_shift else None
        self.batches = BpttBatches(
            self.dataset.train_ids, config.optim.batch_size, config.optim.seq_len, self.dist.part, shift_seed
        )
        self.model = CharRNN(config.model, len(self.vocab)).to(self.dist.device)
        self.optimizer = build_optimizer(self.model, config)
        ema = config.optim.ema_decay
        self.average = WeightAverage(self.model, ema) if ema else None
        # What the training step calls: DDP averages the gradients over the processes during backward().
        self.forward: nn.Module = self.model
        if self.dist.enabled:
            cuda = self.dist.device.type == "cuda"
            self.forward = DistributedDataParallel(
                self.model, device_ids=[self.dist.device] if cuda else None, forward_sync_buffers=False
            )
            self._seed(config.run.seed + self.dist.rank)  # the same init everywhere, then own dropout masks
        self.step = 0
        self.best_val = math.inf
        self.evals_without_gain = 0
        self.elapsed = 0.0  # training wall time so far, across resumes
        self.clipped_steps = 0
        self.state: State = self.model.initial_state(self.batches.rows, self.dist.device)
        if resume is not None:
            self._restore(load_checkpoint(resume))
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
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
        if saved.optim.batch_size != self.config.optim.batch_size:
            raise ValueError(f"the checkpoint was trained with optim.batch_size={saved.optim.batch_size}: keep it")
        if data["corpus"]["sha256"] != self.dataset.corpus.sha256:
            raise ValueError("the checkpoint was trained on a different corpus (sha256 mismatch)")
        self.model.load_state_dict(data["model"])
        self.optimizer.load_state_dict(data["optimizer"])
        if self.average is not None:
            if "averaged_model" in data:
                self.average.load_state_dict(data["averaged_model"])
            else:
                log.warning("the checkpoint has no averaged weights: the average starts from its weights")
                self.average = WeightAverage(self.model, self.average.decay)
        self.step = int(data["step"])
        self.best_val = float(data["best_val_loss"])
        self.evals_without_gain = int(data["evals_without_gain"])
        self.elapsed = float(data["wall_time_s"])
        self.clipped_steps = int(data["clipped_steps"])
        rows = slice(self.dist.rank * self.batches.rows, (self.dist.rank + 1) * self.batches.rows)
        self.state = tuple(s[:, rows].to(self.dist.device) for s in data["carried_state"])
        saved_world, rngs = int(data["world_size"]), data["rng"]
        if saved_world != self.dist.world_size and self.dist.is_main:
            log.warning(
                "the checkpoint was written by %d processes and this run has %d: the data order is the same "
                "(optim.batch_size streams split over the processes), but the processes' random streams "
                "(dropout) and the order of float reductions change, so this continuation is not the one an "
                "uninterrupted run would have taken", saved_world, self.dist.world_size,
            )  # fmt: skip
        if self.dist.rank < len(rngs):
            _set_rng_state(rngs[self.dist.rank], self.dist.device)
        else:
            self._seed(self.config.run.seed + self.dist.rank + self.step)
        log.info("resumed from step %d (best val %.4f nats)", self.step, self.best_val)

    def _checkpoint_payload(self) -> dict[str, Any]:
        """Called by every process (the carried state and RNG states are gathered); rank 0 saves it."""
        averaged = {} if self.average is None else {"averaged_model": self.average.state_dict()}
        return {
            "model": self.model.state_dict(),  # the trained weights, which a resumed run goes on from
            **averaged,
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
            # All optim.batch_size streams, in order, whatever the number of processes.
            "carried_state": [s.cpu() for s in self.dist.gather_rows(self.state)],
            "rng": self.dist.gather_objects(_rng_state(self.dist.device)),
            "world_size": self.dist.world_size,
            "torch_version": str(torch.__version__),
        }

    def _sample(self, log_file: Path) -> None:
        r = self.config.run
        was_training = self.model.training
        self.model.eval()
        prime = r.sample_prime or "\n"
        with self._scored_weights():
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

    def train_step(self) -> tuple[float, float, bool]:
        """One optimiser step on the next window: (loss, pre-clip gradient norm, clipped). The loop around it
        does the timing, evaluations and checkpoints; `charrnn bench train-options` times this alone."""
        x, y, starts_epoch = self.batches.window(self.step)
        if starts_epoch:
            self.state = self.model.initial_state(self.batches.rows, self.dist.device)
        budget_s = self.config.optim.max_minutes * 60.0
        time_fraction = self.elapsed / budget_s if budget_s else 0.0
        lr = lr_at(self.step, self.config, time_fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.config.model.dropout_start is not None:
            self.model.set_dropout(dropout_at(self.step, self.config, time_fraction))
        device = self.dist.device
        with self._precision():
            logits, state = self.forward(torch.from_numpy(x).to(device), self.state)
        self.state = tuple(s.float() for s in detach_state(state))  # carried (and checkpointed) in fp32
        # The mean over this process' rows; DDP's average over processes makes it the mean over the batch.
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), torch.from_numpy(y).to(device).reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm, clipped = clip_gradients(self.model, self.config)  # gradients are already averaged: global norm
        self.optimizer.step()
        if self.average is not None:
            self.average.update(self.step)
        self.step += 1
        self.clipped_steps += int(clipped)
        return float(loss.detach()), norm, clipped

    def _precision(self) -> contextlib.AbstractContextManager[Any]:
        """The training forward's autocast (run.precision); fp32 runs it as it is."""
        if self.config.run.precision == "bf16":
            return torch.autocast(self.dist.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _scored_weights(self) -> contextlib.AbstractContextManager[Any]:
        """The weights evaluations and samples use, and best.pt exports: the average when optim.ema_decay is set."""
        return self.average.applied() if self.average is not None else contextlib.nullcontext()

    def _add_time(self, seconds: float) -> None:
        """Count wall time; with a budget, every process takes the slowest one's, so all stop together
        and follow the same time-driven learning-rate decay."""
        self.elapsed += seconds
        if self.config.optim.max_minutes:
            self.elapsed = self.dist.max(self.elapsed)

    def _validate(self) -> float:
        with self._scored_weights():
            nats, chars = evaluate(self.model, self.dataset.val_ids, self.config.run.eval_max_chars, self.dist.part)
        total, count = self.dist.sum(nats, chars)
        return total / max(1.0, count)

    def train(self, stop_at: int | None = None) -> TrainResult:
        """Train to optim.max_steps (or the time budget); `stop_at` pauses earlier, checkpointed,
        so that `--resume` can continue exactly where it left off."""
        c = self.config
        main = self.dist.is_main
        end = min(c.optim.max_steps, stop_at) if stop_at else c.optim.max_steps
        metrics_path = self.out_dir / "metrics.jsonl"
        samples_path = self.out_dir / "samples.jsonl"
        best_path, last_path = self.out_dir / "best.pt", self.out_dir / "last.pt"
        budget_s = c.optim.max_minutes * 60.0
        chars_per_step = c.optim.batch_size * self.batches.seq_len  # over all processes
        self.model.train()
        log.info(
            "training %s %dx%d (%d parameters) on %s: %d train / %d val chars, vocab %d, %d process(es)",
            c.model.cell, c.model.layers, c.model.hidden_size, self.model.num_parameters(),
            self.dataset.corpus.name, self.dataset.train_ids.size, self.dataset.val_ids.size, len(self.vocab),
            self.dist.world_size,
        )  # fmt: skip
        progress = Progress(total=c.optim.max_steps, initial=self.step, enabled=c.run.progress and main)
        if main:  # a fresh run owns its logs; --resume appends to them from its checkpoint's step
            for path in (metrics_path, samples_path):
                _keep_rows_until(path, self.step)
        if self.step == 0 and c.run.sample_interval and main:
            self._sample(samples_path)
        window_start, window_steps, loss_sum = time.perf_counter(), 0, 0.0
        stop_reason = "max_steps"
        with contextlib.ExitStack() as stack:
            metrics = stack.enter_context(open(metrics_path, "a", encoding="utf-8")) if main else None
            while self.step < end:
                t0 = time.perf_counter()
                loss, norm, _ = self.train_step()
                self._add_time(time.perf_counter() - t0)
                window_steps += 1
                loss_sum += loss
                now = time.perf_counter()
                chars_per_s = window_steps * chars_per_step / max(1e-9, now - window_start)
                progress.update(self.step, loss=loss, chars_per_s=chars_per_s)
                record: dict[str, Any] = {}
                if self.step % c.run.log_interval == 0:
                    (loss_sum,) = self.dist.sum(loss_sum)
                    record.update(
                        train_loss=loss_sum / window_steps / self.dist.world_size, grad_norm=norm,
                        lr=self.optimizer.param_groups[0]["lr"], chars_per_s=chars_per_s,
                        clipped_fraction=self.clipped_steps / self.step,
                    )  # fmt: skip
                    if c.model.dropout_start is not None:
                        record.update(dropout=self.model.dropout.p)
                    window_start, window_steps, loss_sum = now, 0, 0.0
                last = self.step == end or (budget_s and self.elapsed >= budget_s)
                if self.step % c.run.eval_interval == 0 or last:
                    t0 = time.perf_counter()
                    val = self._validate()
                    record.update(val_loss=val, val_bpc=val / LN2)
                    improved = val < self.best_val
                    if improved:
                        self.best_val, self.evals_without_gain = val, 0
                    else:
                        self.evals_without_gain += 1
                    self._add_time(time.perf_counter() - t0)
                    payload = self._checkpoint_payload()
                    if main:
                        save_checkpoint(last_path, **payload)
                        if improved:
                            save_checkpoint(best_path, **payload)
                    progress.note(f"step {self.step}: val {val:.4f} nats ({val / LN2:.3f} bits/char)")
                    patience = c.run.early_stop_patience
                    if patience and self.evals_without_gain >= patience:
                        stop_reason = f"early stop: no gain in {patience} evaluations"
                if c.run.sample_interval and self.step % c.run.sample_interval == 0:  # evaluated or not
                    t0 = time.perf_counter()
                    if main:
                        self._sample(samples_path)
                    self._add_time(time.perf_counter() - t0)  # on every process: it agrees on the elapsed time
                if record and metrics is not None:
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
        if main:
            self._plot(metrics_path)
        return TrainResult(self.out_dir, best_path, self.step, self.best_val, self.elapsed)

    def _plot(self, metrics_path: Path) -> None:
        try:
            from training.plots import plot_loss_curves

            plot_loss_curves(metrics_path, self.out_dir / "loss.png")
        except ImportError:  # matplotlib is optional at training time
            log.warning("matplotlib is not installed: no loss.png")
