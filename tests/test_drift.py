"""tools.drift: the metrics against hand-computed and independently computed values, the
requests file's errors, and the command end to end on the tiny model (CPU)."""

from __future__ import annotations

import json
import math
import random
import re
import statistics

import pytest

from reranker import Settings
from reranker.config import Limits
from tools.drift.command import main
from tools.drift.compare import compare
from tools.drift.metrics import (
    DriftRow,
    RequestDrift,
    Scored,
    average_ranks,
    max_abs_diff,
    mean_abs_diff,
    request_drift,
    spearman,
    summarize,
    top_k_overlap,
)
from tools.drift.modes import MODES, Mode, device_problem, mode_settings, parse_modes
from tools.drift.report import format_table, row_dict
from tools.drift.requests import read_requests

# -- metrics: hand-computed values -----------------------------------------------------------


def test_abs_diffs_by_hand():
    """Fault seen failing: mean_abs_diff dividing by len(a) - 1."""
    a, b = [0.1, 0.5, 0.9], [0.2, 0.5, 0.6]
    assert max_abs_diff(a, b) == pytest.approx(0.3, abs=1e-15)
    assert mean_abs_diff(a, b) == pytest.approx(0.4 / 3, abs=1e-15)
    assert max_abs_diff([1.0], [1.0]) == 0.0 and mean_abs_diff([], []) == 0.0


def test_a_nan_anywhere_makes_the_max_nan():
    """``max`` alone keeps 0.3 when the nan comes second. Fault seen failing: the nan check
    removed from max_abs_diff."""
    assert math.isnan(max_abs_diff([0.0, 0.0], [0.3, math.nan]))
    assert math.isnan(max_abs_diff([math.nan, 0.0], [0.3, 0.0]))


def test_lists_of_different_lengths_are_an_error():
    """Fault seen failing: _check_lengths never raising (zip's own message instead)."""
    for f in (max_abs_diff, mean_abs_diff, spearman):
        with pytest.raises(ValueError, match="differ in length"):
            f([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="differ in length"):
        top_k_overlap([1.0, 2.0], [1.0], 1)


def test_average_ranks_by_hand():
    """Fault seen failing: ties given their first position (``start + 1``) instead of the mean."""
    assert average_ranks([3, 1, 2, 1]) == [4.0, 1.5, 3.0, 1.5]
    assert average_ranks([5, 5, 5]) == [2.0, 2.0, 2.0]
    assert average_ranks([0.2, 0.1]) == [2.0, 1.0]
    assert average_ranks([]) == []


def test_spearman_by_hand():
    """No ties: 1 - 6 sum d^2 / (n (n^2 - 1)). Ties: b's ranks are [1, 2, 3.5, 5, 3.5], and the
    Pearson correlation of the centred ranks is 8 / sqrt(10 x 9.5).

    Fault seen failing: ranks without tie handling (sort position), as bench/run.py had."""
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(1 - 6 * 2 / (4 * 15))
    assert spearman([1, 2, 3, 4, 5], [5, 4, 3, 2, 1]) == -1.0
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))


def test_spearman_edge_cases_as_documented():
    """Identical rankings are exactly 1.0 (both constant and one document included); exactly
    one constant side is nan; nan input is nan.

    Fault seen failing: the ``ra == rb`` shortcut removed (both-constant then gives nan)."""
    assert spearman([0.3, 0.1, 0.2], [0.9, 0.1, 0.5]) == 1.0  # same order, other values
    assert spearman([0.5, 0.5, 0.5], [0.7, 0.7, 0.7]) == 1.0
    assert spearman([0.5], [0.9]) == 1.0
    assert spearman([], []) == 1.0
    assert math.isnan(spearman([0.5, 0.5, 0.5], [0.1, 0.2, 0.3]))
    assert math.isnan(spearman([0.1, 0.2, 0.3], [0.5, 0.5, 0.5]))
    assert math.isnan(spearman([0.1, math.nan], [0.1, 0.2]))


def _ranks_by_counting(values):
    """Average ranks another way: below + (equal + 1) / 2."""
    return [sum(v < x for v in values) + (sum(v == x for v in values) + 1) / 2 for x in values]


def test_spearman_is_the_pearson_correlation_of_ranks_computed_another_way():
    """Fault seen failing: ranks without tie handling (sort position)."""
    rng = random.Random(13)
    checked = 0
    for _ in range(300):
        n = rng.randint(2, 30)
        a = [rng.choice([0.1, 0.2, 0.3, 0.4, rng.random()]) for _ in range(n)]  # many ties
        b = [x + rng.choice([0.0, 0.0, rng.gauss(0, 0.2)]) for x in a]
        ra, rb = _ranks_by_counting(a), _ranks_by_counting(b)
        if len(set(ra)) == 1 or len(set(rb)) == 1:
            continue
        assert spearman(a, b) == pytest.approx(statistics.correlation(ra, rb), abs=1e-12)
        checked += 1
    assert checked > 200


def test_top_k_overlap_by_hand():
    """Fault seen failing: ``rank_order(b)[: m + 1]`` (one too many from b)."""
    a, b = [0.9, 0.8, 0.7, 0.1], [0.9, 0.1, 0.7, 0.8]
    assert top_k_overlap(a, b, 2) == 0.5  # {0, 1} and {0, 3}
    assert top_k_overlap(a, b, 3) == pytest.approx(2 / 3)  # {0, 1, 2} and {0, 2, 3}
    assert top_k_overlap(a, b, 1) == 1.0
    assert top_k_overlap([0.1, 0.2], [0.2, 0.1], 1) == 0.0


def test_fewer_documents_than_k_compare_them_all():
    """min(k, n) in the denominator: two documents both sides rank are all the top-10 there
    is. Fault seen failing: dividing by k (2 / 10)."""
    assert top_k_overlap([0.1, 0.9], [0.8, 0.2], 10) == 1.0
    assert top_k_overlap([], [], 10) == 1.0


def test_top_k_ties_break_by_input_index_as_rank_does():
    """Fault seen failing: ties broken by highest index first."""
    assert top_k_overlap([1.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0], 1) == 0.0  # {0} vs {1}
    assert top_k_overlap([1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.5, 0.0], 2) == 1.0  # {0, 1} twice


def test_top_k_overlap_against_sets_computed_another_way():
    """Fault seen failing: ``rank_order(b)[: m + 1]``."""
    rng = random.Random(7)
    for _ in range(300):
        n, k = rng.randint(1, 25), rng.randint(1, 12)
        a = [rng.random() for _ in range(n)]
        b = [x + rng.gauss(0, 0.1) for x in a]
        m = min(k, n)
        top_a = set(sorted(range(n), key=a.__getitem__, reverse=True)[:m])
        top_b = set(sorted(range(n), key=b.__getitem__, reverse=True)[:m])
        assert top_k_overlap(a, b, k) == len(top_a & top_b) / m


def test_k_must_be_positive():
    """Fault seen failing: top_k_overlap without check_int (k=0 gave 1.0)."""
    with pytest.raises(ValueError, match="k must be"):
        top_k_overlap([0.1], [0.1], 0)


# -- rows and the table -------------------------------------------------------------------------


def test_ranks_come_from_logits_when_both_sides_have_them():
    """Scores saturate to 1.0 where logits stay apart. Fault seen failing: request_drift ranking
    by the scores always."""
    ref = Scored([1.0, 1.0, 0.5], [40.0, 39.0, 0.0])
    cand = Scored([1.0, 1.0, 0.5], [39.0, 40.0, 0.0])
    assert request_drift(ref, cand, 1).top_k_overlap == 0.0
    assert request_drift(ref, cand, 1).spearman == pytest.approx(0.5)
    assert request_drift(Scored(ref.scores), cand, 1).top_k_overlap == 1.0  # scores: 0 vs 0


def test_summarize_pools_diffs_over_documents_and_averages_rank_metrics_over_requests():
    """Fault seen failing: mean_abs_diff as the mean of the per-request means (0.55, not 0.325)."""
    per = [RequestDrift(1, 1.0, 1.0, 0.5, 1.0), RequestDrift(3, 0.2, 0.1, 1.0, 0.5)]
    row = summarize("float16", per, k=10, dtype="float16", seconds=1.5)
    assert (row.requests, row.documents) == (2, 4)
    assert row.max_abs_diff == 1.0
    assert row.mean_abs_diff == pytest.approx((1 * 1.0 + 3 * 0.1) / 4)
    assert row.spearman == 0.75 and row.top_k_overlap == 0.75
    assert row.worst_spearman == 0.5 and row.worst_top_k_overlap == 0.5
    nan = summarize("x", [RequestDrift(2, 0.0, 0.0, math.nan, 1.0), per[1]], k=10)
    assert math.isnan(nan.spearman) and math.isnan(nan.worst_spearman)
    with pytest.raises(ValueError, match="no requests"):
        summarize("x", [], k=10)


def test_the_table_never_rounds_a_correlation_up_to_one():
    """Fault seen failing: ``_down`` with ROUND_HALF_EVEN (0.9999996 -> 1.000000)."""
    per = [RequestDrift(3, 2e-3, 1e-3, 0.9999996, 0.7)]
    rows = [
        summarize("float16", per, k=5, dtype="float16", seconds=0.25),
        DriftRow("fp8", status="skipped", k=5, note="needs Settings.quantization"),
        summarize("nan", [RequestDrift(3, 0.0, 0.0, math.nan, 1.0)], k=5),
    ]
    header, fp16, fp8, nan = format_table(rows).splitlines()
    assert [c.strip() for c in header.split(" | ")] == [
        "mode", "dtype", "requests", "documents", "max |Δ score|", "mean |Δ score|", "Spearman",
        "top-5 overlap", "seconds", "note",
    ]  # fmt: skip
    assert [c.strip() for c in fp16.split(" | ")] == [
        "float16", "float16", "1", "3", "2.00e-03", "1.00e-03", "0.999999", "0.700000", "0.25",
    ]  # fmt: skip
    assert fp8.endswith("| skipped: needs Settings.quantization")
    assert [c.strip() for c in nan.split(" | ")][6] == "nan"
    assert len({len(line.split(" | ")[0]) for line in (header, fp16, fp8)}) == 1  # aligned


def test_json_rows_hold_null_for_nan():
    """Fault seen failing: row_dict without _json_safe (json.dumps refuses nan)."""
    row = summarize("x", [RequestDrift(2, 0.0, 0.0, math.nan, 1.0)], k=10)
    text = json.dumps(row_dict(row), allow_nan=False)
    assert json.loads(text)["spearman"] is None
    assert json.loads(text)["per_request"][0]["spearman"] is None


# -- modes ----------------------------------------------------------------------------------------


def test_a_mode_is_a_table_entry_whose_fields_are_reset_in_the_others():
    """A field set by some mode (RERANKER_PREFIX_REUSE here, RERANKER_QUANTIZATION for fp8) is
    its default in every mode that does not set it, the float32 reference included.

    Fault seen failing: mode_settings without the reset (the reference kept prefix_reuse=on)."""
    table = {**MODES, "no-reuse": Mode("float16", {"prefix_reuse": "off"})}
    base = Settings(prefix_reuse="on", max_documents=7)
    assert mode_settings(base, "float32", table).prefix_reuse == "auto"
    assert mode_settings(base, "float32", MODES).prefix_reuse == "on"  # no mode sets it there
    chosen = mode_settings(base, "no-reuse", table)
    assert chosen.prefix_reuse == "off" and chosen.max_documents == 7


def test_a_mode_whose_settings_field_does_not_exist_says_so():
    """Fault seen failing: the missing-field check removed (replace raises TypeError)."""
    table = {**MODES, "future": Mode("float16", {"no_such_field": 1})}
    assert "Settings.no_such_field" in mode_settings(Settings(), "future", table)


def test_a_mode_that_needs_a_newer_gpu_is_refused_on_cpu():
    """Fault seen failing: the not-CUDA check removed from device_problem."""
    problem = device_problem(Mode("float16", cuda_capability=(8, 9)), "cpu")
    assert "compute capability 8.9" in problem and "cpu" in problem
    assert device_problem(MODES["bfloat16"], "cpu") is None


def test_modes_argument():
    """Fault seen failing: parse_modes without the unknown-name check (KeyError later)."""
    assert parse_modes("float16, bfloat16,float16") == ["float16", "bfloat16"]
    with pytest.raises(ValueError, match=r"unknown mode 'fp16'.*float16"):
        parse_modes("fp16")
    with pytest.raises(ValueError, match="at least one"):
        parse_modes(" , ")


# -- the requests file ----------------------------------------------------------------------------

LIMITS = Limits()
GOOD = '{"query": "q", "documents": ["a", "b"]}'


def test_requests_file_lines_bom_crlf_blank_lines_and_instruction():
    """Fault seen failing: enumerate(..., start=0) (every line number one too small)."""
    text = '\ufeff{"query": "q1", "documents": ["a"]}\r\n\n  \n'
    text += '{"query": "q2", "documents": ["b", "c"], "instruction": "judge"}\n'
    text += '{"query": "q3", "documents": ["d"], "instruction": null}'
    requests, labels = read_requests(text, "r.jsonl", LIMITS, max_length=99)
    assert [r.query for r in requests] == ["q1", "q2", "q3"]
    assert requests[1].documents == ("b", "c") and requests[1].instruction == "judge"
    assert all(r.options.max_length == 99 and not r.options.return_documents for r in requests)
    assert labels == [f"--requests r.jsonl, line {n}" for n in (1, 4, 5)]


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"query": "q", "documents": ["a"]', "line 2: not valid JSON"),
        ('[{"query": "q", "documents": ["a"]}]', "line 2: .*JSON Lines, not a JSON array"),
        ('"just a string"', "line 2: expected one JSON object per line.*got a JSON string"),
        ('{"query": "q", "document": ["a"]}', "line 2: unknown field 'document'"),
        ('{"documents": ["a"]}', "line 2: missing field 'query'"),
        ('{"query": "q"}', "line 2: missing field 'documents'"),
        ('{"query": "", "documents": ["a"]}', "line 2: query must not be empty"),
        ('{"query": "q", "documents": "a"}', "line 2: documents must be a list"),
        ('{"query": "q", "documents": []}', "line 2: documents must not be empty"),
        ('{"query": "q", "documents": ["a", 3]}', r"line 2: documents\[1\] must be a string"),
        ('{"query": "q", "documents": ["a"], "instruction": 5}', "line 2: instruction must be"),
    ],
)
def test_a_bad_line_is_named(line, message):
    with pytest.raises(ValueError, match=f"^--requests f.jsonl, {message}"):
        read_requests(f"{GOOD}\n{line}\n", "f.jsonl", LIMITS)


def test_an_empty_requests_file_is_an_error():
    """Fault seen failing: the no-requests check removed."""
    with pytest.raises(ValueError, match=r"^--requests - \(stdin\): no requests"):
        read_requests("\n \n", "-", LIMITS)


def test_the_command_names_a_bad_file_and_fails_before_loading(tmp_path, capsys):
    """Errors exit 1 with one line naming the option and file; --model is a real directory
    that is no model, so reaching the loader would say something else.

    Fault seen failing: parse_modes without the unknown-name check."""
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(f'{GOOD}\n{{"query": "q", "documents": [1]}}\n')
    cases = [
        (["--requests", str(tmp_path / "missing.jsonl")], "missing.jsonl: no such file"),
        (["--requests", str(bad)], f"--requests {bad}, line 2: documents\\[0\\] must be"),
        (["--requests", str(bad), "--modes", "fp16"], "--modes: unknown mode 'fp16'"),
        (["--requests", str(bad), "--top-k", "0"], "--top-k must be at least 1"),
        (["--requests", str(bad), "--max-length", "0"], "--max-length must be between"),
    ]
    for args, message in cases:
        assert main(["--model", str(not_a_model), *args, "--device", "cpu"]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and re.search(message, err), err


# -- end to end on the tiny model -----------------------------------------------------------------


@pytest.fixture(scope="module")
def requests_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("drift") / "requests.jsonl"
    lines = [
        {
            "query": "What is the capital of China?",
            "documents": [f"Document {i}: Beijing, Shanghai, {i * 7} bananas." for i in range(12)],
        },
        {"query": "fastest land animal", "documents": ["The cheetah.", "Snails are slow."]},
        {"query": "q", "documents": ["same", "same", "other"], "instruction": "Judge"},
    ]  # fmt: skip
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_the_command_end_to_end_on_cpu(model_dir, requests_file, tmp_path, capsys):
    """float32 re-run against the reference: exactly 0 drift and Spearman 1; float16 and
    bfloat16 load in their dtypes and drift a little; fp8 is skipped on a CPU.

    Fault seen failing: _run passing dtype=None to Reranker.load (every mode float32, 0 drift)."""
    out = tmp_path / "drift.json"
    argv = ["--model", str(model_dir), "--requests", str(requests_file), "--device", "cpu"]
    argv += ["--modes", "float32,float16,bfloat16,fp8", "--json", str(out), "--top-k", "3"]
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert "drift: float16 on cpu: loading" in printed.err
    lines = printed.out.strip().splitlines()
    assert [line.split(" | ")[0].strip() for line in lines[1:]] == [
        "float32 (reference)", "float32", "float16", "bfloat16", "fp8",
    ]  # fmt: skip
    report = json.loads(out.read_text())
    assert report["device"] == report["reference_device"] == "cpu" and report["k"] == 3
    rows = {r["mode"]: r for r in report["rows"]}
    again = rows["float32"]
    assert again["status"] == "ran" and again["dtype"] == "float32"
    assert (again["requests"], again["documents"]) == (3, 17)
    assert again["max_abs_diff"] == 0.0 and again["mean_abs_diff"] == 0.0
    assert again["spearman"] == 1.0 and again["top_k_overlap"] == 1.0
    for name in ("float16", "bfloat16"):
        row = rows[name]
        assert row["status"] == "ran" and row["dtype"] == name
        assert 0.0 < row["max_abs_diff"] < 0.05, row
        assert 0.0 < row["mean_abs_diff"] <= row["max_abs_diff"]
        assert row["spearman"] > 0.5 and 0.0 <= row["top_k_overlap"] <= 1.0
        assert [r["documents"] for r in row["per_request"]] == [12, 2, 3]
    assert rows["bfloat16"]["max_abs_diff"] > rows["float16"]["max_abs_diff"]  # 8 vs 11 bits
    assert rows["fp8"]["status"] == "skipped" and rows["fp8"]["dtype"] is None


def test_compare_reports_skipped_and_failed_modes_and_names_a_request(model_dir):
    """A mode this Settings cannot express is skipped; one that fails to load is a failed row
    (the others still run); a request the reference refuses raises with its label.

    Faults seen failing: compare catching only KeyError around a mode's run; score_requests
    re-raising the error without the label."""
    requests, _ = read_requests(f"{GOOD}\n", "r.jsonl", LIMITS)
    table = {
        **MODES,
        "future": Mode("float16", {"no_such_field": 1}),
        "varlen": Mode("bfloat16", {"attention": "varlen"}),  # FlashAttention: CUDA only
    }
    rows = compare(model_dir, requests, ["future", "varlen", "bfloat16"], "cpu", table=table)
    assert [(r.mode, r.status) for r in rows] == [
        ("float32 (reference)", "ran"), ("future", "skipped"), ("varlen", "failed"),
        ("bfloat16", "ran"),
    ]  # fmt: skip
    assert "Settings.no_such_field" in rows[1].note and "varlen" in rows[2].note
    with pytest.raises(ValueError, match=r"^r\.jsonl line 1: .*token"):
        compare(
            model_dir,
            requests,
            ["bfloat16"],
            "cpu",
            settings=Settings(max_request_tokens=5),
            labels=["r.jsonl line 1"],
        )
