"""Benchmark results: aggregation, the machine and model description, JSON/CSV/PNG output, Rich tables.

Speedup is decode tokens/s over plain decoding's on the same prompt and repeat (paired); per prompt it
is the median over repeats, per category and overall the geometric mean over prompts, with min-max.
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

from edgespec.bench.modes import PLAIN
from edgespec.bench.runs import Result, Run
from edgespec.bench.suite import CATEGORIES
from edgespec.errors import UsageError

_MATCH_RANK = {"reference": 0, "exact": 1, "near-tie": 2, "MISMATCH": 3}
SCHEMA = 1
# A list of integers as json.dumps(indent=1) writes it: one per line. Real newlines never occur inside a JSON string.
_INT_LIST = re.compile(r"\[\n\s*(-?\d+(?:,\n\s*-?\d+)*)\n\s*\]")
_STEP = re.compile(r'\[\n\s*("\w+",\n\s*\d+,\n\s*\d+,\n\s*[-+.\deE]+)\n\s*\]')  # a step_log entry
ORDER_DOC = (
    "for each repeat r (0-based), for each prompt in suite order, every mode in turn starting at mode r mod M "
    "(M modes, in --modes order), wrapping around"
)


# ------------------------------------------------------------------------------------ statistics
def geomean(xs: Iterable[float]) -> float | None:
    xs = [x for x in xs if x is not None and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def _median(xs: Iterable[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _spread(xs: Sequence[float | None]) -> dict:
    xs = [x for x in xs if x is not None and x > 0]
    g = geomean(xs)
    return {"geomean": _r(g, 4), "min": _r(min(xs), 4) if xs else None, "max": _r(max(xs), 4) if xs else None, "n": len(xs)}


def _r(x: float | None, nd: int) -> float | None:
    return None if x is None else round(x, nd)


def _sum_hist(hists: Iterable[dict]) -> dict:
    out: dict = defaultdict(int)
    for h in hists:
        for k, v in h.items():
            out[k] += v
    return dict(sorted(out.items()))


def _matches(runs: Sequence[Run]) -> dict[str, int]:
    out = {"exact": 0, "near-tie": 0, "MISMATCH": 0}
    for r in runs:
        if r.match in out:
            out[r.match] += 1
    return out


def _pool(runs: Sequence[Run]) -> dict:
    drafted = sum(r.stats.drafted for r in runs)
    accepted = sum(r.stats.accepted for r in runs)
    steps = sum(r.stats.draft_steps for r in runs)
    mean_len = None if not all(r.per_step for r in runs) else (accepted / steps if steps else 0.0)
    return {
        "drafted": drafted, "accepted": accepted,
        "acceptance_rate": round(accepted / drafted, 4) if drafted else 0.0,
        "mean_accepted_length": _r(mean_len, 3),
        "k_histogram": {str(k): v for k, v in _sum_hist(r.stats.k_hist for r in runs).items()},
        "drafter_steps": _sum_hist(r.stats.drafter_steps for r in runs),
        "peak_rss_bytes": max((r.peak_rss for r in runs if r.peak_rss is not None), default=None),
        "matches": _matches(runs),
    }


def categories_of(result: Result) -> list[str]:
    present = []
    for p in result.prompts:
        if p.category not in present:
            present.append(p.category)
    return [c for c in CATEGORIES if c in present] + [c for c in present if c not in CATEGORIES]


def aggregate(result: Result) -> dict:
    """Per (prompt, mode) over repeats, and per mode over prompts (overall and by category)."""
    by: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for r in result.runs:
        by[(r.prompt_id, r.mode)].append(r)
    per_prompt = []
    for p in result.prompts:
        for m in result.modes:
            runs = by.get((p.id, m.name))
            if not runs:
                continue
            worst = max((r.match for r in runs if r.match), key=_MATCH_RANK.get, default=None)
            margins = [r.margin for r in runs if r.margin is not None]
            per_prompt.append({
                "prompt": p.id, "category": p.category, "mode": m.name, "k": m.k, "repeats": len(runs),
                "prompt_tokens": runs[0].stats.prompt_tokens,
                "generated_tokens": _median(r.stats.generated for r in runs),
                "prefill_s": _r(_median(r.stats.t_prefill for r in runs), 5),
                "prefill_tokens_per_s": _r(_median(r.stats.prefill_tokens_per_s for r in runs), 2),
                "decode_tokens_per_s": _r(_median(r.stats.tokens_per_s for r in runs), 3),
                "e2e_tokens_per_s": _r(_median(r.e2e_tps for r in runs), 3),
                "speedup": _r(_median(r.speedup for r in runs), 4),
                **_pool(runs),
                "match": worst, "min_margin": _r(min(margins), 4) if margins else None,
            })
    cats = categories_of(result)
    modes = []
    for m in result.modes:
        rows = [e for e in per_prompt if e["mode"] == m.name]
        runs = [r for r in result.runs if r.mode == m.name]
        if not rows:
            continue
        entry = {
            "mode": m.name, "k": m.k, "prompts": len(rows), "runs": len(runs),
            "decode_tokens_per_s_median": _r(_median(e["decode_tokens_per_s"] for e in rows), 3),
            "prefill_tokens_per_s_median": _r(_median(e["prefill_tokens_per_s"] for e in rows), 2),
            "e2e_tokens_per_s_median": _r(_median(e["e2e_tokens_per_s"] for e in rows), 3),
            "speedup": _spread([e["speedup"] for e in rows]),
            "by_category": {c: _spread([e["speedup"] for e in rows if e["category"] == c]) for c in cats},
            **_pool(runs),
        }
        checked = sum(entry["matches"].values())
        entry["exact_match_rate"] = round(entry["matches"]["exact"] / checked, 4) if checked else None
        modes.append(entry)
    return {"results": per_prompt, "summary": {"categories": cats, "modes": modes}}


# --------------------------------------------------------------------------------------- models
def model_info(path: Path | None) -> dict | None:
    """Path, size and sha256: the registry's (checked when pulled) for a registry model's cache path, else computed."""
    if path is None:
        return None
    from edgespec.models import cache, registry

    p = Path(path).expanduser()
    info = {"path": str(p), "size_bytes": p.stat().st_size, "sha256": None, "sha256_source": None}
    try:
        reg = registry.load_registry()
        for entry in reg.models.values():
            if entry.sha256 and cache.model_path(entry).resolve() == p.resolve() and (entry.size is None or entry.size == info["size_bytes"]):
                info.update(sha256=entry.sha256, sha256_source="registry", registry_name=entry.name)
                return info
    except Exception:
        pass
    info.update(sha256=cache.sha256_file(p), sha256_source="computed")
    return info


def describe(target, draft, resolved, load, llama_cpp=None) -> dict:
    """What a benchmark document records about its set-up: the machine (with its CPU weight paths),
    the models (sha256), and the settings the pair was loaded with."""
    from edgespec.machine import cpu_paths, system

    machine = system.describe()
    machine["cpu_paths"] = cpu_paths.report(cpu_paths.decide(load.amx), (target, draft))
    models = {"target": model_info(resolved.target), "draft": model_info(resolved.draft) if draft is not None else None}
    plan = getattr(target, "plan", None)
    settings = {
        "ctx": target.n_ctx, "threads": target.n_threads, "n_batch": target.n_batch,
        "n_gpu_layers": target.n_gpu_layers, "draft_gpu_layers": draft.n_gpu_layers if draft is not None else None,
        "kv_type": [plan.type_k, plan.type_v] if plan is not None else None,
        "use_mmap": plan.use_mmap if plan is not None else None, "use_mlock": plan.use_mlock if plan is not None else None,
    }
    if llama_cpp is not None:
        settings["llama_cpp"] = {"binary": str(llama_cpp.binary), "version": llama_cpp.version(),
                                 "extra_args": " ".join(llama_cpp.extra), "last_command": llama_cpp.last_command}
    return {"machine": machine, "models": models, "settings": settings}


# ------------------------------------------------------------------------------------- documents
def document(result: Result, *, machine: dict, models: dict, extra: dict | None = None) -> dict:
    from edgespec.machine.system import process_peak_rss, versions

    agg = aggregate(result)
    s = result.settings
    return {
        "edgespec_bench": SCHEMA,
        "started": result.started, "wall_s": round(result.wall_s, 3), "interrupted": result.interrupted,
        "process_peak_rss_bytes": process_peak_rss(), "loadavg": result.loadavg,
        "settings": {
            "modes": [m.name for m in result.modes], "repeats": s.repeats, "max_tokens": s.max_tokens,
            "greedy": s.sampling.greedy, "temperature": s.sampling.temperature, "top_k": s.sampling.top_k,
            "top_p": s.sampling.top_p, "min_p": s.sampling.min_p, "seed": s.seed, "ignore_eos": s.ignore_eos,
            "k_max": s.k_max, "near_tie_bound": s.near_tie, "warmup": s.warmup, "lockstep": s.lockstep, **(extra or {}),
        },
        "order": ORDER_DOC,
        "machine": machine, "versions": versions(), "models": models,
        "calibration": result.calibration, "warmup": result.warmup,
        "prompts": [{"id": p.id, "category": p.category, "prompt_tokens": result.prompt_token_counts.get(p.id),
                     "max_tokens": result.budgets.get(p.id, p.max_tokens), "turns": len(p.turns) // 2,
                     "token_ids": result.prompt_token_ids.get(p.id)} for p in result.prompts],
        "run_order": [{"seq": r.seq, "repeat": r.repeat, "prompt": r.prompt_id, "mode": r.mode} for r in result.runs],
        "runs": [r.as_dict() for r in result.runs],
        **agg,
    }


def write_json(doc: dict, path: str) -> None:
    text = json.dumps(doc, indent=1, ensure_ascii=False) + "\n"
    text = _INT_LIST.sub(lambda m: "[" + re.sub(r"\s+", "", m.group(1)) + "]", text)  # token ids on one line each
    text = _STEP.sub(lambda m: "[" + re.sub(r"\s+", "", m.group(1)) + "]", text)  # and each logged step
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        Path(path).expanduser().write_text(text, encoding="utf-8")


CSV_CONTEXT = ("target", "target_sha256", "draft", "draft_sha256", "cpu", "cores_logical", "ram_bytes", "gpu", "backend",
               "edgespec", "llama_cpp", "numpy", "python", "max_tokens", "temperature", "greedy", "near_tie_bound")


def write_csv(doc: dict, path: str) -> None:
    """One row per run (every number; histograms as JSON), with the machine, versions and models on each row."""
    m, v, s, models = doc["machine"], doc["versions"], doc["settings"], doc["models"]
    ctx = {
        "target": (models.get("target") or {}).get("path"), "target_sha256": (models.get("target") or {}).get("sha256"),
        "draft": (models.get("draft") or {}).get("path"), "draft_sha256": (models.get("draft") or {}).get("sha256"),
        "cpu": m.get("cpu"), "cores_logical": m.get("cores_logical"), "ram_bytes": m.get("ram_bytes"),
        "gpu": "; ".join(f"{g['name']} ({g['description']})" for g in m.get("gpu", [])),
        "backend": m.get("backend"), **v, "max_tokens": s["max_tokens"], "temperature": s["temperature"],
        "greedy": s["greedy"], "near_tie_bound": s["near_tie_bound"],
    }
    runs = doc["runs"]
    fields = [k for k in (runs[0] if runs else {}) if k not in ("text", "token_ids", "step_log")] + list(CSV_CONTEXT)
    with open(Path(path).expanduser(), "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in runs:
            row = {k: (json.dumps(x) if isinstance(x, dict) else x) for k, x in r.items()}
            w.writerow({**row, **ctx})


def check_plot_available() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("--plot needs matplotlib, which is not installed", "pip install 'edgespec[plot]' (or pip install matplotlib)") from None


def write_plot(doc: dict, path: str) -> None:
    """Grouped bars: geometric-mean speedup over plain per category (and overall) for each mode, min-max whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [e for e in doc["summary"]["modes"] if e["mode"] != PLAIN]
    groups = doc["summary"]["categories"] + ["all"]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) * max(1, len(modes)) / 3 + 2), 4.2))
    width = 0.8 / max(1, len(modes))
    for j, e in enumerate(modes):
        cells = [e["by_category"].get(g, {}) for g in groups[:-1]] + [e["speedup"]]
        ys = [c.get("geomean") or 0.0 for c in cells]
        lo = [max(0.0, y - (c.get("min") or y)) for y, c in zip(ys, cells)]
        hi = [max(0.0, (c.get("max") or y) - y) for y, c in zip(ys, cells)]
        xs = [i + (j - (len(modes) - 1) / 2) * width for i in range(len(groups))]
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=e["mode"])
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups)
    ax.set_ylabel("speedup over plain decoding (geo-mean)")
    title = f"{Path((doc['models'].get('target') or {}).get('path', '')).name}"
    draft = (doc["models"].get("draft") or {}).get("path")
    ax.set_title(title + (f" + {Path(draft).name}" if draft else "") + f" · {doc['machine'].get('cpu') or ''}", fontsize=9)
    ax.legend(fontsize=8, ncol=min(4, max(1, len(modes))))
    fig.tight_layout()
    fig.savefig(Path(path).expanduser(), dpi=120)
    plt.close(fig)
