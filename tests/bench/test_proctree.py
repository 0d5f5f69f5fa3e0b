"""The server's CPU and memory are read over its process tree: a child's busy loop and its memory count."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from bench.proctree import cpu_seconds, rss_bytes, tree

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# The parent sleeps; its child spins for BUSY_S of CPU time while holding CHILD_MB of touched memory.
BUSY_S = 0.5
CHILD_MB = 64
CHILD = f"""
import time
block = bytearray({CHILD_MB} << 20)
for i in range(0, len(block), 4096):
    block[i] = 1
print("ready", flush=True)
end = time.process_time() + {BUSY_S}
while time.process_time() < end:
    pass
print("done", flush=True)
time.sleep(60)
"""
PARENT = f"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", {CHILD!r}], stdout=sys.stdout)
child.wait()
"""


def test_a_childs_cpu_and_memory_count_for_its_parent() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        assert parent.stdout.readline().strip() == "ready"
        before = cpu_seconds(parent.pid)
        assert parent.stdout.readline().strip() == "done"
        time.sleep(0.05)
        members = tree(parent.pid)
        used = cpu_seconds(parent.pid) - before
        rss = rss_bytes(parent.pid)
    finally:
        for pid in reversed(tree(parent.pid)):  # the child first, while the parent still links to it
            subprocess.run(["kill", "-9", str(pid)], check=False)
        parent.wait(10)
    assert len(members) == 2, members
    # The child burned BUSY_S of CPU between the readings; the parent only waited. A clock tick (10 ms) of slack.
    assert used >= BUSY_S - 0.02, used
    assert rss >= CHILD_MB << 20, rss  # the child's touched pages, whatever the two interpreters add
