"""`edgespec calibrate`: measure what speculation costs here and say whether it can pay."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from edgespec.commands.options import K_MAX, LOADING, MODELS, close, err, load_models, takes

ACCEPTANCE = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


@takes(MODELS, K_MAX, LOADING)
def calibrate(
    as_json: Annotated[bool, typer.Option("--json", help="Print the measurements and predictions as JSON.")] = False,
    *, models, k_max, load,
) -> None:
    """Measure target and draft step costs, cache them, and predict the speed-up for each k."""
    from edgespec.core.policy import MODEL_EDGES, break_even, speedup
    from edgespec.machine import calibrate as cal
    from edgespec.machine import cpu_paths

    tmodel, dmodel = load_models(models, load)
    try:
        with err.status("measuring (under a minute on a 2-core CPU)", spinner="dots"):
            costs = cal.measure(tmodel, dmodel, k_max)
        cal.save(tmodel, dmodel, costs)
        paths = cpu_paths.report(cpu_paths.decide(load.amx), (tmodel, dmodel))
        flash = getattr(tmodel, "flash_attn", "auto")
    finally:
        close(tmodel, dmodel)

    base = costs.verify_cost(1)
    ks = [k for k in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64) if k <= k_max]
    drafters = {"ngram": costs.ngram_lookup}
    if costs.draft_token is not None:
        drafters = {"model": costs.draft_token, **drafters}
    predicted = {
        name: {str(k): {str(a): round(speedup(costs, k, a, per), 3) for a in ACCEPTANCE} for k in ks}
        for name, per in drafters.items()
    }
    verdict = {name: break_even(costs, per, k_max) for name, per in drafters.items()}
    agree = None
    if costs.draft_agreement:
        hits, tries = sum(h for h, _ in costs.draft_agreement), sum(t for _, t in costs.draft_agreement)
        agree = {"rate": round(hits / tries, 3) if tries else None, "tokens": tries,
                 "by_draft_probability": {f">={e}": hb for e, hb in zip(MODEL_EDGES, costs.draft_agreement)}}
    if as_json:
        print(json.dumps({
            "target": str(models.resolved.target), "draft": str(models.resolved.draft) if dmodel is not None else None,
            "verify_s": {str(n): v for n, v in sorted(costs.verify.items())},
            "verify_relative": {str(n): round(v / base, 3) for n, v in sorted(costs.verify.items())},
            "position": costs.position,
            "attend_s": costs.attend, "attend_base_s": costs.attend_base, "flash_attn": flash,
            "draft_token_s": costs.draft_token, "draft_agreement": agree, "predicted_speedup": predicted,
            "break_even_acceptance": verdict, "cpu_paths": paths,
        }, indent=1))
        return

    out = Console()
    out.print(f"CPU weight paths: {cpu_paths.summary(cpu_paths.decide(load.amx))}", soft_wrap=True)
    t = Table(title="target decode of n positions (logits at each)")
    for col in ("n", "ms", "x one token", "ms per position"):
        t.add_column(col, justify="right")
    for n, v in sorted(costs.verify.items()):
        t.add_row(str(n), f"{v * 1e3:.1f}", f"{v / base:.2f}", f"{v * 1e3 / n:.1f}")
    out.print(t)
    if costs.attend or costs.attend_base:
        out.print(f"measured after {costs.position} tokens of context; each 1,000 more add "
                  f"{costs.attend_base * 1e3:.1f} ms per batch + {(costs.attend or 0.0) * 1e3:.2f} ms per position "
                  f"(flash attention {flash})")
    if costs.draft_token is not None:
        out.print(f"draft model: {costs.draft_token * 1e3:.1f} ms per token = {costs.draft_token / base:.2f} of a target step")
    if agree and agree["rate"] is not None:
        out.print(f"draft model agreement: its greedy token was the target's at {100 * agree['rate']:.0f}% of "
                  f"{agree['tokens']} positions of a sample text (the controller's starting acceptance estimate)")
    for name, table in predicted.items():
        pt = Table(title=f"predicted speed-up over plain decoding, {name} drafts (rows: k, columns: acceptance)")
        pt.add_column("k", justify="right")
        for a in ACCEPTANCE:
            pt.add_column(f"{a:.2f}", justify="right")
        for k, row in table.items():
            pt.add_row(k, *(f"{v:.2f}" for v in row.values()))
        out.print(pt)
    for name, a in verdict.items():
        what, verb = ("The draft model", "pays") if name == "model" else ("N-gram drafts", "pay")
        if a is None:
            best = max(v for row in predicted[name].values() for v in row.values())
            out.print(f"[bold]{what} cannot pay on this machine[/]: even at 100% acceptance the best is {best:.2f}x plain decoding.")
        else:
            out.print(f"[bold]{what} {verb} off from {100 * a:.0f}% acceptance[/] per drafted token.")
