"""Every GPU figure docs/performance.md quotes, in one command that fits 8 minutes on one H100.

    sh bench/gpu_prepare.sh                 # here: wheels, tokenizer, commit stamp (.gpu/, .whl/)
    python3 bench/gpu_all.py --out DIR      # on the GPU machine (device README: carry .gpu, .whl)
    uv run python bench/gpu_all.py --smoke  # CPU, tiny model: proves every stage runs

Stages run one after another, each in its own process with its own time box (a stage that
fails or runs out of time is reported and the next one runs; the whole run stops at
``--deadline`` seconds). Everything goes to one results file, ``DIR/gpu-all.txt``, with the
figures again as JSON in ``DIR/gpu-all.json``:

1. ``checkpoint``: the Qwen3-Reranker-8B architecture with random weights (speed does not
   depend on their values), saved in bfloat16 with the tokenizer, as Qwen ships it.
2. ``float16``: ``Reranker.load`` of that checkpoint with the production defaults (float16,
   float32 residual, torch.compile, flash varlen, warm-up): setup seconds split into load,
   fusion, attention self-check, compile (first pass) and warm-up; whether compile held (a
   failure is logged with its reason and the engine runs eagerly); tokens/s and MFU on the
   standard workload (bench/workloads.py, docs/performance.md's table); rag-20 and rag-100 latency
   p50/p95 (one request at a time, warm); peak device memory. Then the same checkpoint loaded
   with ``compile=False``: the standard workload eager.
3. ``check``: bench/gpu_check.py (a quarter-width model: parity of float32, float16, bfloat16
   and FP8 with the model card's recipe on the device, then the real Cog server).
4. ``fp8``: as 2 with ``RERANKER_QUANTIZATION=fp8``.
5. ``bfloat16``: as 2 in bfloat16.
6. ``long``: bench/long_documents.py --device cuda (truncate against chunk, 20 documents of
   32k-128k tokens).

The header names the commit (``.gpu/commit``, written by bench/gpu_prepare.sh, since the GPU
machine gets no .git) and the torch, transformers and CUDA versions that ran.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent

# stage name -> its time box in seconds on an H100 (the sum stays under --deadline's default
# only because most stages end well inside their boxes; the last ones give way)
BOXES = {"checkpoint": 60, "float16": 150, "check": 150, "fp8": 100, "bfloat16": 80, "long": 120}
DEADLINE = 470  # seconds: 8 minutes less the device machine's start-up margin
GOALS = {  # issue 21: what the defaults should reach on one H100
    "float16 tokens/s": 47_000,
    "fp8 tokens/s": 65_000,
    "rag-20 p50 ms (float16)": 100,
    "setup s after weights are on disk (float16)": 30,
}


# -- the stages (each runs in its own process: ``--stage NAME``) -------------------------------


def stage_checkpoint(args) -> dict:
    """The 8B architecture (``--smoke``: the tests' tiny model) with random weights, on disk."""
    import torch
    from transformers import AutoModelForCausalLM

    from devtools.offline import QWEN3_8B, qwen3_config

    spec = {} if args.smoke else QWEN3_8B
    started = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(args.device):
        model = AutoModelForCausalLM.from_config(qwen3_config(**spec), dtype=torch.bfloat16)
    built = time.perf_counter() - started
    model.save_pretrained(args.model)
    tokenizer(args).save_pretrained(args.model)
    params = sum(p.numel() for p in model.parameters()) / 1e9
    saved = time.perf_counter() - started - built
    print(f"{params:.2f}B parameters built in {built:.1f}s, saved in {saved:.1f}s", flush=True)
    return {"params_billion": params, "build_s": built, "save_s": saved}


def stage_perf(args) -> dict:
    """Load the checkpoint as production does, then time it (module docstring, stage 2)."""
    import torch
    import workloads
    from run import PEAK_FLOPS, Flops, measure, ours_scores, prompt_shapes

    from reranker import Settings

    device = args.device
    warnings = _warnings()
    settings = Settings(device=device, quantization=args.quantization)
    reranker, setup = _load(args, settings)
    scorer = reranker.engine.scorer
    compile_failed = scorer.compiled and (scorer._pre.failed or scorer._post.failed)
    result: dict = {
        "dtype": str(reranker.dtype).removeprefix("torch."),
        "quantization": args.quantization,
        "attention": scorer.attention.name,
        "numerics": scorer.numerics.name,
        "compiled": bool(scorer.compiled and not compile_failed),
        "compile_warnings": list(warnings),
        "setup_s": setup,
        "tokens_per_pass": reranker.engine.max_batch_tokens,
    }
    if device == "cuda":
        result["memory_after_setup_gib"] = torch.cuda.max_memory_allocated() / 2**30
    gpu = torch.cuda.get_device_name() if device == "cuda" else ""
    peak_flops = next((v for k, v in PEAK_FLOPS.items() if k in gpu), None)
    tok = tokenizer(args)
    std = workloads.standard(tok, n=12 if args.smoke else 100)
    flops = Flops.of(scorer._model.config)

    def standard(r) -> dict:
        shapes = prompt_shapes(r, std)
        label = f"reranker {result['dtype']} {args.quantization}"
        ours_scores(r, std)  # warm: the first pass of each new shape bucket
        rows = [
            measure(
                label, lambda: ours_scores(r, std), std, device, shapes, flops, peak_flops, True
            )
            for _ in range(1 if args.smoke else 3)
        ]
        best = min((row for row, _ in rows), key=lambda row: row.seconds)
        return {
            "seconds": best.seconds,
            "tokens_per_s": best.tokens_per_s,
            "mfu_hardware": best.mfu_hardware,
            "mfu_effective": best.mfu_effective,
            "peak_gib": best.peak_gib,
            "runs_s": [row.seconds for row, _ in rows],
        }

    result["standard"] = standard(reranker)
    warm = 1 if args.smoke else 3
    for n_docs, n_requests in ((20, 2), (100, 2)) if args.smoke else ((20, 40), (100, 15)):
        requests = workloads.rag(tok, n_docs, warm + n_requests)
        result[f"rag-{n_docs}"] = _latency(reranker, requests, warm)
    if device == "cuda":
        result["peak_gib"] = max(
            result["memory_after_setup_gib"], torch.cuda.max_memory_allocated() / 2**30
        )
    if args.eager:
        del reranker, scorer
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        eager, eager_setup = _load(args, Settings(device=device, compile=False))
        result["eager"] = {"setup_s": eager_setup, "standard": standard(eager)}
        speedup = result["eager"]["standard"]["seconds"] / result["standard"]["seconds"]
        result["compile_speedup"] = speedup
        print(f"# torch.compile: {speedup:.2f}x eager on the standard workload", flush=True)
    return result


def _load(args, settings):
    from reranker import Reranker

    started = time.perf_counter()
    reranker = Reranker.load(args.model, device=args.device, dtype=args.dtype, settings=settings)
    setup = dict(reranker.engine.scorer.setup_seconds, total=time.perf_counter() - started)
    print("# setup seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in setup.items()), flush=True)
    return reranker, setup


def _latency(reranker, requests, warm: int) -> dict:
    """Wall time of ``rank`` per request, one at a time; the first ``warm`` are not counted."""
    seconds = []
    for w in requests:
        started = time.perf_counter()
        reranker.rank(w.query, w.documents, instruction=w.instruction, top_k=5)
        seconds.append(time.perf_counter() - started)
    seconds = sorted(seconds[warm:])
    p95 = seconds[min(len(seconds) - 1, round(0.95 * (len(seconds) - 1)))]
    row = {
        "requests": len(seconds),
        "p50_ms": 1000 * statistics.median(seconds),
        "p95_ms": 1000 * p95,
        "max_ms": 1000 * seconds[-1],
    }
    print(f"{requests[0].name}: {json.dumps(row)}", flush=True)
    return row


def _warnings() -> list[str]:
    """Warnings the library logs (a compile failure says why), collected as they come."""
    caught: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            caught.append(record.getMessage()[:500])

    handler = Collect(logging.WARNING)
    logging.getLogger("reranker").addHandler(handler)
    logging.basicConfig(level=logging.INFO)
    return caught


def tokenizer(args):
    from transformers import AutoTokenizer

    from devtools.offline import build_tokenizer

    return AutoTokenizer.from_pretrained(args.tokenizer) if args.tokenizer else build_tokenizer()


STAGES = {"checkpoint": stage_checkpoint, "perf": stage_perf}


# -- the driver --------------------------------------------------------------------------------


def plan(args, model: Path) -> list[tuple[str, list[str]]]:
    """(stage, command) in order; see the module docstring."""
    # what every stage takes (device, tokenizer, smoke); this script's own stages add --model
    shared = ["--device", args.device]
    shared += ["--tokenizer", args.tokenizer] if args.tokenizer else []
    shared += ["--smoke"] if args.smoke else []
    me = [sys.executable, str(Path(__file__).resolve()), *shared, "--model", str(model)]
    half = "float16" if args.device == "cuda" else "float32"
    fp8 = "fp8" if args.device == "cuda" else "fp8-emulated"  # CPU: the exact emulation
    return [
        ("checkpoint", [*me, "--stage", "checkpoint"]),
        ("float16", [*me, "--stage", "perf", "--dtype", half, "--eager"]),
        ("check", [sys.executable, str(BENCH / "gpu_check.py"), *shared]),
        ("fp8", [*me, "--stage", "perf", "--dtype", half, "--quantization", fp8]),
        ("bfloat16", [*me, "--stage", "perf", "--dtype", "bfloat16"]),
        ("long", [sys.executable, str(BENCH / "long_documents.py"), *shared]),
    ]


def run_stage(name: str, command: list[str], box: float, log) -> tuple[str, float]:
    """Run one stage's process, its output copied to ``log`` and stdout, killed (with its
    children) past ``box`` seconds. Returns its status and seconds."""
    started = time.perf_counter()
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="true")
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: a timeout kills the Cog server too
    )

    def copy() -> None:
        for line in proc.stdout:
            log.write(line)
            log.flush()
            sys.stdout.write(f"[{name}] {line}")
            sys.stdout.flush()

    reader = threading.Thread(target=copy, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=max(box, 1))
        status = "ok" if rc == 0 else f"failed (exit {rc})"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        status = f"timed out after {box:.0f}s"
    reader.join(timeout=10)
    return status, time.perf_counter() - started


def header(args) -> dict:
    import torch
    import transformers

    stamp = ROOT / ".gpu" / "commit"
    if stamp.exists():
        commit = stamp.read_text().strip()
    else:
        git = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True
        )
        commit = git.stdout.strip() or "unknown"
    cuda = torch.cuda.is_available() and args.device == "cuda"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "commit": commit,
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({platform.machine()})",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "smoke": args.smoke,
    }


def summary(results: dict) -> list[str]:
    """The figures docs/performance.md quotes, one per line, with the issue's goals beside them (not
    judged in a ``--smoke`` run: a tiny model on CPU measures nothing)."""
    lines = []
    for name in ("float16", "fp8", "bfloat16"):
        r = results.get(name)
        if not isinstance(r, dict) or "standard" not in r:
            continue
        s = r["standard"]
        mfu = f", MFU(hw) {100 * s['mfu_hardware']:.1f}%" if s.get("mfu_hardware") else ""
        lines.append(
            f"{name} ({r['dtype']}, quantization {r['quantization']}): standard workload "
            f"{s['tokens_per_s']:,.0f} tokens/s ({s['seconds']:.3f}s{mfu}); "
            + "".join(
                f"{rag} p50/p95 {r[rag]['p50_ms']:.0f}/{r[rag]['p95_ms']:.0f} ms; "
                for rag in ("rag-20", "rag-100")
            )
            + f"compiled {r['compiled']}; setup "
            + ", ".join(f"{k} {v:.1f}s" for k, v in r["setup_s"].items())
            + (f"; peak {r['peak_gib']:.2f} GiB" if "peak_gib" in r else "")
        )
        if "eager" in r:
            lines.append(
                f"{name} eager (compile=False): {r['eager']['standard']['tokens_per_s']:,.0f} "
                f"tokens/s; "
                + (
                    f"torch.compile {r['compile_speedup']:.2f}x"
                    if r["compiled"]
                    else "not compiled either way"
                )
            )
    measured = {
        "float16 tokens/s": _get(results, "float16", "standard", "tokens_per_s"),
        "fp8 tokens/s": _get(results, "fp8", "standard", "tokens_per_s"),
        "rag-20 p50 ms (float16)": _get(results, "float16", "rag-20", "p50_ms"),
        "setup s after weights are on disk (float16)": _get(results, "float16", "setup_s", "total"),
    }
    for goal, target in GOALS.items():
        value = measured[goal]
        if results["header"]["smoke"]:
            verdict = "not judged (--smoke)"
        elif value is None:
            verdict = "not measured"
        else:
            met = value >= target if "tokens/s" in goal else value <= target
            verdict = f"{value:,.1f} ({'met' if met else 'missed'})"
        lines.append(f"goal {goal} {target:,}: {verdict}")
    return lines


def _get(results: dict, *keys):
    for k in keys:
        if not isinstance(results, dict) or k not in results:
            return None
        results = results[k]
    return results


def drive(args) -> int:
    out = Path(args.out or tempfile.mkdtemp(prefix="gpu-all-"))
    out.mkdir(parents=True, exist_ok=True)
    model = Path(args.model or tempfile.mkdtemp(prefix="gpu-all-model-")) / "model"
    started = time.monotonic()
    info = header(args)
    results: dict = {"header": info, "stages": {}}
    with open(out / "gpu-all.txt", "w") as log:

        def say(line: str) -> None:
            log.write(line + "\n")
            log.flush()
            print(line, flush=True)

        say("# " + " | ".join(f"{k} {v}" for k, v in info.items()))
        for name, command in plan(args, model):
            left = args.deadline - (time.monotonic() - started)
            box = min(BOXES[name] * (1 if args.device == "cuda" else 3), left)
            if box < 10:
                results["stages"][name] = {"status": "skipped: no time left"}
                say(f"## {name}: skipped, no time left")
                continue
            figures = out / f"{name}.json"
            figures.unlink(missing_ok=True)
            if "--stage" in command:
                command = [*command, "--stage-out", str(figures)]
            say(f"## {name} (box {box:.0f}s): {' '.join(command[1:])}")
            status, seconds = run_stage(name, command, box, log)
            say(f"## {name}: {status} in {seconds:.1f}s")
            results["stages"][name] = {"status": status, "seconds": seconds}
            if figures.exists():
                results[name] = json.loads(figures.read_text())
                figures.unlink()
            (out / "gpu-all.json").write_text(json.dumps(results, indent=1) + "\n")
        results["seconds"] = time.monotonic() - started
        for line in ["## summary", *summary(results), f"total {results['seconds']:.0f}s"]:
            say(line)
    (out / "gpu-all.json").write_text(json.dumps(results, indent=1) + "\n")
    bad = [n for n, s in results["stages"].items() if s["status"] != "ok"]
    if bad:
        print(f"# stages not ok: {bad}", flush=True)
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"])
    p.add_argument("--tokenizer", help="a saved tokenizer folder (default: .gpu/tokenizer if any)")
    p.add_argument("--out", help="folder for gpu-all.txt and gpu-all.json (default: a temp dir)")
    p.add_argument("--model", help="where the checkpoint stage writes (default: a temp dir)")
    p.add_argument("--deadline", type=float, default=DEADLINE, help="seconds for all stages")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny model: every stage runs")
    p.add_argument("--stage", choices=sorted(STAGES), help=argparse.SUPPRESS)
    p.add_argument("--stage-out", help=argparse.SUPPRESS)
    p.add_argument("--dtype", help=argparse.SUPPRESS)
    p.add_argument("--quantization", default="none", help=argparse.SUPPRESS)
    p.add_argument("--eager", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sys.path[:0] = [str(ROOT), str(BENCH)]
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if args.tokenizer is None and (ROOT / ".gpu" / "tokenizer").is_dir():
        args.tokenizer = str(ROOT / ".gpu" / "tokenizer")
    if args.stage is None:
        return drive(args)
    figures = STAGES[args.stage](args)
    if args.stage_out:
        Path(args.stage_out).write_text(json.dumps(figures, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
