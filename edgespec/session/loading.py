"""Loading a pair within the memory plan, and turning what a user wrote into the target's tokens."""

from __future__ import annotations

from pathlib import Path

from edgespec.errors import ContextOverflowError, UsageError
from edgespec.llama.model import Model, check_gguf
from edgespec.llama.pairing import check_pairing
from edgespec.session.options import LoadOptions


def load_pair(target: str | Path, draft: str | Path | None, opts: LoadOptions) -> tuple[Model, Model | None]:
    """Plan memory, then load target and (optional) draft.

    Both files are checked and the plan is made before the slow loads start, so a pair that cannot
    fit fails in one line without loading anything. The plan is kept on the target as `.plan`.
    """
    from edgespec.machine import cpu_paths, planner

    check_gguf(target)
    if draft is not None:
        check_gguf(draft)
    plan = planner.plan(
        target, draft, n_ctx=opts.n_ctx, budget=memory_budget(opts), kv_type=opts.kv_type,
        n_gpu_layers=opts.n_gpu_layers, draft_gpu_layers=opts.draft_gpu_layers, use_mlock=opts.use_mlock,
        flash_attn=opts.flash_attn,
    )
    common = dict(
        cpu=cpu_paths.decide(opts.amx), n_ctx=plan.n_ctx, n_threads=opts.n_threads, n_batch=plan.n_ubatch,
        use_mmap=plan.use_mmap, use_mlock=plan.use_mlock, type_k=plan.ggml_type_k, type_v=plan.ggml_type_v,
    )
    t = Model(target, n_gpu_layers=plan.n_gpu_layers, flash_attn=plan.flash_attn, **common)
    t.plan = plan
    if draft is None:
        return t, None
    try:
        d = Model(draft, n_gpu_layers=plan.draft_gpu_layers, flash_attn=plan.draft_flash_attn, **common)
    except BaseException:
        t.close()
        raise
    try:
        check_pairing(t, d)
    except BaseException:
        t.close()
        d.close()
        raise
    return t, d


def memory_budget(opts: LoadOptions) -> int | None:
    """--budget in bytes (a percentage is of this machine's RAM); None: the planner's default."""
    from edgespec.machine import estimate, system

    return estimate.parse_size(opts.budget, total=system.system_memory().total) if opts.budget else None


# ------------------------------------------------------------------------------------------ prompts
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def render(model: Model, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """Messages as the model expects them: its GGUF's own chat template, or ChatML where it has none
    (the format most instruction-tuned GGUFs without a template were trained on). One rule for run,
    chat and the server; --raw bypasses it."""
    return model.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                     template=None if model.chat_template() else CHATML)


def prompt_tokens(model: Model, prompt: str, *, system: str | None = None, raw: bool = False,
                  turns: list[dict] | tuple = ()) -> list[int]:
    """The token ids for a user prompt (after earlier `turns`, if any): through the chat template unless raw."""
    if not prompt.strip():
        raise UsageError("the prompt is empty", "give the text to send to the model")
    if raw:
        return model.tokenize(prompt)
    messages = ([{"role": "system", "content": system}] if system else []) + list(turns) + [{"role": "user", "content": prompt}]
    return model.tokenize_prompt(render(model, messages))


def check_fits(model: Model, n_prompt: int, max_tokens: int) -> None:
    """Refuse up front when the prompt plus the requested reply cannot fit the context."""
    if n_prompt + max_tokens > model.n_ctx:
        raise ContextOverflowError(
            f"the prompt ({n_prompt} tokens) plus --max-tokens {max_tokens} exceed the {model.n_ctx}-token context",
            f"use --ctx {n_prompt + max_tokens} or more, or a smaller --max-tokens",
        )
