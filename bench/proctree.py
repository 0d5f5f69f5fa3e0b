"""A process and all its descendants, read from Linux /proc: CPU time and memory of the whole tree.

A server that starts child processes does part of its work in them, so its cost is the tree's, not the
parent's. Descendants are found through the ppid links in /proc/*/stat, re-scanned at every reading, so a
child started between two readings is counted at the second. CPU time is utime + stime + cutime + cstime
of every live process in the tree: a child that exited and was waited for has its time added to its
parent's cutime/cstime by the kernel, so the sum keeps it (a child reparented away before it was waited
for is lost; a server reaps its own children).
"""

from __future__ import annotations

import os
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")
_PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (field 3, the state, is index 0)."""
    return (_PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` itself so far (Linux /proc)."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / _TICK


def tree(pid: int) -> list[int]:
    """`pid` and every live descendant, from one scan of the ppid links in /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry.name))[1])
        except (OSError, IndexError, ValueError):  # exited while scanned
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of `pid` and its descendants so far, those that exited and were waited for
    included (their time is in their parent's cutime and cstime)."""
    total = 0
    for member in tree(pid):
        try:
            fields = _stat_fields(member)
        except OSError:  # exited since the scan: its time is now its parent's cutime, or lost if unreaped
            continue
        total += sum(int(fields[i]) for i in (11, 12, 13, 14))
    return total / _TICK


def _rollup_kb(pid: int, field: str) -> int | None:
    """`field` (e.g. "Pss") of /proc/PID/smaps_rollup in kB, or None where that file cannot be read."""
    try:
        text = (_PROC / str(pid) / "smaps_rollup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def _status_kb(pid: int, field: str) -> int:
    for line in (_PROC / str(pid) / "status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


def tree_memory(pid: int) -> tuple[int, str]:
    """(bytes, measure): the memory of `pid` and its descendants. The measure is "Pss" (proportional set
    size: pages shared between the processes counted once in all) when every member's smaps_rollup is
    readable, else "VmRSS" (each process' resident set: shared pages counted in every process)."""
    members = tree(pid)
    pss = [_rollup_kb(member, "Pss") for member in members]
    if all(kb is not None for kb in pss):
        return sum(kb for kb in pss if kb is not None) * 1024, "Pss"
    return sum(_status_kb(member, "VmRSS") for member in members) * 1024, "VmRSS"


def rss_bytes(pid: int) -> int:
    """Resident set size of `pid` and its descendants, VmRSS summed (the measure the documented memory bounds
    use; shared pages count once per process)."""
    total = 0
    for member in tree(pid):
        try:
            total += _status_kb(member, "VmRSS") * 1024
        except OSError:  # exited since the scan
            continue
    return total
