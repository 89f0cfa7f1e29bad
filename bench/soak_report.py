"""bench/soak.py's report: the summary dict (the JSON file) and its text rendering."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path


def slope_mb_per_min(samples: list[dict]) -> float:
    """Least-squares RSS trend over the second half of the soak."""
    half = samples[len(samples) // 2 :]
    if len(half) < 3:
        return 0.0
    ts, ys = [s["t"] for s in half], [s["rss_mb"] for s in half]
    return statistics.linear_regression(ts, ys).slope * 60


def summarize(
    args: argparse.Namespace,
    soak,
    outcomes: list,
    samples: list[dict],
    start: dict,
    end: dict,
    idle: tuple[str, float],
    final_check: str,
    died: bool,
) -> dict:
    """Everything the text report and the JSON file hold."""
    by_kind = defaultdict(Counter)
    latency = defaultdict(list)
    for o in outcomes:
        by_kind[o.kind]["sent"] += 1
        by_kind[o.kind]["ok" if o.ok else "unexpected"] += 1
        by_kind[o.kind][o.name if o.kind in ("cancel", "disconnect") else "_"] += 1
        latency[o.kind].append(o.seconds)
    failures = [o for o in outcomes if not o.ok]
    return {
        "command": "uv run python bench/soak.py " + shlex.join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "args": vars(args),
        "solo_seconds": round(soak.solo_seconds, 1),
        "pool": {
            "valid": len(soak.pool_valid),
            "large": len(soak.pool_large),
            "hostile": len(soak.pool_hostile),
        },
        "requests": len(outcomes),
        "kinds": {
            k: {
                **dict(c),
                "p50_s": round(statistics.median(latency[k]), 3),
                "max_s": round(max(latency[k]), 3),
            }
            for k, c in sorted(by_kind.items())
        },
        "hostile_cases_seen": len({o.name for o in outcomes if o.kind == "hostile"}),
        "failures": [vars(o) for o in failures],
        "resources": {
            "start_idle": start,
            "end_idle": end,
            "rss_mb_min": min((s["rss_mb"] for s in samples), default=None),
            "rss_mb_max": max((s["rss_mb"] for s in samples), default=None),
            "rss_slope_mb_per_min_second_half": round(slope_mb_per_min(samples), 2),
            "fds_max": max((s["fds"] for s in samples), default=None),
            "threads_max": max((s["threads"] for s in samples), default=None),
            "health_ms_median": round(statistics.median(s["health_ms"] for s in samples), 1)
            if samples
            else None,
            "health_ms_max": max((s["health_ms"] for s in samples), default=None),
            "health_not_ok": sum(s["health"] not in ("READY", "BUSY") for s in samples),
        },
        "back_to_ready": {"status": idle[0], "seconds": round(idle[1], 1)},
        "final_solo_check": final_check,
        "server_died": died,
        "samples": samples,
    }


def per_process(s0: dict, s1: dict) -> str:
    parts = []
    for pid, a in s0.get("per_process", {}).items():
        b = s1.get("per_process", {}).get(pid, {"rss_mb": 0, "threads": 0, "fds": 0})
        name = "coglet (parent)" if int(pid) == s0["root"] else f"worker {pid}"
        parts.append(
            f"{name}: {a['rss_mb']:.0f} -> {b['rss_mb']:.0f} MB, "
            f"{a['threads']} -> {b['threads']} threads, {a['fds']} -> {b['fds']} fds"
        )
    return "per process, start -> end: " + "; ".join(parts)


def render(r: dict) -> str:
    lines = [
        f"# {r['command']}",
        f"# {r['date']}; {r['machine']}; model: {r['args']['model'] or 'tiny random Qwen3'}",
        f"# pool: {r['pool']['valid']} valid + {r['pool']['large']} large specs "
        f"(library solo answers in {r['solo_seconds']}s), {r['pool']['hostile']} hostile cases; "
        f"{r['args']['clients']} clients, COG_MAX_CONCURRENCY={r['args']['concurrency']}",
        f"# {r['requests']} requests in {r['soak_seconds']}s "
        f"({r['requests'] / max(r['soak_seconds'], 1e-9):.1f}/s; "
        f"{r['hostile_cases_seen']} distinct hostile cases sent)",
        "",
        "| kind | sent | as expected | unexpected | p50 s | max s | outcomes |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, c in r["kinds"].items():
        skip = ("sent", "ok", "unexpected", "p50_s", "max_s", "_")
        detail = ", ".join(f"{k}: {v}" for k, v in c.items() if k not in skip)
        lines.append(
            f"| {kind} | {c['sent']} | {c.get('ok', 0)} | {c.get('unexpected', 0)} | "
            f"{c['p50_s']} | {c['max_s']} | {detail} |"
        )
    res, s0, s1 = r["resources"], r["resources"]["start_idle"], r["resources"]["end_idle"]
    lines += [
        "",
        "Server process tree (coglet parent + Python worker), sampled every second:",
        "| | start (idle, warmed up) | min | max | end (idle) | end - start |",
        "|---|---|---|---|---|---|",
        f"| RSS MB | {s0['rss_mb']:.0f} | {res['rss_mb_min']:.0f} | {res['rss_mb_max']:.0f} | "
        f"{s1['rss_mb']:.0f} | {s1['rss_mb'] - s0['rss_mb']:+.0f} |",
        f"| open fds | {s0['fds']:.0f} | | {res['fds_max']:.0f} | {s1['fds']:.0f} | "
        f"{s1['fds'] - s0['fds']:+.0f} |",
        f"| threads | {s0['threads']:.0f} | | {res['threads_max']:.0f} | {s1['threads']:.0f} | "
        f"{s1['threads'] - s0['threads']:+.0f} |",
        per_process(s0, s1),
        f"RSS trend over the second half of the soak: "
        f"{res['rss_slope_mb_per_min_second_half']:+.1f} MB/min"
        + (" (too short to mean much)" if r["soak_seconds"] < 60 else ""),
        f"health-check latency under load: median {res['health_ms_median']} ms, "
        f"max {res['health_ms_max']} ms; samples not READY/BUSY: {res['health_not_ok']}",
        f"back to READY after the soak: {r['back_to_ready']['status']} "
        f"in {r['back_to_ready']['seconds']}s; final solo request: {r['final_solo_check']}",
        f"all slots free after the soak ({r['args']['concurrency']} slow async requests accepted "
        f"at once, one more refused, all cancelled): {r['slots_after']}",
        f"server or its worker died: {r['server_died']}",
    ]
    if r["failures"]:
        lines += ["", f"Unexpected outcomes ({len(r['failures'])}, first 20):"]
        lines += [f"- {f['kind']} {f['name']}: {f['detail']}" for f in r["failures"][:20]]
    lines += ["", f"RESULT: {'PASS' if r['passed'] else 'FAIL'}"]
    return "\n".join(lines) + "\n"


def write(r: dict, out: Path) -> None:
    """Prints the text report and writes it to ``out``.txt, everything to ``out``.json."""
    text_report = render(r)
    print(text_report, end="")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".txt").write_text(text_report)
    out.with_suffix(".json").write_text(json.dumps(r, indent=1, default=str) + "\n")
    print(f"# wrote {out.with_suffix('.txt')} and {out.with_suffix('.json')}")
