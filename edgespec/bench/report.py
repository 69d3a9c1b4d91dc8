"""Benchmark results: aggregation, the machine and model description, JSON/CSV/PNG output, Rich tables.

Speedup is decode tokens/s over plain decoding's on the same prompt and repeat (paired); per prompt it
is the median over repeats, per category and overall the geometric mean over prompts, with min-max.
"""

from __future__ import annotations

import csv
import ctypes
import json
import math
import os
import platform
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

from edgespec.bench.runs import CATEGORIES, PLAIN, Result, Run
from edgespec.errors import UsageError

_MATCH_RANK = {"reference": 0, "exact": 1, "near-tie": 2, "MISMATCH": 3}
SCHEMA = 1
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
    drafted = sum(r.drafted for r in runs)
    accepted = sum(r.accepted for r in runs)
    steps = [r.draft_steps for r in runs]
    mean_len = None if any(s is None for s in steps) else (accepted / sum(steps) if sum(steps) else 0.0)
    return {
        "drafted": drafted, "accepted": accepted,
        "acceptance_rate": round(accepted / drafted, 4) if drafted else 0.0,
        "mean_accepted_length": _r(mean_len, 3),
        "k_histogram": {str(k): v for k, v in _sum_hist(r.k_hist for r in runs).items()},
        "drafter_steps": _sum_hist(r.drafter_steps for r in runs),
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
                "prompt_tokens": runs[0].prompt_tokens,
                "generated_tokens": _median(r.generated_tokens for r in runs),
                "prefill_s": _r(_median(r.prefill_s for r in runs), 5),
                "prefill_tokens_per_s": _r(_median(r.prefill_tps for r in runs), 2),
                "decode_tokens_per_s": _r(_median(r.decode_tps for r in runs), 3),
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


# --------------------------------------------------------------------------------- the machine
def _cpu_model() -> str | None:
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key.strip() in ("model name", "Hardware", "Model", "cpu model") and value.strip():
                        return value.strip()
        except OSError:
            pass
    if sys.platform == "darwin":
        import subprocess

        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or None


def _physical_cores() -> int | None:
    try:
        seen = set()
        phys = core = None
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    phys = value.strip()
                elif key == "core id":
                    core = value.strip()
                elif not line.strip():
                    if core is not None:
                        seen.add((phys, core))
                    phys = core = None
        if core is not None:
            seen.add((phys, core))
        return len(seen) or None
    except OSError:
        return None


def _ram_bytes() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def ggml_devices() -> list[dict]:
    """ggml's backend devices (CPU, GPUs, accelerators) with their memory, through llama_cpp's library."""
    try:
        import llama_cpp

        lib = llama_cpp.llama_cpp._lib
        count = lib.ggml_backend_dev_count
        count.restype = ctypes.c_size_t
        get = lib.ggml_backend_dev_get
        get.restype, get.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
        name = lib.ggml_backend_dev_name
        name.restype, name.argtypes = ctypes.c_char_p, [ctypes.c_void_p]
        desc = lib.ggml_backend_dev_description
        desc.restype, desc.argtypes = ctypes.c_char_p, [ctypes.c_void_p]
        kind = lib.ggml_backend_dev_type
        kind.restype, kind.argtypes = ctypes.c_int, [ctypes.c_void_p]
        mem = lib.ggml_backend_dev_memory
        mem.restype = None
        mem.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)]
        kinds = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel", 4: "meta"}
        out = []
        for i in range(count()):
            d = get(i)
            free, total = ctypes.c_size_t(), ctypes.c_size_t()
            mem(d, ctypes.byref(free), ctypes.byref(total))
            out.append({
                "name": (name(d) or b"").decode("utf-8", "replace"),
                "description": (desc(d) or b"").decode("utf-8", "replace"),
                "type": kinds.get(kind(d), str(kind(d))), "memory_total_bytes": total.value, "memory_free_bytes": free.value,
            })
        return out
    except Exception:  # an older or unusual build: the rest of the report still stands
        return []


def machine_info() -> dict:
    import llama_cpp

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    devices = ggml_devices()
    try:
        system_info = llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip(" |")
    except Exception:
        system_info = None
    try:
        gpu_offload = bool(llama_cpp.llama_supports_gpu_offload())
    except Exception:
        gpu_offload = None
    return {
        "cpu": _cpu_model(), "cores_logical": os.cpu_count(), "cores_usable": affinity, "cores_physical": _physical_cores(),
        "ram_bytes": _ram_bytes(), "os": platform.platform(), "machine": platform.machine(),
        "gpu": [d for d in devices if d["type"] in ("gpu", "igpu")],
        "devices": devices, "gpu_offload": gpu_offload,
        "backend": ", ".join(d["name"] for d in devices) or None, "llama_system_info": system_info,
    }


def versions() -> dict:
    import numpy
    import llama_cpp

    from edgespec import __version__

    return {"edgespec": __version__, "llama_cpp": llama_cpp.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


def model_info(path: Path | None) -> dict | None:
    """Path, size and sha256: the registry's (checked when pulled) for a registry model's cache path, else computed."""
    if path is None:
        return None
    from edgespec.models import registry

    p = Path(path).expanduser()
    info = {"path": str(p), "size_bytes": p.stat().st_size, "sha256": None, "sha256_source": None}
    try:
        reg = registry.load_registry()
        for entry in reg.models.values():
            if entry.sha256 and registry.model_path(entry).resolve() == p.resolve() and (entry.size is None or entry.size == info["size_bytes"]):
                info.update(sha256=entry.sha256, sha256_source="registry", registry_name=entry.name)
                return info
    except Exception:
        pass
    info.update(sha256=registry.sha256_file(p), sha256_source="computed")
    return info


# ------------------------------------------------------------------------------------- documents
def document(result: Result, *, machine: dict, models: dict, extra: dict | None = None) -> dict:
    from edgespec.bench.runs import process_peak_rss

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
                     "max_tokens": p.max_tokens} for p in result.prompts],
        "run_order": [{"seq": r.seq, "repeat": r.repeat, "prompt": r.prompt_id, "mode": r.mode} for r in result.runs],
        "runs": [r.as_dict() for r in result.runs],
        **agg,
    }


def write_json(doc: dict, path: str) -> None:
    text = json.dumps(doc, indent=1, ensure_ascii=False) + "\n"
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
    fields = [k for k in (runs[0] if runs else {}) if k != "text"] + list(CSV_CONTEXT)
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


# ----------------------------------------------------------------------------------------- tables
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


def _speed_cell(c: dict) -> str:
    if not c or c.get("geomean") is None:
        return "-"
    if c["n"] == 1:
        return f"{c['geomean']:.2f}"
    return f"{c['geomean']:.2f} ({c['min']:.2f}-{c['max']:.2f})"


def tables(doc: dict, details: bool = False) -> list:
    from rich.table import Table

    s = doc["settings"]
    greedy = s["greedy"]
    names = [Path((doc["models"].get(r) or {}).get("path", "")).name for r in ("target", "draft") if doc["models"].get(r)]
    n_prompts = len(doc["prompts"])
    title = (f"edgespec bench: {' + '.join(names)} · {n_prompts} prompts · {s['repeats']} repeat(s) · "
             f"≤{s['max_tokens']} tokens · {'greedy' if greedy else 'T=' + str(s['temperature'])}")
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
            _drafting(e["drafter_steps"]) if not e["mode"].startswith("llama.cpp") else f"model (k={e['k']})",
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
        lines.append("llama.cpp-spec rows: llama.cpp's llama-speculative-simple, timed by its own report, one process per prompt.")
    return "\n".join(lines)
