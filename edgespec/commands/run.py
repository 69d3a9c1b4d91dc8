"""`edgespec run`: one prompt in, a streamed reply out."""

from __future__ import annotations

import json
import sys
from typing import Annotated, List, Optional

import typer

from edgespec.commands.options import (
    AmxOpt,
    TempOpt, TopKOpt, TopPOpt, MinPOpt, SeedOpt, sampling_params,
    BudgetOpt, CtxOpt, KvTypeOpt, DraftModeOpt, DraftNglOpt, DraftOpt, KMaxOpt, KOpt, NglOpt, PairOpt, SourceOpt, TargetOpt, ThreadsOpt,
    YesOpt, err, load_models,
)
from edgespec.errors import UsageError


def run(
    prompt: Annotated[str, typer.Argument(help="The prompt. '-' reads it from standard input.", show_default=False)],
    pair: PairOpt = None,
    target: TargetOpt = None,
    draft: DraftOpt = None,
    yes: YesOpt = False,
    source: SourceOpt = "auto",
    draft_mode: DraftModeOpt = "auto",
    k: KOpt = None,
    k_max: KMaxOpt = 16,
    temp: TempOpt = 0.0,
    top_k: TopKOpt = 40,
    top_p: TopPOpt = 0.95,
    min_p: MinPOpt = 0.05,
    seed: SeedOpt = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-n", help="Most tokens to generate.")] = 256,
    stop: Annotated[Optional[List[str]], typer.Option("--stop", help="Stop when this text appears (repeatable).", show_default=False)] = None,
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos", help="Never end at an end-of-generation token (for benchmarks).")] = False,
    system: Annotated[Optional[str], typer.Option("--system", help="System message for the chat template.", show_default=False)] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Send the prompt as plain text, without the chat template.")] = False,
    ctx: CtxOpt = None,
    kv_type: KvTypeOpt = None,
    budget: BudgetOpt = None,
    threads: ThreadsOpt = None,
    n_gpu_layers: NglOpt = None,
    draft_gpu_layers: DraftNglOpt = None,
    amx: AmxOpt = None,
    stats: Annotated[bool, typer.Option("--stats", help="Print drafted/accepted counts and speed to stderr.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the reply and the stats as one JSON object.")] = False,
) -> None:
    """Generate a reply to PROMPT, streamed to stdout."""
    from edgespec.models import registry
    from edgespec.session import runner

    if k is not None and k < 0:
        raise UsageError(f"--k must be >= 0, got {k}")
    if max_tokens < 1:
        raise UsageError(f"--max-tokens must be >= 1, got {max_tokens}")
    models = registry.resolve(registry.load_registry(), pair, target, draft)
    from edgespec.text import check_input, decode_input

    prompt = decode_input(sys.stdin.buffer.read(), "standard input") if prompt == "-" else check_input(prompt, "the prompt")
    sampling = sampling_params(temp, top_k, top_p, min_p)
    gen = runner.GenOptions(mode=draft_mode, k=k, k_max=k_max, sampling=sampling, max_tokens=max_tokens, seed=seed, stop=tuple(stop or ()), ignore_eos=ignore_eos)
    load = runner.LoadOptions(
        n_ctx=ctx, n_threads=threads, n_gpu_layers=n_gpu_layers, draft_gpu_layers=draft_gpu_layers, kv_type=kv_type, budget=budget, amx=amx
    )

    tmodel, dmodel = load_models(models, load, yes=yes, source=source)
    reply = runner.Reply()
    try:
        tokens = runner.prompt_tokens(tmodel, prompt, system=system, raw=raw)
        runner.check_fits(tmodel, len(tokens), max_tokens)
        ctl = runner.make_controller(tmodel, dmodel, gen, on_calibrate=lambda: err.print("[dim]measuring this machine's costs (once per pair and setting)...[/]"))
        try:
            for piece in runner.stream(tmodel, dmodel, tokens, gen, reply, ctl):
                if not as_json:
                    sys.stdout.write(piece)
                    sys.stdout.flush()
        except KeyboardInterrupt:
            reply.finish = "interrupted"
        if as_json:
            out = {"text": reply.text, "finish_reason": reply.finish, **reply.stats.as_dict()}
            out.update(mode=gen.mode, k=gen.k, warnings=reply.warnings, target=str(models.target), draft=str(models.draft) if dmodel else None)
            sys.stdout.write(json.dumps(out, ensure_ascii=False) + "\n")
        elif reply.text and not reply.text.endswith("\n"):
            sys.stdout.write("\n")
        sys.stdout.flush()
        if stats and not as_json:
            _print_stats(reply)
        for w in reply.warnings if not as_json else ():
            err.print(f"[yellow]warning:[/] {w}")
    finally:
        tmodel.close()
        if dmodel is not None:
            dmodel.close()
    if reply.finish == "interrupted":
        err.print("[yellow]interrupted[/]: the reply above is partial")
        raise typer.Exit(130)


DRAFTER_NAMES = {"model": "draft model", "ngram": "n-gram", "none": "plain"}
FINISH = {"stop": "the model ended the reply", "length": "stopped at --max-tokens", "context": "the context is full",
          "interrupted": "interrupted"}


def stats_lines(reply) -> list[str]:
    """--stats as a few short sentences, each under 80 columns, so no terminal breaks a figure."""
    s = reply.stats
    lines = [f"Generated {s.generated} tokens in {s.t_decode:.2f} s ({s.tokens_per_s:.1f} tok/s); "
             f"prompt: {s.prompt_tokens} tokens in {s.t_prefill:.2f} s."]
    if s.drafted:
        lines.append(f"Drafted {s.drafted} tokens, accepted {s.accepted} ({100 * s.acceptance_rate:.1f}%), "
                     f"{s.mean_accepted:.2f} per drafting step.")
    else:
        lines.append("Nothing was drafted.")
    steps = ", ".join(f"{n} {DRAFTER_NAMES.get(name, name)}" for name, n in sorted(s.drafter_steps.items(), key=lambda kv: -kv[1]))
    finish = FINISH.get(reply.finish or "", reply.finish or "finished")
    lines.append(f"Target passes: {steps or 'none'}; {finish}.")
    return lines


def _print_stats(reply) -> None:
    for line in stats_lines(reply):
        err.print(f"[dim]{line}[/]", soft_wrap=True)
