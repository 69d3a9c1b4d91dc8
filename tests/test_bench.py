"""`edgespec bench`: the suite, the run order, the numbers, the outputs, and the llama.cpp comparison.

End-to-end runs use the tiny GGUF models (conftest) and a tiny suite; llama.cpp's binary is stood in
for by a script that prints what llama-speculative-simple prints.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from edgespec.bench import matching as X
from edgespec.core.kinds import Mode
from edgespec.core.stats import Stats
from edgespec.bench import modes as M
from edgespec.bench import runs as B
from edgespec.bench import suite as S
from edgespec.bench import tables as T
from edgespec.bench import llamacpp as L
from edgespec.bench import report as R
from edgespec.bench.replay import costs_from_traces, replay, traces_from_bench
from edgespec.errors import UsageError
from edgespec.core.verify import SamplingParams
from test_cli import assert_one_line_error, edgespec

TINY_SUITE = [
    {"id": "code-1", "category": "codegen", "prompt": "def fib(n):"},
    {"id": "chat-1", "category": "chat", "prompt": "Explain recursion."},
    {"id": "edit-1", "category": "edit", "prompt": "Rename x to y: x = 1; print(x); x = x + 1; print(x)"},
    {"id": "extract-1", "category": "extract", "prompt": "Quote it: the quick brown fox jumps over the lazy dog. the quick brown fox.", "max_tokens": 12},
    {"id": "json-1", "category": "json", "prompt": '{"a": 1, "b": [1, 2, 3]}', "system": "Answer in JSON."},
]


def write_suite(path: Path, rows=TINY_SUITE) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def documented_order(prompts: list[str], modes: list[str], repeats: int) -> list[tuple[int, str, str]]:
    """The order as the help text states it, written out independently of bench.run_order."""
    out = []
    for r in range(repeats):
        for p in prompts:
            start = r % len(modes)
            for j in range(len(modes)):
                out.append((r, p, modes[(start + j) % len(modes)]))
    return out


# ---------------------------------------------------------------------------------------- suite
def test_shipped_suite_has_every_category_and_real_inputs():
    suite = S.load_suite()
    assert len(suite) >= 24
    cats = {p.category for p in suite}
    assert cats == set(S.SHORT_CATEGORIES)
    for c in S.SHORT_CATEGORIES:
        assert sum(p.category == c for p in suite) >= 4, c
    assert len({p.id for p in suite}) == len(suite)
    # edit and extract prompts carry the text to work on, so copying from it is natural
    for p in suite:
        if p.category in ("edit", "extract"):
            assert len(p.prompt) >= 400 and p.prompt.count("\n") >= 5, p.id
        if p.category == "edit":
            assert "```" in p.prompt, p.id


def test_the_edit_suite_is_copy_heavy_work():
    suite = S.load_suite(name="edit")
    assert len(suite) >= 24 and len({p.id for p in suite}) == len(suite)
    assert {p.category for p in suite} == set(S.EDIT_CATEGORIES)
    for p in suite:
        assert 200 <= p.max_tokens <= 800, p.id
        if p.category == "follow-up":  # the earlier turn and its answer are part of the conversation
            assert len(p.turns) >= 2 and p.turns[-1]["role"] == "assistant" and "```" in p.turns[-1]["content"], p.id
        else:
            assert len(p.prompt) >= 1500 and not p.turns, p.id  # the whole input is in the prompt
        if p.category == "file-edit":
            assert "```" in p.prompt and "complete file" in p.prompt, p.id
    langs = " ".join(p.id for p in suite if p.category == "file-edit")
    for lang in ("py", "js", "ts", "go", "rust", "sql", "html", "css"):
        assert lang in langs, lang
    with pytest.raises(UsageError, match="unknown suite 'nope'"):
        S.load_suite(name="nope")


def test_a_prompt_budget_is_honoured_and_capped_only_when_asked(load, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESPEC_CACHE", str(tmp_path / "cache"))
    target = load("target", n_ctx=1024)
    suite = S.parse_suite(json.dumps({"id": "a", "category": "chat", "prompt": "hi", "max_tokens": 300}) + "\n"
                          + json.dumps({"id": "b", "category": "chat", "prompt": "hi"}) + "\n", "s")
    b = B.Bench(target, None, suite, M.parse_modes(["plain"]), B.Settings())
    assert [b.max_tokens(p) for p in suite] == [300, B.DEFAULT_MAX_TOKENS]
    b = B.Bench(target, None, suite, M.parse_modes(["plain"]), B.Settings(max_tokens=100))
    assert [b.max_tokens(p) for p in suite] == [100, 64]


def test_shipped_suite_is_package_data():
    from importlib import resources

    text = resources.files("edgespec").joinpath("prompts/suite.jsonl").read_text(encoding="utf-8")
    assert len(S.parse_suite(text, "x")) == len(S.load_suite())


@pytest.mark.parametrize(
    "line,needle",
    [
        ('{"id": "a", "category": "chat"', "not valid JSON"),
        ('["a", "b"]', "expected a JSON object"),
        ('{"id": "a", "category": "chat"}', 'missing "prompt"'),
        ('{"id": "a", "category": "chat", "prompt": "  "}', '"prompt" must be a non-empty string'),
        ('{"id": "a", "category": "chat", "prompt": "hi", "max_tokens": 0}', '"max_tokens" must be a whole number >= 1'),
        ('{"id": "a", "category": "chat", "prompt": "hi", "max_tokens": true}', '"max_tokens" must be a whole number >= 1'),
        ('{"id": "a", "category": "chat", "prompt": "hi", "promt": "typo"}', "unknown key 'promt'"),
        ('{"id": "code-1", "category": "chat", "prompt": "hi"}', "duplicate id 'code-1' (first on line 1)"),
    ],
)
def test_bad_suite_line_names_file_and_line(tmp_path, line, needle):
    rows = [json.dumps(TINY_SUITE[0]), "", json.dumps(TINY_SUITE[1]), line]  # the blank line still counts
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(UsageError) as e:
        S.load_suite(path)
    assert f"{path}:4: " in e.value.message and needle in e.value.message


def test_suite_files_that_cannot_be_read(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        S.load_suite(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(UsageError, match="has no prompts"):
        S.load_suite(tmp_path / "empty.jsonl")


def test_select_category_and_quick():
    suite = S.parse_suite("".join(json.dumps(r) + "\n" for r in TINY_SUITE), "s")
    assert [p.id for p in S.select(suite, ["edit", "json"])] == ["edit-1", "json-1"]
    with pytest.raises(UsageError, match="no prompts in category 'poetry'"):
        S.select(suite, ["poetry"])
    # --quick: the first prompt of codegen, edit and extract, kept in suite order
    assert [p.id for p in S.select(suite, quick=True)] == ["code-1", "edit-1", "extract-1"]
    assert [p.id for p in S.select(suite, ["chat", "json"], quick=True)] == ["chat-1", "json-1"]
    shipped = S.select(S.load_suite(), quick=True)
    assert [p.category for p in shipped] == ["codegen", "edit", "extract"]


# ---------------------------------------------------------------------------------------- modes
def test_parse_modes():
    names = [m.name for m in M.parse_modes(list(M.DEFAULT_MODES))]
    assert names == ["plain", "model-k2", "model-k4", "model-k6", "ngram", "auto"]
    modes = M.parse_modes(["auto,model-k3", "ngram", "auto"], llama_cpp_k=5)
    assert [(m.name, m.engine, m.k) for m in modes] == [("plain", "plain", 0), ("auto", "auto", None), ("model-k3", "model", 3), ("ngram", "ngram", None)]
    assert M.parse_modes(["none,llama.cpp-spec"], llama_cpp_k=5)[1] == M.BenchMode("llama.cpp-spec-k5", None, 5, "draft-simple")
    assert M.parse_mode("llama.cpp-ngram-mod") == M.BenchMode("llama.cpp-ngram-mod", None, None, "ngram-mod")
    assert not M.parse_mode("llama.cpp-ngram-map-k").needs_draft
    assert M.parse_mode("llama.cpp-spec-k2").k == 2 and M.parse_mode("llama.cpp-spec-k2").external
    for bad, needle in (("turbo", "unknown mode"), ("auto-k3", "auto chooses k"), ("plain-k2", "no draft length"), ("model-k0", "between 1 and 64")):
        with pytest.raises(UsageError, match=needle):
            M.parse_modes([bad])


def test_run_order_rotates_the_first_mode_per_repeat():
    order = B.run_order(n_prompts=2, n_modes=3, repeats=3)
    got = [(r, f"p{p}", f"m{m}") for r, p, m in order]
    assert got == documented_order(["p0", "p1"], ["m0", "m1", "m2"], 3)
    assert got[:6] == [(0, "p0", "m0"), (0, "p0", "m1"), (0, "p0", "m2"), (0, "p1", "m0"), (0, "p1", "m1"), (0, "p1", "m2")]
    assert got[6:9] == [(1, "p0", "m1"), (1, "p0", "m2"), (1, "p0", "m0")]


def test_text_divergence_maps_to_the_reference_token():
    pieces = [b"def", b" fib", b"(n", b"):\n", b"   ", b" return"]
    assert X.text_divergence(pieces, b"def fib(n):\n    return") is None
    assert X.text_divergence(pieces, b"def fib(n):") is None  # shorter: a prefix
    assert X.text_divergence(pieces, b"def fib(n):\n    return n  # and more") is None  # longer: llama.cpp overshoots -n
    assert X.text_divergence(pieces, b"def fib(m):") == 2
    assert X.text_divergence(pieces, b"def fob") == 1
    assert X.text_divergence([b"caf", b"\xc3", b"\xa9!"], b"caf\xc3") is None  # a token ending inside a character
    assert X.text_divergence([b"caf", b"\xc3", b"\xa9!"], b"caf\xc3\xa8") == 2


def test_first_divergence():
    assert X.first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert X.first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert X.first_divergence([1, 2, 3], [1, 2]) == 2
    assert X.first_divergence([1, 2, 3], [1, 2], prefix_only=True) is None


# ----------------------------------------------------------------------------------- aggregation
def _run(seq, prompt, cat, mode, tps, repeat=0, match=None, **counts):
    stats = Stats(prompt_tokens=10, prefill_tokens=9, generated=100, t_prefill=0.1, t_decode=100 / tps, **counts)
    return B.Run(seq, repeat, prompt, cat, mode, None, stats=stats, wall_s=100 / tps + 0.1, match=match)


def test_aggregate_geomean_per_category_and_overall():
    prompts = [S.Prompt("a", "codegen", "x"), S.Prompt("b", "codegen", "y"), S.Prompt("c", "extract", "z")]
    modes = [M.BenchMode("plain", Mode.PLAIN, 0), M.BenchMode("ngram", Mode.NGRAM)]
    res = B.Result(prompts, modes, B.Settings())
    runs = []
    for i, (pid, cat, plain, ngram) in enumerate([("a", "codegen", 10, 5), ("b", "codegen", 10, 20), ("c", "extract", 10, 40)]):
        p = _run(2 * i, pid, cat, "plain", plain, match="reference")
        n = _run(2 * i + 1, pid, cat, "ngram", ngram, drafted=10, accepted=4, draft_steps=5, k_hist={0: 3, 2: 5}, match="exact")
        n.speedup, p.speedup = ngram / plain, 1.0
        runs += [p, n]
    res.runs = runs
    agg = R.aggregate(res)
    ng = next(e for e in agg["summary"]["modes"] if e["mode"] == "ngram")
    assert ng["speedup"]["geomean"] == pytest.approx((0.5 * 2 * 4) ** (1 / 3), rel=1e-3)
    assert (ng["speedup"]["min"], ng["speedup"]["max"]) == (0.5, 4.0)
    assert ng["by_category"]["codegen"]["geomean"] == pytest.approx(1.0, rel=1e-3)
    assert ng["by_category"]["extract"] == {"geomean": 4.0, "min": 4.0, "max": 4.0, "n": 1}
    assert ng["acceptance_rate"] == 0.4 and ng["mean_accepted_length"] == 0.8
    assert ng["k_histogram"] == {"0": 9, "2": 15} and ng["matches"] == {"exact": 3, "near-tie": 0, "MISMATCH": 0}
    assert ng["decode_tokens_per_s_median"] == 20.0
    assert agg["summary"]["categories"] == ["codegen", "extract"]


def test_footnote_warns_about_a_busy_machine():
    doc = {"settings": {"greedy": True, "near_tie_bound": 0.5, "modes": ["plain", "auto"]},
           "machine": {"cores_usable": 2, "cores_logical": 2}, "loadavg": {"command_start": [0.3, 0.2, 0.1]}}
    assert "busy" not in T.footnote(doc) and "near-tie" in T.footnote(doc)
    doc["loadavg"]["command_start"] = [6.1, 5.0, 4.0]
    assert "busy before the benchmark started (load average 6.1 on 2 cores)" in T.footnote(doc)


def test_geomean_ignores_missing_values():
    assert R.geomean([2.0, 8.0, None]) == pytest.approx(4.0)
    assert R.geomean([]) is None


# ------------------------------------------------------------------------- in-process, tiny models
def _bench(load, draft_name, modes, **settings):
    target, draft = load("target", n_ctx=512), load(draft_name, n_ctx=512)
    suite = S.parse_suite("".join(json.dumps(r) + "\n" for r in TINY_SUITE[:3]), "tiny")
    kw = {"max_tokens": 24, "warmup": False, **settings}
    b = B.Bench(target, draft, suite, M.parse_modes(modes), B.Settings(**kw))
    b.prepare()
    return b


def test_self_draft_runs_are_cold_independent_and_exact(load, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESPEC_CACHE", str(tmp_path / "cache"))
    b = _bench(load, "self_draft", ["plain,model-k3,ngram,auto"], repeats=2)
    res = b.run()
    assert [(r.repeat, r.prompt_id, r.mode) for r in res.runs] == documented_order(
        ["code-1", "chat-1", "edit-1"], ["plain", "model-k3", "ngram", "auto"], 2)
    for r in res.runs:
        assert r.stats.prefill_tokens == r.stats.prompt_tokens - 1  # nothing reused from the previous mode's KV cache
        assert r.stats.generated > 0 and r.stats.tokens_per_s > 0 and r.peak_rss and r.peak_rss > 0
        assert r.match == ("reference" if r.mode == "plain" else "exact"), (r.mode, r.first_diff, r.margin)
        assert r.speedup is not None and r.speedup > 0
    k3 = [r for r in res.runs if r.mode == "model-k3"]
    assert sum(r.stats.accepted for r in k3) == sum(r.stats.drafted for r in k3) > 0  # the target drafting for itself
    # plain is plain: no drafts, never the draft model
    assert all(r.stats.drafted == 0 and set(r.stats.drafter_steps) == {"none"} for r in res.runs if r.mode == "plain")


def test_lockstep_gives_each_mode_its_own_context_and_the_same_outputs(load, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESPEC_CACHE", str(tmp_path / "cache"))
    modes = ["plain,model-k3,ngram,auto"]
    seq = _bench(load, "draft", modes, repeats=2).run()
    b = _bench(load, "draft", modes, repeats=2, lockstep=True)
    try:
        lock = b.run()
        assert len({id(t) for t, _ in b._contexts.values()}) == 4  # one target context per mode
    finally:
        b.close()
    assert [(r.repeat, r.prompt_id, r.mode) for r in lock.runs] == [(r.repeat, r.prompt_id, r.mode) for r in seq.runs]
    for a, r in zip(seq.runs, lock.runs):
        assert r.tokens == a.tokens  # greedy: side by side changes nothing but the timing
        assert r.stats.prefill_tokens == r.stats.prompt_tokens - 1 and r.stats.tokens_per_s > 0 and r.speedup > 0
        assert r.wall_s == pytest.approx(r.stats.t_prefill + r.stats.t_decode)  # its own steps, not the others'
        if r.mode in ("plain", "model-k3"):  # fixed choices (auto's depend on the step timings)
            assert (r.stats.drafted, r.stats.accepted) == (a.stats.drafted, a.stats.accepted)
        assert r.match in ("reference", "exact")
    assert b._contexts == {}


def test_a_twin_context_shares_weights_not_the_cache(load):
    target = load("target")
    twin = target.twin(256)
    try:
        prompt = target.tokenize("hello world, hello")
        a = target.eval(prompt, logits="last")[-1].copy()
        assert twin.n_past == 0 and twin.n_ctx == 256
        b = twin.eval(prompt, logits="last")[-1].copy()
        assert (a.argmax(), len(a)) == (b.argmax(), len(b))
        assert abs(a - b).max() < 1e-4
        twin.rollback(0)
        assert target.n_past == len(prompt)  # the original's cache is untouched
    finally:
        twin.close()
    assert target.eval([5], logits="last") is not None  # and the weights are still there


def test_divergence_is_classified_by_the_target_margin(load, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESPEC_CACHE", str(tmp_path / "cache"))
    b = _bench(load, "draft", ["plain,model-k2"])
    plain, = b._run_group([(0, 0, 0, b.modes[0])], lockstep=False)
    spec, = b._run_group([(1, 0, 0, b.modes[1])], lockstep=False)
    i = 5
    spec.tokens = plain.tokens[:i] + [(plain.tokens[i] + 1) % 200 + 3] + plain.tokens[i + 1:]
    ctx = b.tokens[0] + plain.tokens[:i]
    margin = X.top2_margin(b.target, ctx)
    assert margin > 0
    b.settings.near_tie = margin + 1.0
    b._compare([plain, spec])
    assert (spec.match, spec.first_diff, spec.margin) == ("near-tie", i, pytest.approx(margin, abs=1e-4))
    b.settings.near_tie = margin / 2
    b._compare([plain, spec])
    assert spec.match == "MISMATCH"


def test_sampling_runs_have_no_match_check(load, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESPEC_CACHE", str(tmp_path / "cache"))
    b = _bench(load, "draft", ["plain,model-k2"], sampling=SamplingParams(temperature=0.8), seed=3)
    res = b.run()
    assert all(r.match is None for r in res.runs)
    assert all(r.speedup and r.speedup > 0 for r in res.runs)


def test_bench_refuses_prompts_that_do_not_fit(load):
    target = load("target", n_ctx=64)
    suite = S.parse_suite(json.dumps({"id": "long", "category": "chat", "prompt": "x " * 80}) + "\n", "s")
    with pytest.raises(Exception, match="prompt 'long'"):
        B.Bench(target, None, suite, M.parse_modes(["plain"]), B.Settings(max_tokens=8))


# ------------------------------------------------------------------------------------ the CLI
def test_help_documents_the_order(cli_env):
    proc = edgespec(["bench", "--help"], dict(cli_env, COLUMNS="200"))
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    for flag in ("--prompts", "--category", "--modes", "--repeats", "--max-tokens", "--quick", "--temp", "--json",
                 "--csv", "--plot", "--compare", "--llama-cpp-bin"):
        assert flag in text
    assert "starting at mode r mod M" in text and "wrapping around" in text


def test_bench_end_to_end_on_tiny_models(tiny, cli_env, tmp_path):
    suite = write_suite(tmp_path / "suite.jsonl")
    out_json, out_csv = tmp_path / "b.json", tmp_path / "b.csv"
    # --near-tie 0.01: the tiny F32 models differ from batched evaluation by ~1e-5, so any wider divergence is a bug
    proc = edgespec(["bench", "-m", tiny["target"], "-d", tiny["draft"], "--prompts", suite, "--quick", "--repeats", "2",
                     "--max-tokens", "16", "--near-tie", "0.01", "--json", out_json, "--csv", out_csv, "--details"],
                    cli_env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in ("plain", "model-k4", "auto", "speedup", "decode tok/s", "extract (1)", "all (3)"):
        assert needle in proc.stdout, needle

    doc = json.loads(out_json.read_text())
    modes = ["plain", "model-k2", "model-k4", "model-k6", "ngram", "auto"]
    assert doc["settings"]["modes"] == modes and doc["settings"]["repeats"] == 2 and doc["settings"]["greedy"]
    assert doc["settings"]["near_tie_bound"] == 0.01 and doc["process_peak_rss_bytes"] > 0 and not doc["interrupted"]
    assert len(doc["loadavg"]["before"]) == len(doc["loadavg"]["after"]) == len(doc["loadavg"]["command_start"]) == 3
    assert [p["id"] for p in doc["prompts"]] == ["code-1", "edit-1", "extract-1"]
    order = [(o["repeat"], o["prompt"], o["mode"]) for o in doc["run_order"]]
    assert order == documented_order(["code-1", "edit-1", "extract-1"], modes, 2)
    assert [(r["repeat"], r["prompt"], r["mode"]) for r in doc["runs"]] == order
    assert [r["seq"] for r in doc["runs"]] == list(range(len(order)))

    for key in ("cpu", "cores_logical", "ram_bytes", "gpu", "backend", "devices"):
        assert key in doc["machine"]
    assert doc["machine"]["cores_logical"] >= 1 and doc["machine"]["ram_bytes"] > 0
    assert set(doc["versions"]) == {"edgespec", "llama_cpp", "numpy", "python"}
    for role in ("target", "draft"):
        m = doc["models"][role]
        assert m["path"] == str(tiny[role]) and len(m["sha256"]) == 64 and m["sha256_source"] == "computed"
    assert doc["warmup"]["modes"] == modes and doc["calibration"]["verify_s"]

    for r in doc["runs"]:
        assert r["prompt_tokens"] > 0 and r["prefill_tokens"] == r["prompt_tokens"] - 1
        assert 0 < r["generated_tokens"] <= (12 if r["prompt"] == "extract-1" else 16)
        assert r["decode_tokens_per_s"] > 0 and r["prefill_tokens_per_s"] > 0 and r["e2e_tokens_per_s"] > 0
        assert 0.0 <= r["acceptance_rate"] <= 1.0 and 0 <= r["accepted"] <= r["drafted"]
        assert r["speedup"] > 0 and r["peak_rss_bytes"] > 0
        assert r["match"] in (("reference",) if r["mode"] == "plain" else ("exact", "near-tie")), r
        assert sum(r["k_histogram"].values()) == r["target_passes"] == sum(r["drafter_steps"].values())
        if r["mode"].startswith("model-k"):
            assert r["drafted"] > 0 and max(int(k) for k in r["k_histogram"]) == int(r["mode"][7:])
        if r["mode"] == "plain":
            assert r["drafted"] == 0 and r["speedup"] == 1.0
    for e in doc["results"]:
        assert e["repeats"] == 2 and 0.0 <= e["acceptance_rate"] <= 1.0 and e["decode_tokens_per_s"] > 0
    summary = {e["mode"]: e for e in doc["summary"]["modes"]}
    assert set(summary) == set(modes)
    for name, e in summary.items():
        assert e["speedup"]["n"] == 3 and e["speedup"]["min"] <= e["speedup"]["geomean"] <= e["speedup"]["max"]
        assert set(e["by_category"]) == {"codegen", "edit", "extract"}
        if name != "plain":
            assert sum(e["matches"].values()) == 6 and e["matches"]["MISMATCH"] == 0

    # token ids: the prompt as templated and every reply, so the run can be replayed offline
    for p in doc["prompts"]:
        assert len(p["token_ids"]) == p["prompt_tokens"]
    for r in doc["runs"]:
        assert len(r["token_ids"]) == r["generated_tokens"]
        # the step log: one entry per target pass, adding up to the run's totals
        log = r["step_log"]
        assert len(log) == r["target_passes"] and sum(n for _, n, _, _ in log) == r["drafted"]
        assert sum(a for _, _, a, _ in log) == r["accepted"] and all(t > 0 for *_, t in log)
        assert {d for d, n, _, _ in log if n} <= ({"none"} if r["mode"] == "plain" else {"model", "ngram"})
        assert sum(a + 1 for _, _, a, _ in log) >= r["generated_tokens"]  # the last step may be cut at the budget
    traces = traces_from_bench(doc)
    assert traces["position"] > 0 and traces["attend_s"] is not None  # how batches grow with the context
    assert [t["id"] for t in traces["prompts"]] == ["code-1", "edit-1", "extract-1"]
    for t in traces["prompts"]:
        first_plain = next(r for r in doc["runs"] if r["prompt"] == t["id"] and r["mode"] == "plain")
        assert t["answer"] == first_plain["token_ids"] and set(t["measured"]) == set(modes) - {"plain"}
        rep = replay(t["prompt"], t["answer"], costs_from_traces(traces))
        assert rep.speedup > 0 and rep.stats.generated == len(t["answer"])
    assert '"token_ids": [' in out_json.read_text()  # one line per list, not one per token
    assert re.search(r'\n\s*\["(none|model|ngram)",\d+,\d+,[\d.e-]+\]', out_json.read_text())  # one line per step

    with open(out_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(doc["runs"]) and "token_ids" not in rows[0]
    assert rows[1]["mode"] == "model-k2" and float(rows[1]["decode_tokens_per_s"]) > 0
    assert rows[0]["target_sha256"] == doc["models"]["target"]["sha256"] and rows[0]["cpu"] == str(doc["machine"]["cpu"])


def test_bad_suite_line_fails_with_one_line(tiny, cli_env, tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps(TINY_SUITE[0]) + "\n" + '{"id": "b", "category": "chat", "prompt": 3}\n')
    proc = edgespec(["bench", "-m", tiny["target"], "--prompts", path], cli_env)
    assert_one_line_error(proc, f"{path}:2:", '"prompt" must be a non-empty string')


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--modes", "plain,warp"], ["unknown mode 'warp'"]),
        (["--category", "poetry"], ["no prompts in category 'poetry'"]),
        (["--compare", "vllm"], ["--compare takes llama-cpp"]),
        (["--compare", "llama-cpp"], ["needs --llama-cpp-bin"]),
        (["--compare", "llama-cpp", "--llama-cpp-bin", "/nonexistent/llama"], ["/nonexistent/llama does not exist"]),
        (["--json", "/nonexistent/dir/out.json"], ["does not exist"]),
    ],
)
def test_bad_options_fail_with_one_line(tiny, cli_env, tmp_path, args, needles):
    suite = write_suite(tmp_path / "suite.jsonl")
    proc = edgespec(["bench", "-m", tiny["target"], "-d", tiny["draft"], "--prompts", suite, *args], cli_env)
    assert_one_line_error(proc, *needles)


def test_model_modes_need_a_draft(tiny, cli_env, tmp_path):
    suite = write_suite(tmp_path / "suite.jsonl")
    proc = edgespec(["bench", "-m", tiny["target"], "--prompts", suite, "--modes", "plain,model-k2"], cli_env)
    assert_one_line_error(proc, "model-k2 need a draft model")


def test_compare_without_a_binary_in_the_directory(tiny, cli_env, tmp_path):
    suite = write_suite(tmp_path / "suite.jsonl")
    proc = edgespec(["bench", "-m", tiny["target"], "-d", tiny["draft"], "--prompts", suite, "--compare", "llama-cpp",
                     "--llama-cpp-bin", tmp_path], cli_env)
    assert_one_line_error(proc, f"no llama-speculative-simple in {tmp_path}")


def test_plot(tiny, cli_env, tmp_path):
    suite = write_suite(tmp_path / "suite.jsonl")
    png = tmp_path / "speedup.png"
    args = ["bench", "-m", tiny["target"], "--prompts", suite, "--modes", "plain,ngram", "--category", "edit",
            "--category", "extract", "--max-tokens", "8", "--no-warmup", "--plot", png]
    proc = edgespec(args, cli_env, timeout=300)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert_one_line_error(proc, "--plot needs matplotlib")
        assert not png.exists()
        return
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------ llama.cpp compare
SAMPLE_STDERR = """\
build: 7070 (1c2d3e4) with cc (Debian 12.2.0-14) 12.2.0 for x86_64-linux-gnu
llama_model_loader: loaded meta data with 26 key-value pairs and 339 tensors from qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
main: speculative decoding will use the draft model
encoded  123 tokens in    0.812 seconds, speed:  151.478 t/s
decoded   81 tokens in    4.104 seconds, speed:   19.737 t/s

n_draft   = 4
n_predict = 81
n_drafted = 96
n_accept  = 57
accept    = 59.375%

draft:

llama_perf_context_print:        load time =     312.09 ms
llama_perf_context_print: prompt eval time =     301.13 ms /   122 tokens (    2.47 ms per token,   405.14 tokens per second)
llama_perf_context_print:        eval time =    1543.47 ms /    96 runs   (   16.08 ms per token,    62.20 tokens per second)

target:

common_perf_print:    sampling time =      12.13 ms
common_perf_print:        load time =     801.34 ms
common_perf_print:        eval time =    2398.01 ms /    57 runs   (   42.07 ms per token,    23.77 tokens per second)
"""


# Captured from llama-speculative-simple built from the llama.cpp that llama-cpp-python 0.3.36 vendors
# (version 0.5.0-dev, commit 0c1e570), on the tiny models: its log lines carry a timestamp and a level.
REAL_STDERR = """\
0.00.028.562 I cmn          init: llama threadpool init, n_threads = 2
0.00.111.713 I common_speculative_init_result: loading draft model 'draft.gguf'
0.00.262.575 I encoded   67 tokens in    0.002 seconds, speed: 31753.555 t/s
0.00.262.577 I decoded   20 tokens in    0.146 seconds, speed:  136.843 t/s
0.00.262.587 I 
0.00.262.588 I n_draft   = 4
0.00.262.588 I n_predict = 20
0.00.262.588 I n_drafted = 19
0.00.262.589 I n_accept  = 14
0.00.262.589 I accept    = 73.684%
0.00.262.589 I 
0.00.262.589 I draft:

0.00.262.627 I 
0.00.262.628 I target:

0.00.262.630 I common_perf_print:    sampling time =       0.03 ms
0.00.262.632 I common_perf_print: prompt eval time =       4.46 ms /    93 tokens (    0.05 ms per token, 20847.34 tokens per second)
0.00.262.633 I common_perf_print:        eval time =       0.00 ms /     1 runs   (    0.00 ms per token,      inf tokens per second)
"""


def test_parse_llama_cpp_output():
    real = L.parse_output(REAL_STDERR)
    assert (real.encoded, real.t_encode, real.decoded, real.t_decode) == (67, 0.002, 20, 0.146)
    assert (real.n_draft, real.n_predict, real.n_drafted, real.n_accept) == (4, 20, 19, 14)
    got = L.parse_output(SAMPLE_STDERR)
    assert (got.encoded, got.t_encode, got.decoded, got.t_decode) == (123, 0.812, 81, 4.104)
    assert (got.n_draft, got.n_predict, got.n_drafted, got.n_accept) == (4, 81, 96, 57)
    assert got.decode_tps == pytest.approx(81 / 4.104)
    # with log prefixes and timestamps (llama.cpp's --log-prefix --log-timestamps)
    prefixed = "\n".join(f"0.01.234.567 I {ln}" for ln in SAMPLE_STDERR.splitlines())
    assert L.parse_output(prefixed) == got
    with pytest.raises(Exception, match="no 'decoded N tokens in X seconds' line"):
        L.parse_output("main: error: failed to load model\n")


def test_generated_text_follows_the_echoed_prompt():
    prompt = "<|im_start|>user\nhé<|im_end|>\n<|im_start|>assistant\n"
    echo = prompt.encode()
    assert L.generated_text(b"\n\n" + echo + b"Hello there.\n\n\n\n", echo) == b"Hello there."
    assert L.generated_text(b"\n\n<s> " + echo + b"x\xe2\x9c", b"nope", echo) == b"x\xe2\x9c"  # cut inside a character
    assert L.generated_text(b"nothing like it", echo) is None


def test_prompt_echo_is_what_llama_cpp_prints(load):
    from edgespec.session.loading import prompt_tokens

    m = load("target")
    toks = prompt_tokens(m, "def fib(n):")
    echo = L.prompt_echo(m, toks)
    # special tokens included (BOS prints as <s>); the byte-level tiny vocabulary prints spaces as U+2581
    assert echo.startswith(b"<s>") and b"<|im_start|>user\n" in echo and echo.endswith(b"<|im_start|>assistant\n")
    assert b"def\xe2\x96\x81fib(n):" in echo


FAKE = r'''#!{python}
import json, os, sys
args = sys.argv[1:]
if "--help" in args:
    print("--spec-draft-n-max N   number of tokens to draft (default: 3)\n"
          "--spec-type none,draft-simple,draft-eagle3,ngram-simple\n"
          "-e,    --escape, --no-escape   whether to process escapes sequences (\\n, \\r, \\t, \\', \\\", \\\\)")
    sys.exit(0)
if "--version" in args:
    print("version: 7070 (1c2d3e4)", file=sys.stderr)
    sys.exit(0)
opt = lambda name: args[args.index(name) + 1]
with open(opt("-f"), encoding="utf-8", newline="") as f:
    prompt = f.read()
if prompt.endswith("\n"):  # what llama.cpp's -f does
    prompt = prompt[:-1]
if "--no-escape" not in args:  # and what it does to escapes by default
    prompt = prompt.replace("\\n", "\n").replace("\\t", "\t")
with open(os.environ["FAKE_SPEC_LOG"], "a", encoding="utf-8") as log:
    log.write(json.dumps({{"argv": args, "prompt": prompt}}) + "\n")
if os.environ.get("FAKE_SPEC_FAIL") == "sigill":  # what llama.cpp's AMX kernels do where they crash
    import signal
    os.kill(os.getpid(), signal.SIGILL)
if os.environ.get("FAKE_SPEC_FAIL"):
    print("error: invalid argument: --spec-draft-n-max", file=sys.stderr)
    sys.exit(1)
texts = json.loads(os.environ.get("FAKE_SPEC_TEXTS", "{{}}"))
reply = bytes.fromhex(next((t for p, t in texts.items() if prompt.find(p) >= 0), b"hello".hex()))
n = int(opt("-n"))
if os.environ.get("FAKE_SPEC_MANGLE"):  # an echo that is not the prompt edgespec rendered
    prompt = prompt.replace("<|im_start|>", "<|im_begin|>")
sys.stdout.buffer.write(b"\n\n" + prompt.encode("utf-8") + reply + b"\n\n\n\n")
sys.stdout.flush()
sys.stderr.write("""{sample}""".replace(" 81 tokens", " %d tokens" % n))
'''


def fake_binary(tmp_path: Path) -> Path:
    d = tmp_path / "llama-bin"
    d.mkdir()
    exe = d / "llama-speculative-simple"
    exe.write_text(FAKE.format(python=sys.executable, sample=SAMPLE_STDERR))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return d


def plain_replies(target_path: Path, rows, max_tokens: int) -> dict[str, str]:
    """What plain greedy decoding says to each prompt, as hex bytes (the fake binary prints it, so the match
    check can pass; random tiny models print invalid UTF-8 too)."""
    from edgespec.core.engine import generate
    from edgespec.llama.model import Model
    from edgespec.session.loading import prompt_tokens

    out = {}
    with Model(target_path, n_ctx=512, n_threads=2) as m:
        for row in rows:
            toks = prompt_tokens(m, row["prompt"], system=row.get("system"))
            gen = [t for s in generate(m, None, toks, k=0, max_tokens=max_tokens) for t in s.tokens]
            out[row["prompt"]] = b"".join(m.piece(t) for t in gen).hex()
    return out


def test_compare_llama_cpp_with_a_stand_in_binary(tiny, cli_env, tmp_path):
    # a prompt with a backslash escape in it, as code has: llama.cpp must get it as written
    rows = [dict(TINY_SUITE[0], prompt=TINY_SUITE[0]["prompt"] + ' Use print("a\\nb").'), TINY_SUITE[4]]
    suite = write_suite(tmp_path / "suite.jsonl", rows)
    log = tmp_path / "calls.jsonl"
    replies = plain_replies(tiny["target"], rows, 16)
    second = bytes.fromhex(replies[rows[1]["prompt"]])
    replies[rows[1]["prompt"]] = (second[:3] + bytes([second[3] ^ 0x01]) + second[4:]).hex()  # differs at byte 3
    env = dict(cli_env, FAKE_SPEC_LOG=str(log), FAKE_SPEC_TEXTS=json.dumps(replies))
    proc = edgespec(["bench", "-m", tiny["target"], "-d", tiny["draft"], "--prompts", suite, "--modes", "plain,model-k4",
                     "--compare", "llama-cpp", "--llama-cpp-bin", fake_binary(tmp_path), "--max-tokens", "16",
                     "--threads", "2", "--json", "-"], env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # --json -: JSON alone on stdout, the tables on stderr
    assert "llama.cpp-spec-k4" in proc.stderr
    assert doc["settings"]["modes"] == ["plain", "model-k4", "llama.cpp-spec-k4"]
    assert doc["settings"]["llama_cpp"]["version"] == "7070 (1c2d3e4)"
    runs = [r for r in doc["runs"] if r["mode"] == "llama.cpp-spec-k4"]
    assert len(runs) == 2
    for r in runs:
        assert (r["prompt_tokens"], r["generated_tokens"], r["drafted"], r["accepted"]) == (123, 16, 96, 57)
        assert r["decode_tokens_per_s"] == pytest.approx(16 / 4.104, rel=1e-3)
        assert r["prefill_s"] == 0.812 and r["acceptance_rate"] == pytest.approx(57 / 96, abs=1e-4)
        assert r["mean_accepted_length"] is None and r["peak_rss_bytes"] > 0
    # the bytes after the echoed prompt, compared with plain decoding
    assert runs[0]["match"] == "exact" and runs[0]["first_diff"] is None, runs[0]
    assert runs[1]["match"] in ("MISMATCH", "near-tie") and runs[1]["first_diff"] <= 3 and runs[1]["margin"] is not None
    summary = {e["mode"]: e for e in doc["summary"]["modes"]}
    assert summary["llama.cpp-spec-k4"]["speedup"]["n"] == 2

    calls = [json.loads(ln) for ln in log.read_text().splitlines()]
    assert len(calls) == 2
    for call, row in zip(calls, rows):
        argv = call["argv"]
        flag = lambda name: argv[argv.index(name) + 1]  # noqa: E731
        assert flag("-m") == str(tiny["target"]) and flag("-md") == str(tiny["draft"])
        assert flag("-n") == "16" and flag("--spec-draft-n-max") == "4" and flag("--spec-draft-n-min") == "0"
        assert flag("--spec-type") == "draft-simple" and flag("--spec-draft-p-min") == "0"
        assert flag("--temp") == "0" and flag("-t") == "2" and flag("-ngl") == "0" and flag("-ngld") == "0"
        assert flag("-c") == str(doc["settings"]["ctx"]) and flag("-ub") == str(doc["settings"]["n_batch"])  # as loaded
        assert "--no-escape" in argv
        # the prompt file is the chat-template rendering, byte for byte after llama.cpp drops one newline
        assert call["prompt"].startswith("<|im_start|>") and call["prompt"].endswith("<|im_start|>assistant\n")
        assert row["prompt"] in call["prompt"]
    assert "<|im_start|>system\nAnswer in JSON.<|im_end|>" in calls[1]["prompt"]


def test_a_llama_cpp_reply_that_cannot_be_read_is_named(tiny, cli_env, tmp_path):
    suite = write_suite(tmp_path / "suite.jsonl", [TINY_SUITE[0]])
    env = dict(cli_env, FAKE_SPEC_LOG=str(tmp_path / "calls.jsonl"), FAKE_SPEC_MANGLE="1")
    proc = edgespec(["bench", "-m", tiny["target"], "-d", tiny["draft"], "--prompts", suite, "--modes", "plain",
                     "--compare", "llama-cpp", "--llama-cpp-bin", fake_binary(tmp_path), "--max-tokens", "8", "--no-warmup",
                     "--json", "-"], env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    run = next(r for r in json.loads(proc.stdout)["runs"] if r["mode"] == "llama.cpp-spec-k4")
    assert run["text"] is None and run["match"] is None
    assert "did not echo the prompt it was given on code-1" in " ".join(proc.stderr.split())


def test_compare_llama_cpp_failure_is_one_line(tiny, cli_env, tmp_path):
    suite = write_suite(tmp_path / "suite.jsonl", [TINY_SUITE[0]])
    env = dict(cli_env, FAKE_SPEC_LOG=str(tmp_path / "calls.jsonl"), FAKE_SPEC_FAIL="1")
    proc = edgespec(["bench", "-m", tiny["target"], "-d", tiny["draft"], "--prompts", suite, "--modes", "plain",
                     "--compare", "llama-cpp", "--llama-cpp-bin", fake_binary(tmp_path), "--max-tokens", "8", "--no-warmup"], env, timeout=300)
    assert_one_line_error(proc, "llama-speculative-simple failed (exit code 1)", "invalid argument: --spec-draft-n-max")


def test_a_llama_cpp_binary_killed_by_an_illegal_instruction_says_how_to_rebuild(tiny, cli_env, tmp_path):
    suite = write_suite(tmp_path / "suite.jsonl", [TINY_SUITE[0]])
    env = dict(cli_env, FAKE_SPEC_LOG=str(tmp_path / "calls.jsonl"), FAKE_SPEC_FAIL="sigill")
    proc = edgespec(["bench", "-m", tiny["target"], "-d", tiny["draft"], "--prompts", suite, "--modes", "plain",
                     "--compare", "llama-cpp", "--llama-cpp-bin", fake_binary(tmp_path), "--max-tokens", "8", "--no-warmup"], env, timeout=300)
    assert_one_line_error(proc, f"llama-speculative-simple failed (exit code {-signal.SIGILL})", "illegal instruction",
                          "scripts/build_llama_cpp_tools.sh")


def test_llama_cpp_is_built_without_amx_where_edgespec_loads_without_it():
    intel = {"sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", "avx512f", "avx512vbmi", "avx512_vnni", "avx512_bf16",
             "amx_tile", "amx_int8", "amx_bf16"}
    assert L.cmake_cpu_args(intel, avoid_amx=False) == []  # the native build, AMX and all
    args = L.cmake_cpu_args(intel, avoid_amx=True)
    assert args[0] == "-DGGML_NATIVE=OFF"
    on = {a[2:-3] for a in args if a.endswith("=ON")}
    assert on == {"GGML_SSE42", "GGML_AVX", "GGML_AVX2", "GGML_FMA", "GGML_F16C", "GGML_BMI2", "GGML_AVX512",
                  "GGML_AVX512_VBMI", "GGML_AVX512_VNNI", "GGML_AVX512_BF16"}
    assert {"-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF", "-DGGML_AVX_VNNI=OFF"} <= set(args)
    # a CPU without AVX-512 (forced off by EDGESPEC_AMX=off there) gets none of it
    avx2 = {a[2:-3] for a in L.cmake_cpu_args({"avx", "avx2", "fma", "f16c", "bmi2"}, avoid_amx=True) if a.endswith("=ON")}
    assert avx2 == {"GGML_AVX", "GGML_AVX2", "GGML_FMA", "GGML_F16C", "GGML_BMI2"}


def test_the_cmake_args_command_follows_the_amx_setting(cli_env):
    """What scripts/build_llama_cpp_tools.sh asks: nothing where AMX is not avoided, the named sets where it is."""
    cmd = [sys.executable, "-m", "edgespec.bench.llamacpp", "cmake-args"]
    env = dict(cli_env, EDGESPEC_AMX="off")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    from edgespec.machine.cpu_paths import decide

    if decide("off").avoids_amx:  # llama.cpp offers AMX here
        assert proc.stdout.split()[0] == "-DGGML_NATIVE=OFF" and "-DGGML_AMX_INT8=OFF" in proc.stdout.split()
        assert "without AMX" in proc.stderr
    else:
        assert proc.stdout.strip() == "" and proc.stderr == ""
    assert subprocess.run(cmd[:-1] + ["bogus"], env=env, capture_output=True, timeout=120).returncode == 2


def test_old_llama_cpp_flag_names(tmp_path):
    exe = tmp_path / "llama-speculative-simple"
    exe.write_text(f"#!{sys.executable}\nprint('--draft-max, --draft, --draft-n N   number of tokens to draft')\n")
    exe.chmod(0o755)
    runner = L.LlamaCpp(L.find_binary(tmp_path), L.Load(n_ctx=512, threads=2))
    cmd = runner.command("t.gguf", "d.gguf", "p.txt", k=6, max_tokens=32, seed=1)
    assert cmd[cmd.index("--draft-max") + 1] == "6" and "--spec-draft-n-max" not in cmd and "--spec-type" not in cmd
    assert "-ctk" not in cmd and "-fa" not in cmd and "--no-mmap" not in cmd


def test_llama_cpp_gets_the_memory_plan(tmp_path):
    exe = tmp_path / "llama-speculative-simple"
    exe.write_text(f"#!{sys.executable}\nprint('--spec-draft-n-max N\\n-fa, --flash-attn [on|off|auto]\\n"
                   f"-ctkd, --cache-type-k-draft TYPE')\n")
    exe.chmod(0o755)
    load = L.Load(n_ctx=8192, threads=4, n_gpu_layers=-1, draft_gpu_layers=12, n_batch=256, type_k="q8_0", type_v="q8_0",
                  use_mmap=False, use_mlock=True)
    cmd = L.LlamaCpp(L.find_binary(tmp_path), load).command("t.gguf", "d.gguf", "p.txt", k=4, max_tokens=32, seed=1)
    flag = lambda name: cmd[cmd.index(name) + 1]  # noqa: E731
    assert (flag("-c"), flag("-t"), flag("-td"), flag("-ngl"), flag("-ngld")) == ("8192", "4", "4", "999", "12")
    assert (flag("-b"), flag("-ub"), flag("-ctk"), flag("-ctv"), flag("-ctkd"), flag("-ctvd")) == ("256", "256", "q8_0", "q8_0", "q8_0", "q8_0")
    assert flag("-fa") == "on" and "--no-mmap" in cmd and "--mlock" in cmd


def test_llama_cpp_ngram_modes_run_without_the_draft_model(tmp_path):
    exe = tmp_path / "llama-speculative-simple"
    exe.write_text(f"#!{sys.executable}\nprint('--spec-draft-n-max N\\n--spec-type [draft-simple|ngram-mod|ngram-map-k]')\n")
    exe.chmod(0o755)
    runner = L.LlamaCpp(L.find_binary(tmp_path), L.Load(n_ctx=2048, threads=2))
    cmd = runner.command("t.gguf", None, "p.txt", k=None, max_tokens=300, seed=1, spec="ngram-mod")
    assert cmd[cmd.index("--spec-type") + 1] == "ngram-mod" and "-md" not in cmd and "--spec-draft-n-max" not in cmd
    with pytest.raises(UsageError, match="no --spec-type ngram-map-k4v"):
        runner.command("t.gguf", None, "p.txt", k=None, max_tokens=300, seed=1, spec="ngram-map-k4v")


@pytest.mark.skipif(not os.environ.get("EDGESPEC_LLAMA_CPP_BIN"), reason="set EDGESPEC_LLAMA_CPP_BIN to a directory with llama-speculative-simple")
def test_compare_with_the_real_llama_cpp_binary(tiny, cli_env, tmp_path):
    suite = write_suite(tmp_path / "suite.jsonl", TINY_SUITE[:2])
    out = tmp_path / "b.json"
    proc = edgespec(["bench", "-m", tiny["target"], "-d", tiny["draft"], "--prompts", suite, "--modes", "plain",
                     "--compare", "llama-cpp", "--llama-cpp-bin", os.environ["EDGESPEC_LLAMA_CPP_BIN"],
                     "--max-tokens", "24", "--no-warmup", "--json", out], cli_env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    runs = [r for r in json.loads(out.read_text())["runs"] if r["mode"] == "llama.cpp-spec-k4"]
    assert len(runs) == 2
    for r in runs:
        assert r["generated_tokens"] >= 24 and r["decode_tokens_per_s"] > 0 and 0 < r["accepted"] <= r["drafted"]
        assert r["match"] in ("exact", "near-tie"), r  # same weights, greedy: llama.cpp says what plain decoding says
