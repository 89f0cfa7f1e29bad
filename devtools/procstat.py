"""The one /proc sampler of the bench scripts (bench/memory.py, bench/soak.py): a server's
process tree (the coglet parent and its Python worker children) and each process's resident
memory, threads and open file descriptors. Linux only."""

from __future__ import annotations

import os
from pathlib import Path


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants, from /proc/*/stat (the worker is coglet's child)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def process_stats(pid: int, fds: bool = True) -> dict | None:
    """``{"rss_kib", "threads"}`` (and ``"fds"``) of ``pid``; None once it is gone or a zombie
    (exited, not yet reaped: no VmRSS)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        n_fds = len(os.listdir(f"/proc/{pid}/fd")) if fds else None
    except OSError:
        return None
    values = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if "VmRSS" not in values:
        return None
    out = {"rss_kib": int(values["VmRSS"].split()[0]), "threads": int(values["Threads"])}
    if fds:
        out["fds"] = n_fds
    return out


def sample(root: int, fds: bool = True) -> dict[int, dict]:
    """``process_stats`` of every live process of ``root``'s tree, by pid."""
    stats = {pid: process_stats(pid, fds) for pid in process_tree(root)}
    return {pid: s for pid, s in stats.items() if s}
