"""`edgespec plan`: the settings the memory planner picks for a pair on this machine, and why."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from edgespec.commands.models import CacheDirOpt, use_cache_dir
from edgespec.commands.options import AmxOpt, DraftOpt, PairOpt, TargetOpt, err
from edgespec.errors import EdgespecError, UsageError


def plan(
    pair: PairOpt = None,
    target: TargetOpt = None,
    draft: DraftOpt = None,
    ctx: Annotated[Optional[int], typer.Option("--ctx", "-c", help="Context size in tokens (default: the largest up to 8192 that fits).", min=16, show_default=False)] = None,
    budget: Annotated[Optional[str], typer.Option("--budget", help="RAM for the whole process, e.g. 6GB, 6144MiB or 75% (default: available RAM minus a margin).", show_default=False)] = None,
    gpu_budget: Annotated[Optional[str], typer.Option("--gpu-budget", help="GPU memory to use, e.g. 7.5GB (default: free GPU memory minus a margin).", show_default=False)] = None,
    kv_type: Annotated[Optional[str], typer.Option("--kv-type", help="KV cache type: f16, q8_0 or q4_0 (default: f16 unless it does not fit).", show_default=False)] = None,
    n_gpu_layers: Annotated[Optional[int], typer.Option("--n-gpu-layers", help="Target layers on the GPU (-1: all) (default: chosen).", show_default=False)] = None,
    draft_gpu_layers: Annotated[Optional[int], typer.Option("--draft-gpu-layers", help="Draft layers on the GPU (-1: all) (default: chosen).", show_default=False)] = None,
    mlock: Annotated[bool, typer.Option("--mlock", help="Lock the weights in RAM (if the memlock limit allows).")] = False,
    amx: AmxOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Plan memory for a target/draft pair: context size, KV cache type, GPU layers, mmap/mlock.

    Reads only the GGUF headers; nothing is loaded. Fails with one line saying what would fit when
    nothing does.
    """
    from edgespec.machine import cpu_paths, memory
    from edgespec.models import registry

    use_cache_dir(cache_dir)
    if kv_type is not None and kv_type not in memory.KV_TYPES:
        raise UsageError(f"unknown --kv-type {kv_type!r}", f"use one of {', '.join(memory.KV_TYPES)}")
    reg = registry.load_registry()
    models = registry.resolve(reg, pair, target, draft)
    if models.missing:
        names = " ".join(e.name for e in models.missing)
        raise EdgespecError(f"not downloaded yet: {', '.join(e.name for e in models.missing)} (the plan reads their GGUF headers)", f"run `edgespec models pull {names}`")
    system = memory.system_memory()
    ram_budget = memory.parse_size(budget, total=system.total) if budget else None
    vram = sum(g.total for g in system.gpus) or None
    vram_budget = memory.parse_size(gpu_budget, total=vram) if gpu_budget else None
    p = memory.plan(
        models.target, models.draft, n_ctx=ctx, budget=ram_budget, vram_budget=vram_budget, kv_type=kv_type,
        n_gpu_layers=n_gpu_layers, draft_gpu_layers=draft_gpu_layers, use_mlock=mlock or None,
        k=models.k if models.k is not None else 4, system=system,
    )
    decision = cpu_paths.decide(amx)
    if decision.notice():
        err.print(f"note: {escape(decision.notice())}", soft_wrap=True)
    if as_json:
        sys.stdout.write(json.dumps({**p.as_dict(), "cpu_paths": cpu_paths.report(decision)}, indent=1) + "\n")
        return
    print_plan(p, Console(), cpu_paths.summary(decision))


def print_plan(p, console: Console, cpu_line: str | None = None) -> None:
    from rich.table import Table

    from edgespec.machine.memory import fmt_bytes

    s = p.system
    gpus = ", ".join(f"{g.name} {fmt_bytes(g.free)} free of {fmt_bytes(g.total)}{' (unified)' if g.unified else ''}" for g in s.gpus) or "none"
    settings = Table(show_header=False, title="plan", title_justify="left")
    settings.add_column(style="bold", no_wrap=True)
    settings.add_column(overflow="fold")
    ngl = lambda n: "all" if n == -1 else str(n)  # noqa: E731
    rows = [
        ("target", p.target),
        ("draft", p.draft or "none (plain decoding)"),
        ("context", f"{p.n_ctx} tokens"),
        ("KV cache", f"{p.type_k}" + (" (flash attention on)" if p.flash_attn else "")),
        ("GPU layers", f"target {ngl(p.n_gpu_layers)}" + (f", draft {ngl(p.draft_gpu_layers)}" if p.draft else "") + f" ({p.offload})"),
        ("mmap / mlock", f"{'on' if p.use_mmap else 'off'} / {'on' if p.use_mlock else 'off'}"),
        *([("CPU weights", cpu_line)] if cpu_line else []),
        ("RAM", f"{fmt_bytes(p.ram)} of a {fmt_bytes(p.budget)} budget ({fmt_bytes(s.available)} available of {fmt_bytes(s.total)}, {s.source})"),
        ("GPU memory", f"{fmt_bytes(p.vram)} of a {fmt_bytes(p.vram_budget)} budget ({gpus})" if s.gpus else "no GPU found"),
    ]
    for k, v in rows:
        settings.add_row(k, escape(str(v)))
    console.print(settings)
    parts = Table(title="estimate", title_justify="left")
    parts.add_column("part")
    for col in ("target", "draft", "total"):
        parts.add_column(col, justify="right")
    t, d = p.target_estimate, p.draft_estimate
    fields = [
        ("weights (RAM)", "weights"), ("repacked copies", "repack"), ("KV cache (RAM)", "kv"), ("compute buffers (RAM)", "compute"),
        ("logits", "output"), ("runtime", "overhead"), ("weights (GPU)", "weights_vram"), ("KV cache (GPU)", "kv_vram"),
        ("compute buffers (GPU)", "compute_vram"),
    ]
    for label, attr in fields:
        a, b = getattr(t, attr), getattr(d, attr) if d else 0
        if a or b:
            parts.add_row(label, fmt_bytes(a), fmt_bytes(b) if d else "-", fmt_bytes(a + b))
    parts.add_row("process", "", "", fmt_bytes(p.process_overhead))
    parts.add_row("[bold]RAM total[/]", fmt_bytes(t.ram), fmt_bytes(d.ram) if d else "-", f"[bold]{fmt_bytes(p.ram)}[/]")
    if p.vram:
        parts.add_row("[bold]GPU total[/]", fmt_bytes(t.vram), fmt_bytes(d.vram) if d else "-", f"[bold]{fmt_bytes(p.vram)}[/]")
    console.print(parts)
    for note in p.notes:
        err.print(f"note: {escape(note)}", soft_wrap=True)
