"""The benchmark's tables on the terminal (Rich), and the notes under them."""

from __future__ import annotations

from pathlib import Path

from edgespec.bench.modes import PLAIN


def _fmt(x: float | None, spec: str = ".2f", none: str = "-") -> str:
    return none if x is None else format(x, spec)


def _bytes(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _match_cell(matches: dict, greedy: bool, mode: str) -> str:
    if not greedy:
        return "n/a (sampling)"
    if mode == PLAIN:
        return "reference"
    total = sum(matches.values())
    if not total:
        return "-"
    parts = [f"{matches['exact']}/{total} exact"]
    if matches["near-tie"]:
        parts.append(f"{matches['near-tie']} near-tie")
    if matches["MISMATCH"]:
        parts.append(f"[bold red]{matches['MISMATCH']} MISMATCH[/]")
    return " · ".join(parts)


def _drafting(steps: dict) -> str:
    total = sum(steps.values())
    if not total:
        return "-"
    parts = [f"{name} {100 * n / total:.0f}%" for name, n in sorted(steps.items(), key=lambda kv: -kv[1]) if name != "none"]
    return " · ".join(parts) or "none"


def _llama_drafting(e: dict) -> str:
    if e["mode"].startswith("llama.cpp-ngram"):
        return e["mode"][len("llama.cpp-"):] + " (its defaults)"
    return f"model (k={e['k']})"


def _speed_cell(c: dict) -> str:
    if not c or c.get("geomean") is None:
        return "-"
    if c["n"] == 1:
        return f"{c['geomean']:.2f}"
    return f"{c['geomean']:.2f} ({c['min']:.2f}-{c['max']:.2f})"


def _budget(doc: dict) -> str:
    budgets = [p.get("max_tokens") for p in doc["prompts"] if p.get("max_tokens")]
    if not budgets:
        return f"≤{doc['settings']['max_tokens']} tokens"
    lo, hi = min(budgets), max(budgets)
    return f"≤{lo} tokens" if lo == hi else f"≤{lo}-{hi} tokens"


def tables(doc: dict, details: bool = False) -> list:
    from rich.table import Table

    s = doc["settings"]
    greedy = s["greedy"]
    names = [Path((doc["models"].get(r) or {}).get("path", "")).name for r in ("target", "draft") if doc["models"].get(r)]
    n_prompts = len(doc["prompts"])
    title = (f"edgespec bench: {' + '.join(names)} · {n_prompts} prompts · {s['repeats']} repeat(s) · "
             f"{_budget(doc)} · {'greedy' if greedy else 'T=' + str(s['temperature'])}")
    t = Table(title=title, title_justify="left")
    for col, just in (("mode", "left"), ("decode tok/s", "right"), ("speedup", "right"), ("min-max", "right"),
                      ("prefill tok/s", "right"), ("accept", "right"), ("acc. len", "right"), ("drafting steps", "left"),
                      ("greedy output", "left"), ("peak RSS", "right")):
        t.add_column(col, justify=just)
    for e in doc["summary"]["modes"]:
        sp = e["speedup"]
        plain = e["mode"] == PLAIN
        t.add_row(
            e["mode"], _fmt(e["decode_tokens_per_s_median"], ".1f"),
            "1.00" if plain else _fmt(sp["geomean"]), "" if plain else f"{_fmt(sp['min'])}-{_fmt(sp['max'])}",
            _fmt(e["prefill_tokens_per_s_median"], ".0f"),
            "-" if plain or not e["drafted"] else f"{100 * e['acceptance_rate']:.0f}%",
            "-" if plain or not e["drafted"] else _fmt(e["mean_accepted_length"]),
            _drafting(e["drafter_steps"]) if not e["mode"].startswith("llama.cpp") else _llama_drafting(e),
            _match_cell(e["matches"], greedy, e["mode"]), _bytes(e["peak_rss_bytes"]),
        )
    out = [t]
    cats = doc["summary"]["categories"]
    modes = [e for e in doc["summary"]["modes"] if e["mode"] != PLAIN]
    if modes:
        c = Table(title="speedup over plain by category: geometric mean over prompts (min-max)", title_justify="left")
        c.add_column("category")
        for e in modes:
            c.add_column(e["mode"], justify="right")
        for cat in cats:
            n = sum(1 for p in doc["prompts"] if p["category"] == cat)
            c.add_row(f"{cat} ({n})", *(_speed_cell(e["by_category"].get(cat, {})) for e in modes))
        c.add_row(f"all ({n_prompts})", *(_speed_cell(e["speedup"]) for e in modes), style="bold")
        out.append(c)
    if details:
        d = Table(title="per prompt (median over repeats)", title_justify="left")
        for col in ("prompt", "mode", "prompt tok", "out tok", "prefill tok/s", "decode tok/s", "speedup", "accept",
                    "acc. len", "k histogram", "greedy output"):
            d.add_column(col, justify="left" if col in ("prompt", "mode", "k histogram", "greedy output") else "right")
        for e in doc["results"]:
            match = e["match"] or "-"
            if match == "MISMATCH":
                match = "[bold red]MISMATCH[/]"
            if e["min_margin"] is not None:
                match += f" (margin {e['min_margin']:.2f})"
            d.add_row(
                e["prompt"], e["mode"], str(e["prompt_tokens"]), _fmt(e["generated_tokens"], ".0f"),
                _fmt(e["prefill_tokens_per_s"], ".0f"), _fmt(e["decode_tokens_per_s"], ".1f"), _fmt(e["speedup"]),
                f"{100 * e['acceptance_rate']:.0f}%" if e["drafted"] else "-",
                _fmt(e["mean_accepted_length"]) if e["drafted"] else "-",
                " ".join(f"{k}:{v}" for k, v in e["k_histogram"].items()) or "-", match,
            )
        out.append(d)
    return out


def footnote(doc: dict) -> str:
    s = doc["settings"]
    lines = ["speedup: decode tokens/s over plain decoding of the same prompt and repeat; geometric mean over prompts."]
    if s["greedy"]:
        lines.append(f"greedy output vs plain: exact, near-tie (first differing token has a target top-2 logit margin "
                     f"< {s['near_tie_bound']}: batched CPU evaluation is not bit-identical), or MISMATCH (a bug).")
    busy = (doc.get("loadavg") or {}).get("command_start")
    cores = doc["machine"].get("cores_usable") or doc["machine"].get("cores_logical") or 1
    if busy and busy[0] >= max(1.0, cores / 2):
        lines.append(f"[yellow]the machine was busy before the benchmark started (load average {busy[0]:.1f} on {cores} "
                     f"cores): expect noisy timings[/]")
    if any(m.startswith("llama.cpp") for m in s["modes"]):
        lines.append("llama.cpp rows: llama.cpp's llama-speculative-simple (the draft model, or its own n-gram drafting), "
                     "timed by its own report, one process per prompt.")
    return "\n".join(lines)
