"""From a prompt's tokens to a streamed reply: the controller for the settings, the engine, the text.

`stream` is what `run`, chat and the server share: it yields printable text as it is produced and
fills a Reply (text, tokens, statistics, finish reason, warnings) that stays right when the consumer
stops early.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

from edgespec.core.engine import Step, generate
from edgespec.core.kinds import Finish, Mode
from edgespec.core.policy import Controller, Costs
from edgespec.core.stats import Stats
from edgespec.core.suffix import OutputMemory, SuffixIndex
from edgespec.machine import calibrate
from edgespec.session.options import GenOptions
from edgespec.text import TextStream


@dataclass
class Reply:
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    finish: Finish | None = None
    stats: Stats = field(default_factory=Stats)
    warnings: list[str] = field(default_factory=list)


def make_controller(target, draft, opts: GenOptions, on_calibrate: Callable[[], None] | None = None) -> Controller:
    """The controller for `opts`. Choosing k needs measured costs: cached, or measured now (a few seconds)."""
    opts.check_draft(draft is not None)
    has_model = draft is not None
    if opts.k is not None or opts.mode is Mode.PLAIN:  # nothing to choose: no costs needed
        k = opts.k or 0
        return Controller(Costs({1: 1.0}), mode=opts.mode, k=k, k_max=max(k, 1), has_model=has_model)
    if calibrate.load(target, draft) is None and on_calibrate:
        on_calibrate()
    costs, _ = calibrate.load_or_measure(target, draft, opts.k_max)
    return Controller(costs, mode=opts.mode, k_max=opts.k_max, has_model=has_model)


def stream(
    target, draft, tokens: list[int], opts: GenOptions, reply: Reply, controller: Controller | None = None,
    on_step: Callable[[Step], Finish | None] | None = None, context: SuffixIndex | None = None,
    memory: OutputMemory | None = None,
) -> Iterator[str]:
    """Yield printable text as it is produced; `reply` collects text, tokens, stats and finish reason.

    If the consumer stops early (Ctrl-C, a client gone), `reply` still holds everything shown so far.
    Pass the same controller across calls (chat turns) to keep what it learned, and the same context
    index to keep what was indexed (a conversation's earlier turns); `on_step` sees each engine step
    as it is counted, and may end the reply after that step's text by returning a finish reason (a
    time limit); to drop the step instead, it raises.
    """
    ctl = controller or make_controller(target, draft, opts)
    # Speculative sampling draws as many uniforms as it drafts: for the same seed to give the same
    # reply, draft lengths must not depend on how long steps happened to take (set per reply: a chat's
    # controller serves turns with and without a seed).
    ctl.costs.frozen = opts.seed is not None and not opts.sampling.greedy
    text = TextStream(target.piece, opts.stop)
    steps = generate(
        target, draft, tokens, sampling=opts.sampling, max_tokens=opts.max_tokens, seed=opts.seed,
        suppress=target.eog_tokens if opts.ignore_eos else (), controller=ctl, context=context,
        memory=memory,
    )
    try:
        for step in steps:
            reply.stats.add(step)
            end = on_step(step) if on_step is not None else None
            if step.note:
                reply.warnings.append(step.note)
            if step.tokens:
                reply.tokens.extend(step.tokens)
                piece = text.push(step.tokens)
                if piece:
                    yield piece
            if text.stopped:
                reply.finish = Finish.STOP
                break
            if step.finish:
                reply.finish = step.finish
            if end is not None and not step.finish:
                reply.finish = end
                break
        tail = text.flush()
        if tail:
            yield tail
    finally:
        steps.close()
        reply.text = text.text
        warning = ctl.warning()
        if warning:
            reply.warnings.append(warning)
        if ctl.adaptive:
            calibrate.save(target, draft, ctl.costs)  # keep the costs refreshed by this run
