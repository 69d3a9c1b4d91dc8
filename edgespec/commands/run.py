"""`edgespec run`: one prompt in, a streamed reply out."""

from __future__ import annotations

import json
import sys
from typing import Annotated, List, Optional

import typer

from edgespec.commands.options import DRAFTING, LOADING, MODELS, SAMPLING, close, err, load_models, takes
from edgespec.core.kinds import Drafter, Finish

DRAFTER_NAMES = {Drafter.MODEL: "draft model", Drafter.NGRAM: "n-gram", Drafter.NONE: "plain"}
FINISH = {Finish.STOP: "the model ended the reply", Finish.LENGTH: "stopped at --max-tokens",
          Finish.CONTEXT: "the context is full", Finish.INTERRUPTED: "interrupted"}


@takes(MODELS, DRAFTING, SAMPLING, LOADING)
def run(
    prompt: Annotated[str, typer.Argument(help="The prompt. '-' reads it from standard input.", show_default=False)],
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-n", help="Most tokens to generate.")] = 256,
    stop: Annotated[Optional[List[str]], typer.Option("--stop", help="Stop when this text appears (repeatable).", show_default=False)] = None,
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos", help="Never end at an end-of-generation token (for benchmarks).")] = False,
    system: Annotated[Optional[str], typer.Option("--system", help="System message for the chat template.", show_default=False)] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Send the prompt as plain text, without the chat template.")] = False,
    stats: Annotated[bool, typer.Option("--stats", help="Print drafted/accepted counts and speed to stderr.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the reply and the stats as one JSON object.")] = False,
    *, models, drafting, sampling, load,
) -> None:
    """Generate a reply to PROMPT, streamed to stdout."""
    from edgespec.session import loading, runner
    from edgespec.session.options import GenOptions
    from edgespec.text import check_input, decode_input

    gen = GenOptions(mode=drafting.mode, k=drafting.k, k_max=drafting.k_max, sampling=sampling.params, seed=sampling.seed,
                     max_tokens=max_tokens, stop=tuple(stop or ()), ignore_eos=ignore_eos)
    gen.check_draft(models.has_draft)
    prompt = decode_input(sys.stdin.buffer.read(), "standard input") if prompt == "-" else check_input(prompt, "the prompt")

    tmodel, dmodel = load_models(models, load)
    reply = runner.Reply()
    try:
        tokens = loading.prompt_tokens(tmodel, prompt, system=system, raw=raw)
        loading.check_fits(tmodel, len(tokens), max_tokens)
        ctl = runner.make_controller(tmodel, dmodel, gen, on_calibrate=lambda: err.print("[dim]measuring this machine's costs (once per pair and setting)...[/]"))
        try:
            for piece in runner.stream(tmodel, dmodel, tokens, gen, reply, ctl):
                if not as_json:
                    sys.stdout.write(piece)
                    sys.stdout.flush()
        except KeyboardInterrupt:
            reply.finish = Finish.INTERRUPTED
        if as_json:
            out = {"text": reply.text, "finish_reason": reply.finish, **reply.stats.as_dict(), "mode": gen.mode, "k": gen.k,
                   "warnings": reply.warnings, "target": str(models.resolved.target),
                   "draft": str(models.resolved.draft) if dmodel else None}
            sys.stdout.write(json.dumps(out, ensure_ascii=False) + "\n")
        elif reply.text and not reply.text.endswith("\n"):
            sys.stdout.write("\n")
        sys.stdout.flush()
        if stats and not as_json:
            for line in stats_lines(reply):
                err.print(f"[dim]{line}[/]", soft_wrap=True)
        for w in reply.warnings if not as_json else ():
            err.print(f"[yellow]warning:[/] {w}")
    finally:
        close(tmodel, dmodel)
    if reply.finish == Finish.INTERRUPTED:
        err.print("[yellow]interrupted[/]: the reply above is partial")
        raise typer.Exit(130)


def stats_lines(reply) -> list[str]:
    """--stats as a few short sentences, each under 80 columns, so no terminal breaks a figure."""
    s = reply.stats
    lines = [f"Generated {s.generated} tokens in {s.t_decode:.2f} s ({s.tokens_per_s:.1f} tok/s); "
             f"prompt: {s.prefill_tokens} tokens in {s.t_prefill:.2f} s."]
    if s.drafted:
        lines.append(f"Drafted {s.drafted} tokens, accepted {s.accepted} ({100 * s.acceptance_rate:.1f}%), "
                     f"{s.mean_accepted:.2f} per drafting step.")
    else:
        lines.append("Nothing was drafted.")
    steps = ", ".join(f"{n} {DRAFTER_NAMES.get(name, name)}" for name, n in sorted(s.drafter_steps.items(), key=lambda kv: -kv[1]))
    finish = FINISH.get(reply.finish, reply.finish or "finished")
    lines.append(f"Target passes: {steps or 'none'}; {finish}.")
    return lines
