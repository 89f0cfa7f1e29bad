"""How far float16, bfloat16 (and later FP8) scores drift from float32, on your own data.

    python -m tools.drift --model DIR_OR_HUB_ID --requests FILE [--modes float16,bfloat16]

Random-weight tests and benchmarks say little about the real checkpoint's drift, so this is a
command that users run on their own GPU, queries and documents: the model is loaded once per
mode (float32 first, the reference, on the same device), every request is scored in each, and
one row per mode reports, against float32:

- max and mean |Δ score| over all documents (score = P(yes), what callers see);
- mean Spearman rank correlation per request (ties get average ranks);
- mean top-k overlap per request, |top_k(a) ∩ top_k(b)| / min(k, documents).

Ranks come from the logits, the order ``rank`` returns (scores round to 1.0 above a logit of
about 37, logits stay apart); callers with scores only rank by the scores.

Edge cases, defined here once: Spearman is 1.0 when the two rankings are identical, which
includes both sides ranking every document equal and a request of one document; it is nan
(undefined, and it makes the mode's mean nan, which is meant to be noticed) when exactly one
side ranks every document equal. A request with fewer than k documents compares all of them,
so its overlap is 1.0. Top-k ties are broken by input index, as ``rank`` breaks them.

Modes are a table (:data:`modes.MODES`): a name -> the dtype to load and extra :class:`Settings`
fields (set with ``dataclasses.replace``). A mode whose field this version's ``Settings`` lacks,
or whose device need the run cannot meet, is reported as skipped with the reason.

The modules: requests.py (the JSON Lines reader), metrics.py (the drift figures), modes.py
(the table and what a run can load), compare.py (scoring each mode against the reference),
report.py (text and JSON output), command.py (the flags and main). It imports the reranker
package; nothing under reranker/ imports it (tests/test_layout.py).
"""
