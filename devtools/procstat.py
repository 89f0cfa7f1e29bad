"""The one /proc sampler of the bench scripts (bench/memory.py, bench/soak.py): a server's
process tree (the coglet parent and its Python worker children) and each process's resident
memory, threads and open file descriptors. Linux only."""

from __future__ import annotations

import os
import threading
import time
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


class TreeSampler(threading.Thread):
    """Every ``interval`` s, a row: the RSS (MB), fds and threads of ``server``'s process tree
    (summed and per process) and its health-check latency. ``dead`` is set once the server,
    or one of the ``processes`` a healthy tree has (set from the first row), is gone."""

    def __init__(self, server, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.server, self.interval = server, interval
        self.samples: list[dict] = []
        self.t0 = time.monotonic()
        self.halt = threading.Event()
        self.dead = threading.Event()
        self.processes = 0

    def sample(self) -> dict:
        per_pid = {
            pid: {"rss_mb": s["rss_kib"] / 1024, "threads": s["threads"], "fds": s["fds"]}
            for pid, s in sample(self.server.process.pid).items()
        }
        row = {"t": round(time.monotonic() - self.t0, 2), "processes": len(per_pid)}
        row["root"] = self.server.process.pid
        for key in ("rss_mb", "fds", "threads"):
            row[key] = round(sum(s[key] for s in per_pid.values()), 1)
        row["per_process"] = {str(pid): s for pid, s in per_pid.items()}
        started = time.perf_counter()
        try:
            row["health"] = self.server.health().get("status")
        except (OSError, ValueError) as exc:
            row["health"] = f"error: {exc}"
        row["health_ms"] = round((time.perf_counter() - started) * 1000, 1)
        row["alive"] = self.server.alive and len(per_pid) >= self.processes
        if not row["alive"]:
            self.dead.set()
        return row

    def run(self) -> None:
        while not self.halt.is_set() and not self.dead.is_set():
            self.samples.append(self.sample())
            self.halt.wait(self.interval)
