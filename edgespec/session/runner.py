"""From settings and text to a streamed reply: loads the pair, renders the prompt, runs the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from edgespec.machine import calibrate
from edgespec.core.engine import Stats, generate
from edgespec.core.policy import MODES, Controller, Costs
from edgespec.errors import ContextOverflowError, UsageError
from edgespec.llama.model import Model, check_compatible, check_gguf
from edgespec.text import TextStream
from edgespec.core.verify import SamplingParams


@dataclass
class LoadOptions:
    """How to load the pair. None leaves the choice to the memory planner (edgespec.memory.plan)."""

    n_ctx: int | None = None
    n_threads: int | None = None
    n_gpu_layers: int | None = None
    draft_gpu_layers: int | None = None
    kv_type: str | None = None
    budget: str | None = None  # "6GB", "75%"
    use_mlock: bool | None = None
    amx: str | None = None  # auto | on | off (None: $EDGESPEC_AMX, else auto)


@dataclass
class GenOptions:
    """How to generate. `mode` picks the drafter: auto, model, ngram or none; `k` fixes the draft
    length (None lets the controller choose, up to k_max)."""

    mode: str = "auto"
    k: int | None = None
    k_max: int = 16
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int = 256
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False


@dataclass
class Reply:
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    finish: str | None = None  # stop | length | context | interrupted
    stats: Stats = field(default_factory=Stats)
    warnings: list[str] = field(default_factory=list)


def load_pair(target: str | Path, draft: str | Path | None, opts: LoadOptions) -> tuple[Model, Model | None]:
    """Plan memory, then load target and (optional) draft.

    Both files are checked and the plan is made before the slow loads start, so a pair that cannot
    fit fails in one line without loading anything. The plan is kept on the target as `.plan`.
    """
    from edgespec.machine import cpu_paths, memory

    check_gguf(target)
    if draft is not None:
        check_gguf(draft)
    if opts.kv_type is not None and opts.kv_type not in memory.KV_TYPES:
        raise UsageError(f"unknown --kv-type {opts.kv_type!r}", f"use one of {', '.join(memory.KV_TYPES)}")
    budget = memory.parse_size(opts.budget, total=memory.system_memory().total) if opts.budget else None
    plan = memory.plan(
        target, draft, n_ctx=opts.n_ctx, budget=budget, kv_type=opts.kv_type,
        n_gpu_layers=opts.n_gpu_layers, draft_gpu_layers=opts.draft_gpu_layers, use_mlock=opts.use_mlock,
    )
    common = dict(
        cpu=cpu_paths.decide(opts.amx), n_ctx=plan.n_ctx, n_threads=opts.n_threads, n_batch=plan.n_ubatch, use_mmap=plan.use_mmap,
        use_mlock=plan.use_mlock, type_k=plan.ggml_type_k, type_v=plan.ggml_type_v, flash_attn=plan.flash_attn,
    )
    t = Model(target, n_gpu_layers=plan.n_gpu_layers, **common)
    t.plan = plan
    if draft is None:
        return t, None
    try:
        d = Model(draft, n_gpu_layers=plan.draft_gpu_layers, **common)
    except BaseException:
        t.close()
        raise
    try:
        check_compatible(t, d)
    except BaseException:
        t.close()
        d.close()
        raise
    return t, d


def prompt_tokens(model: Model, prompt: str, *, system: str | None = None, raw: bool = False) -> list[int]:
    """The token ids for a user prompt: through the model's chat template unless raw (or none exists)."""
    if not prompt.strip():
        raise UsageError("the prompt is empty", "give the text to send to the model")
    if raw or model.chat_template() is None:
        return model.tokenize(prompt)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return model.tokenize_prompt(model.apply_chat_template(messages))


def check_fits(model: Model, n_prompt: int, max_tokens: int) -> None:
    """Refuse up front when the prompt plus the requested reply cannot fit the context."""
    if n_prompt + max_tokens > model.n_ctx:
        raise ContextOverflowError(
            f"the prompt ({n_prompt} tokens) plus --max-tokens {max_tokens} exceed the {model.n_ctx}-token context",
            f"use --ctx {n_prompt + max_tokens} or more, or a smaller --max-tokens",
        )


def make_controller(target: Model, draft: Model | None, opts: GenOptions, on_calibrate=None) -> Controller:
    """The controller for `opts`. Choosing k needs measured costs: cached, or measured now (a few seconds)."""
    if opts.mode not in MODES:
        raise UsageError(f"--draft-mode must be one of {', '.join(MODES)}, got {opts.mode!r}")
    if opts.mode == "model" and draft is None:
        raise UsageError("--draft-mode model needs a draft model", "pass --draft or --pair")
    if opts.k is not None and opts.k < 0:
        raise UsageError(f"--k must be >= 0, got {opts.k}")
    has_model = draft is not None
    if opts.mode == "none" or opts.k is not None:
        k = 0 if opts.mode == "none" else opts.k
        return Controller(Costs({1: 1.0}), mode=opts.mode, k=k, k_max=max(k, 1), has_model=has_model)
    cached = calibrate.load(target, draft)
    if cached is None and on_calibrate:
        on_calibrate()
    costs, _ = calibrate.load_or_measure(target, draft, opts.k_max)
    return Controller(costs, mode=opts.mode, k_max=opts.k_max, has_model=has_model)


def stream(
    target: Model, draft: Model | None, tokens: list[int], opts: GenOptions, reply: Reply,
    controller: Controller | None = None,
) -> Iterator[str]:
    """Yield printable text as it is produced; `reply` collects text, tokens, stats and finish reason.

    If the consumer stops early (Ctrl-C), `reply` still holds everything shown so far. Pass the same
    controller across calls (chat turns) to keep what it learned.
    """
    ctl = controller or make_controller(target, draft, opts)
    text = TextStream(target.piece, opts.stop)
    steps = generate(
        target, draft, tokens, sampling=opts.sampling, max_tokens=opts.max_tokens, seed=opts.seed,
        suppress=target.eog_tokens if opts.ignore_eos else (), controller=ctl,
    )
    try:
        for step in steps:
            reply.stats.add(step)
            if step.note:
                reply.warnings.append(step.note)
            if step.tokens:
                reply.tokens.extend(step.tokens)
                piece = text.push(step.tokens)
                if piece:
                    yield piece
            if text.stopped:
                reply.finish = "stop"
                break
            if step.finish:
                reply.finish = step.finish
        tail = text.flush()
        if tail:
            yield tail
    finally:
        steps.close()
        reply.text = text.text
        warning = ctl.warning()
        if warning:
            reply.warnings.append(warning)
        if ctl.k_fixed is None and ctl.mode != "none":
            calibrate.save(target, draft, ctl.costs)  # keep the costs refreshed by this run
