"""`edgespec plan`: the settings the memory planner picks for a pair on this machine, and why."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from edgespec.commands.options import MODEL_NAMES, PLANNING, err, takes
from edgespec.errors import EdgespecError


@takes(MODEL_NAMES, PLANNING)
def plan(
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
    *, models, load,
) -> None:
    """Plan memory for a target/draft pair: context size, KV cache type, GPU layers, mmap/mlock.

    Reads only the GGUF headers; nothing is loaded. Fails with one line saying what would fit when
    nothing does.
    """
    from edgespec.machine import cpu_paths, estimate, planner, system
    from edgespec.session.loading import memory_budget

    r = models.resolved
    if r.missing:
        names = " ".join(e.name for e in r.missing)
        raise EdgespecError(f"not downloaded yet: {', '.join(e.name for e in r.missing)} (the plan reads their GGUF headers)",
                            f"run `edgespec models pull {names}`")
    machine = system.system_memory()
    vram = sum(g.total for g in machine.gpus) or None
    p = planner.plan(
        r.target, r.draft, n_ctx=load.n_ctx, budget=memory_budget(load), kv_type=load.kv_type,
        vram_budget=estimate.parse_size(load.gpu_budget, total=vram) if load.gpu_budget else None,
        n_gpu_layers=load.n_gpu_layers, draft_gpu_layers=load.draft_gpu_layers, use_mlock=load.use_mlock,
        flash_attn=load.flash_attn, k=r.k if r.k is not None else 4, system=machine,
    )
    decision = cpu_paths.decide(load.amx)
    if decision.notice():
        err.print(f"note: {escape(decision.notice())}", soft_wrap=True)
    if as_json:
        sys.stdout.write(json.dumps({**p.as_dict(), "cpu_paths": cpu_paths.report(decision)}, indent=1) + "\n")
        return
    print_plan(p, Console(), cpu_paths.summary(decision))


def _fa_line(p) -> str:
    name = {True: "on", False: "off", None: "llama.cpp's choice"}
    line = f"target {name[p.flash_attn]}" + (f", draft {name[p.draft_flash_attn]}" if p.draft else "")
    if p.type_v != "f16":
        return line + " (the quantised KV cache needs it)"
    return line


def print_plan(p, console: Console, cpu_line: str | None = None) -> None:
    from rich.table import Table

    from edgespec.machine.estimate import fmt_bytes

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
        ("KV cache", p.type_k),
        ("flash attention", _fa_line(p)),
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
