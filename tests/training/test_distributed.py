"""Distributed training with real torchrun launches on loopback (gloo, CPU, one thread per process).

Equivalence with one process, a two-"node" job through a c10d rendezvous whose export a real server
serves, a killed rank, a hung rank, and resuming after a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from charrnn.client import Client
from tests.conftest import TINY_OVERRIDES
from tests.service.harness import ServerThread, make_config
from training.config import TrainingConfig, apply_overrides
from training.distributed import setup
from training.train import Trainer, load_checkpoint

_LOCAL_TORCHRUN = Path(sys.executable).with_name("torchrun")
TORCHRUN = [str(_LOCAL_TORCHRUN)] if _LOCAL_TORCHRUN.exists() else [sys.executable, "-m", "torch.distributed.run"]
# Measured: 5e-7 on the losses and 1.2e-7 on the parameters after 30-40 steps (float reduction order).
LOSS_TOLERANCE = 1e-5
PARAM_TOLERANCE = 1e-5
FAIL_BOUND_S = 30.0  # a job with a dead rank must be over well within this
EQUIVALENCE = [*TINY_OVERRIDES, "optim.max_steps=30", "run.log_interval=1", "run.eval_interval=15",
               "run.sample_interval=10"]  # fmt: skip
# Slow enough (a few seconds) to be stopped mid-run; window dropout and weight drop exercise each rank's own
# random stream, and DDP's gradient hooks through the layer-by-layer calls and the masked recurrent matrices.
LONG = [*TINY_OVERRIDES, "model.hidden_size=64", "model.layers=2", "model.dropout=0.1", "model.dropout_mask=window",
        "model.weight_drop=0.2", "optim.max_steps=300",
        "run.eval_interval=50", "run.sample_interval=0", "run.log_interval=5"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Launch:
    """One torchrun process (its own session) running `charrnn train` in its workers."""

    def __init__(self, launcher: list[str], train: list[str], cwd: Path | None = None):
        command = [*TORCHRUN, *launcher, "--max-restarts", "0", "-m", "charrnn.cli", "train", *train]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
        self.output = ""
        self.workers: set[int] = set()

    def children(self) -> list[int]:
        pids: list[int] = []
        for task in Path(f"/proc/{self.proc.pid}/task").glob("*"):
            try:
                pids.extend(int(p) for p in (task / "children").read_text().split())
            except OSError:
                continue
        self.workers.update(pids)
        return pids

    def finish(self, timeout: float) -> int:
        self.output, _ = self.proc.communicate(timeout=timeout)
        return self.proc.returncode

    def kill(self) -> None:
        """Everything this launch started: the workers (torchrun puts each in its own session) and torchrun."""
        self.children()
        for pid in [*self.workers, self.proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.communicate()


@pytest.fixture
def launches() -> Iterator[list[Launch]]:
    started: list[Launch] = []
    yield started
    for launch in started:
        if launch.proc.poll() is None:
            launch.kill()


def rank_of(pid: int) -> int | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    values = [e.split(b"=", 1)[1] for e in environ if e.startswith(b"RANK=")]
    return int(values[0]) if values else None


def worker(launches: list[Launch], rank: int, timeout: float = 60) -> tuple[Launch, int]:
    """The launch whose worker has RANK=rank, and that worker's pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for launch in launches:
            for pid in launch.children():
                if rank_of(pid) == rank:
                    return launch, pid
        time.sleep(0.05)
    raise AssertionError(f"no worker with RANK={rank} after {timeout} s")


def wait_for(path: Path, launches: list[Launch], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        assert all(launch.proc.poll() is None for launch in launches), "a launch ended before writing " + str(path)
        time.sleep(0.02)


def train_args(corpus: Path, out: Path | str, *overrides: str) -> list[str]:
    return ["--corpus", str(corpus), "--out", str(out), *overrides]


def metrics(run: Path) -> list[dict[str, float]]:
    """The complete rows (a running job may be writing the last one)."""
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    return [json.loads(line) for line in lines if line.endswith("\n")]


@pytest.mark.slow
def test_two_processes_match_one_process(tiny_corpus: Path, tmp_path: Path, launches: list[Launch]) -> None:
    """2 processes x 4 streams == 1 process x 8 streams: per-step losses, validation, weights, carried state."""
    launches.append(Launch(["--nproc-per-node", "2"], train_args(tiny_corpus, tmp_path / "two", *EQUIVALENCE)))
    one = subprocess.run(
        [sys.executable, "-m", "charrnn.cli", "train", *train_args(tiny_corpus, tmp_path / "one", *EQUIVALENCE)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr
    assert launches[0].finish(timeout=300) == 0, launches[0].output
    assert "2 process(es)" in launches[0].output
    two_rows, one_rows = metrics(tmp_path / "two"), metrics(tmp_path / "one")
    assert [r["step"] for r in two_rows] == [r["step"] for r in one_rows] == list(range(1, 31))  # rank 0 alone
    loss_error = max(abs(a["train_loss"] - b["train_loss"]) for a, b in zip(two_rows, one_rows, strict=True))
    pairs = zip(two_rows, one_rows, strict=True)
    val_error = max(abs(a["val_loss"] - b["val_loss"]) for a, b in pairs if "val_loss" in a)
    two, one_ckpt = load_checkpoint(tmp_path / "two" / "last.pt"), load_checkpoint(tmp_path / "one" / "last.pt")
    param_error = max(float((two["model"][k] - one_ckpt["model"][k]).abs().max()) for k in one_ckpt["model"])
    state_error = max(
        float((a - b).abs().max()) for a, b in zip(two["carried_state"], one_ckpt["carried_state"], strict=True)
    )
    print(f"max |Δ| train loss {loss_error:.1e}, val loss {val_error:.1e}, parameters {param_error:.1e}, "
          f"carried state {state_error:.1e}")  # fmt: skip
    assert loss_error <= LOSS_TOLERANCE and val_error <= LOSS_TOLERANCE
    assert param_error <= PARAM_TOLERANCE and state_error <= PARAM_TOLERANCE
    assert two["world_size"] == 2 and len(two["rng"]) == 2
    samples = [json.loads(line)["step"] for line in (tmp_path / "two" / "samples.jsonl").read_text().splitlines()]
    assert samples == [0, 10, 20, 30], "a sample every sample_interval steps, evaluated or not"


@pytest.mark.slow
def test_two_nodes_on_loopback_train_and_export_an_artifact_a_server_serves(
    tiny_corpus: Path, tmp_path: Path, launches: list[Launch]
) -> None:
    """Two torchrun launches (--nnodes 2, c10d rendezvous on 127.0.0.1), each in its own directory with a
    relative --out: exactly one (rank 0's) writes anything."""
    port = free_port()
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    overrides = [*TINY_OVERRIDES, "optim.max_steps=20"]
    for rank, node in enumerate(nodes):
        node.mkdir()
        launcher = ["--nnodes", "2", "--node-rank", str(rank), "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                    "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "loopback"]  # fmt: skip
        launches.append(Launch(launcher, [*train_args(tiny_corpus, "run", *overrides), "--export", "model"], node))
    for launch in launches:
        assert launch.finish(timeout=300) == 0, launch.output
    writers = [node for node in nodes if any(node.iterdir())]
    assert len(writers) == 1, "only rank 0 may create files"
    assert sorted(p.name for p in writers[0].iterdir()) == ["model", "run"]
    assert load_checkpoint(writers[0] / "run" / "last.pt")["world_size"] == 2
    with ServerThread(make_config(writers[0] / "model")) as server, Client(server.target, timeout=30) as client:
        assert client.info().cell == "lstm"
        text = client.generate("def ", max_chars=40, seed=1).text()
    assert len(text) == 40


@pytest.mark.slow
def test_a_killed_rank_fails_the_job_and_a_restart_resumes_exactly(
    tiny_corpus: Path, tmp_path: Path, launches: list[Launch]
) -> None:
    reference = Launch(["--nproc-per-node", "2"], train_args(tiny_corpus, tmp_path / "straight", *LONG))
    launches.append(reference)
    assert reference.finish(timeout=300) == 0, reference.output

    run = tmp_path / "interrupted"
    launches.append(Launch(["--nproc-per-node", "2"], train_args(tiny_corpus, run, *LONG)))
    wait_for(run / "last.pt", launches[-1:])
    # Kill it between checkpoints, after it logged steps the restart will train again.
    checkpointed = load_checkpoint(run / "last.pt")["step"]
    while max(r["step"] for r in metrics(run)) < checkpointed + 20:
        assert launches[-1].proc.poll() is None, launches[-1].finish(timeout=10)
        time.sleep(0.02)
    launch, pid = worker(launches[-1:], rank=1)
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    returncode = launch.finish(timeout=FAIL_BOUND_S)
    took = time.monotonic() - killed_at
    print(f"job ended {took:.1f} s after rank 1 was killed")
    assert returncode != 0
    step = load_checkpoint(run / "last.pt")["step"]
    assert 0 < step < 300

    resume = ["--resume", str(run / "last.pt")]
    restart = Launch(["--nproc-per-node", "2"], [*train_args(tiny_corpus, run, *LONG), *resume])
    launches.append(restart)
    assert restart.finish(timeout=300) == 0, restart.output
    assert f"resumed from step {step}" in restart.output
    resumed, straight = load_checkpoint(run / "last.pt"), load_checkpoint(tmp_path / "straight" / "last.pt")
    assert resumed["step"] == 300
    assert [r["step"] for r in metrics(run)] == [r["step"] for r in metrics(tmp_path / "straight")]
    for name, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][name]), name


@pytest.mark.slow
def test_a_hung_rank_fails_the_other_node_after_the_collective_timeout(
    tiny_corpus: Path, tmp_path: Path, launches: list[Launch]
) -> None:
    timeout_s = 5.0
    port = free_port()
    for rank in (0, 1):
        (tmp_path / f"node{rank}").mkdir()
        launcher = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                    "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "hang"]  # fmt: skip
        overrides = [*LONG, "optim.max_steps=100000", f"run.dist_timeout_s={timeout_s}"]
        args = train_args(tiny_corpus, tmp_path / "run", *overrides)
        launches.append(Launch(launcher, args, tmp_path / f"node{rank}"))
    wait_for(tmp_path / "run" / "last.pt", launches)
    _, hung = worker(launches, rank=1)
    survivor, _ = worker(launches, rank=0)
    os.kill(hung, signal.SIGSTOP)
    stopped_at = time.monotonic()
    returncode = survivor.finish(timeout=timeout_s + FAIL_BOUND_S)
    took = time.monotonic() - stopped_at
    print(f"rank 0's node ended {took:.1f} s after rank 1 stopped (run.dist_timeout_s={timeout_s})")
    assert returncode != 0
    assert took >= timeout_s / 2, "it ended before the timeout could have fired: not the mechanism under test"
    assert "Timed out" in survivor.output


@pytest.mark.slow
def test_an_uneven_split_is_refused_in_one_line(tiny_corpus: Path, tmp_path: Path, launches: list[Launch]) -> None:
    overrides = [*TINY_OVERRIDES, "optim.batch_size=3"]
    launches.append(Launch(["--nproc-per-node", "2"], train_args(tiny_corpus, tmp_path / "run", *overrides)))
    assert launches[0].finish(timeout=300) != 0
    assert "charrnn train: optim.batch_size=3 does not split evenly over 2 processes" in launches[0].output
    assert "training/" not in launches[0].output  # no traceback through our code (torchrun prints its own)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_resuming_with_another_world_size_warns_and_continues(
    tiny_corpus: Path, tmp_path: Path, launches: list[Launch], caplog: pytest.LogCaptureFixture
) -> None:
    overrides = [*TINY_OVERRIDES, "optim.max_steps=20"]
    launches.append(Launch(["--nproc-per-node", "2"], train_args(tiny_corpus, tmp_path / "two", *overrides)))
    assert launches[0].finish(timeout=300) == 0, launches[0].output
    config = apply_overrides(TrainingConfig(), [*overrides, "optim.max_steps=30", f"run.out_dir={tmp_path / 'one'}"])
    config.data.corpus = str(tiny_corpus)
    trainer = Trainer(config, resume=tmp_path / "two" / "last.pt")
    assert "written by 2 processes and this run has 1" in caplog.text
    assert trainer.step == 20 and trainer.train().steps == 30


def test_the_environment_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    run = TrainingConfig().run
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert not setup(run).enabled  # no torchrun: one plain process
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="inconsistent"):
        setup(run)
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ValueError, match="MASTER_ADDR, MASTER_PORT unset: launch with torchrun"):
        setup(run)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two' is not an integer"):
        setup(run)
    if not torch.cuda.is_available():
        monkeypatch.setenv("WORLD_SIZE", "1")
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(ValueError, match="no CUDA device"):
            setup(apply_overrides(TrainingConfig(), ["run.device=cuda"]).run)
