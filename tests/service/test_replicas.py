"""Many replicas, one service: streams through one balanced target spread over every replica, survive
`kill -9` of one of them exactly, and new streams then go to the survivors; Locust users spread too."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from charrnn.client import FailoverClient, ResumableGeneration
from tests.service.harness import REPO, ServerThread, make_config, wait_until
from tests.service.replicas import start_replicas, started

PROMPT = "def main(argv):\n"
STREAMS = 48
CHARS = 6000  # long enough to be running when a replica dies, short enough to stay fast
EVERY = 64  # checkpoint interval (the servers' smallest)
FLAGS = ("--max-request-chars", str(CHARS), "--flush-interval-ms", "10", "--max-live-streams", str(STREAMS))


def _run(gens: list[ResumableGeneration], texts: list[str], errors: list[BaseException], i: int) -> None:
    try:
        texts[i] = gens[i].text()
    except BaseException as exc:  # the test reports it
        errors.append(exc)


def test_48_streams_spread_over_three_replicas_and_survive_kill_9_of_one(lstm_dir: Path, tmp_path: Path) -> None:
    replicas = start_replicas(lstm_dir, tmp_path, 3, *FLAGS)
    try:
        target = ",".join(r.target for r in replicas)
        with FailoverClient(target, timeout=120) as fc:
            # Round robin takes each replica into its rotation once its health check reports SERVING.
            assert wait_until(lambda: fc.client.info() and all(r.started("GetModelInfo") for r in replicas), 30)
            sampling: list[dict[str, Any]] = [{"seed": 1000 + i} if i % 2 else {} for i in range(STREAMS)]
            gens = [
                fc.generate(PROMPT, max_chars=CHARS, temperature=0.9, checkpoint_every_chars=EVERY, **sampling[i])
                for i in range(STREAMS)
            ]
            texts, errors = [""] * STREAMS, []
            threads = [threading.Thread(target=_run, args=(gens, texts, errors, i)) for i in range(STREAMS)]
            for t in threads:
                t.start()
            # Every stream is running (it has text) before one replica dies mid-run.
            assert wait_until(lambda: all(g.delivered for g in gens) or bool(errors), 60), errors
            spread = [r.started("Generate") for r in replicas]
            victim = replicas[0]
            live_on_victim = victim.live()
            victim.proc.send_signal(signal.SIGKILL)
            for t in threads:
                t.join(120)
            assert not errors, errors
            failovers = [g.failovers for g in gens]
            print(f"\nGenerate streams per replica: {spread}; live on the killed one: {live_on_victim}; "
                  f"streams that failed over: {sum(failovers)}")  # fmt: skip
            assert sum(spread) == STREAMS and all(spread), f"streams did not reach every replica: {spread}"
            assert sum(failovers) >= 1 and max(failovers) == 1, failovers
            # Each interrupted stream resumed from a checkpoint (a multiple of EVERY: no stop strings here).
            assert all(at % EVERY == 0 for g in gens for at in g.resumed_at)

            # New streams on the same channel after the kill: all served by the survivors, none refused,
            # replaying each stream from its seed (the unseeded ones report theirs) for the exact comparison.
            survivors = replicas[1:]
            before = [r.started("Generate") for r in survivors]
            seeds = [g.result.seed for g in gens if g.result is not None]
            assert len(seeds) == STREAMS
            replays = [fc.client.generate(PROMPT, max_chars=CHARS, temperature=0.9, seed=s) for s in seeds]
            expected = [r.text() for r in replays]
            after = [r.started("Generate") for r in survivors]
            print(f"new streams per survivor: {[a - b for a, b in zip(after, before, strict=True)]}")
            assert sum(after) - sum(before) == STREAMS and all(a > b for a, b in zip(after, before, strict=True))
        for i in range(STREAMS):
            assert texts[i] == expected[i], f"stream {i} (failovers {failovers[i]}, resumed at {gens[i].resumed_at})"
            assert len(texts[i]) == CHARS
    finally:
        for r in replicas:
            r.stop()


def test_locust_users_spread_over_every_replica_of_a_list_target(lstm_dir: Path) -> None:
    config = make_config(lstm_dir)
    with ServerThread(config) as a, ServerThread(config) as b, ServerThread(config) as c:
        host = ",".join(s.target for s in (a, b, c))
        users = [
            "-u",
            "6",
            "-r",
            "6",
            "-t",
            "4s",
            "--stream-weight",
            "1",
            "--session-weight",
            "0",
            "--score-weight",
            "0",
        ]
        cmd = [sys.executable, "-m", "locust", "-f", "bench/load/locustfile.py", "--headless", "--host", host, *users]
        run = subprocess.run([*cmd, "--max-chars", "20,80", "--only-summary"], cwd=REPO, capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr  # Locust exits 1 on any failed request
        spread = [started(s, "Generate") for s in (a, b, c)]
        assert all(spread), f"Locust's streams did not reach every replica: {spread}"
