"""The benchmark: every prompt of a suite in every mode, interleaved, in one process.

Order: for each repeat r (0-based), for each prompt in suite order, every mode in turn, starting at
mode number r mod M (M modes, in --modes order) and wrapping around. With one repeat that is simply
the --modes order for every prompt; with more, each mode takes each position in turn, so slow drift
on a noisy machine (thermal throttling, another process) hits every mode alike. The executed order is
recorded as `run_order` in the JSON.

Every run starts from empty KV caches (prefill is measured, never reused from the previous mode) and
a fresh controller: its initial costs are the calibrated ones (edgespec.machine.calibrate, cached on
disk, measured once if missing), deep-copied per run, so what one run learns never leaks into the next.

Greedy runs are compared with plain decoding of the same prompt and repeat (edgespec.bench.matching):
"exact", "near-tie" or "MISMATCH".

With lockstep, the edgespec modes of one prompt and repeat run side by side instead of one after the
other: each has its own KV caches (Model.twin: a second context on the same weights) and they take
one step each in turn, in the run order's order. Each step is timed on its own, so a burst of noise
(another process, a page-in) that lasts longer than a step or two hits every mode alike, and the
paired speed-ups are much tighter on a shared machine. llama.cpp rows still run after them.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

from edgespec.bench.matching import NEAR_TIE, first_divergence, text_divergence, top2_margin
from edgespec.bench.modes import PLAIN, BenchMode
from edgespec.bench.suite import Prompt
from edgespec.core.engine import Step, generate
from edgespec.core.kinds import Finish
from edgespec.core.stats import Stats
from edgespec.core.verify import SamplingParams
from edgespec.errors import EdgespecError, UsageError
from edgespec.machine.system import current_rss, loadavg

DEFAULT_MAX_TOKENS = 64
WARMUP_TOKENS = 8


def run_order(n_prompts: int, n_modes: int, repeats: int) -> list[tuple[int, int, int]]:
    """(repeat, prompt index, mode index) in execution order; see the module docstring."""
    return [(r, p, (r + j) % n_modes) for r in range(repeats) for p in range(n_prompts) for j in range(n_modes)]


@dataclass
class Run:
    """One prompt decoded once in one mode: its statistics and how it compares with plain decoding."""

    seq: int  # position in the run order (0-based)
    repeat: int
    prompt_id: str
    category: str
    mode: str
    k: int | None
    stats: Stats = field(default_factory=Stats)
    per_step: bool = True  # False: the counts come from llama.cpp's report, which has no per-step detail
    finish: Finish | None = None
    wall_s: float = 0.0
    peak_rss: int | None = None  # bytes
    text: str | None = ""  # None: the reply could not be read (llama.cpp's echo not found)
    tokens: list[int] | None = None  # None for llama.cpp rows: they are compared by their bytes
    raw: bytes | None = None  # llama.cpp rows: the reply as it printed it
    speedup: float | None = None  # decode tokens/s over plain's, same prompt and repeat
    match: str | None = None  # reference (plain) | exact | near-tie | MISMATCH | None (sampling, or unknown)
    first_diff: int | None = None
    margin: float | None = None
    step_log: list[list] | None = None  # per decode step: [drafter, drafted, accepted, seconds] (None for llama.cpp rows)

    @property
    def e2e_tps(self) -> float:
        return self.stats.generated / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict:
        stats = self.stats.as_dict()
        if not self.per_step:
            stats.update(mean_accepted_length=None, draft_steps=None, target_passes=None, tokens_per_target_pass=None)
        return {
            "seq": self.seq, "repeat": self.repeat, "prompt": self.prompt_id, "category": self.category,
            "mode": self.mode, "k": self.k, **stats, "finish": self.finish,
            "wall_s": round(self.wall_s, 5), "e2e_tokens_per_s": round(self.e2e_tps, 3),
            "speedup": None if self.speedup is None else round(self.speedup, 4),
            "peak_rss_bytes": self.peak_rss, "match": self.match, "first_diff": self.first_diff,
            "margin": None if self.margin is None else round(self.margin, 4), "text": self.text,
            "token_ids": self.tokens,  # the reply's tokens (None for llama.cpp rows): replayable offline
            "step_log": self.step_log,  # what each step drafted and what it cost: where a mode's choices parted
        }


@dataclass
class _Live:
    """One generation being driven, and what it has produced so far."""

    steps: Iterator[Step]
    stats: Stats = field(default_factory=Stats)
    tokens: list[int] = field(default_factory=list)
    finish: Finish | None = None
    peak: int | None = None  # the process's peak RSS seen while it ran
    log: list[list] = field(default_factory=list)  # per decode step: [drafter, drafted, accepted, seconds]

    def __post_init__(self):
        self.peak = current_rss()


def _drive(lives: Sequence[_Live]) -> None:
    """Step each generation in turn until all are done (a single one simply runs to its end)."""
    live = list(lives)
    try:
        while live:
            for g in list(live):
                step = next(g.steps, None)
                if step is None:
                    live.remove(g)
                    continue
                g.stats.add(step)
                g.tokens.extend(step.tokens)
                if step.tokens:  # a decode step (the prefill has none)
                    g.log.append([str(step.drafter), step.drafted, step.accepted, round(step.t_draft + step.t_verify, 6)])
                if step.finish:
                    g.finish = step.finish
                rss = current_rss()
                if rss is not None and (g.peak is None or rss > g.peak):
                    g.peak = rss
    finally:
        for g in live:
            g.steps.close()


@dataclass
class Settings:
    max_tokens: int | None = None  # caps every prompt's budget; None: each prompt's own, else DEFAULT_MAX_TOKENS
    repeats: int = 1
    warmup: bool = True
    sampling: SamplingParams = field(default_factory=SamplingParams)
    seed: int = 0
    ignore_eos: bool = False
    k_max: int = 64
    near_tie: float = NEAR_TIE
    lockstep: bool = False  # edgespec modes of a prompt step in turn, each in its own context

    def __post_init__(self) -> None:
        if self.repeats < 1:
            raise UsageError(f"--repeats must be >= 1, got {self.repeats}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise UsageError(f"--max-tokens must be >= 1, got {self.max_tokens}")


@dataclass
class Result:
    prompts: list[Prompt]
    modes: list[BenchMode]
    settings: Settings
    runs: list[Run] = field(default_factory=list)
    prompt_token_counts: dict[str, int] = field(default_factory=dict)
    prompt_token_ids: dict[str, list[int]] = field(default_factory=dict)  # what the target was given, templated
    budgets: dict[str, int] = field(default_factory=dict)  # prompt id -> the answer budget it ran with
    warmup: dict | None = None
    calibration: dict | None = None
    interrupted: bool = False
    started: str = ""
    wall_s: float = 0.0
    loadavg: dict | None = None  # the machine's load average before and after the runs (a busy machine is a noisy one)


Progress = Callable[[int, int, str], None]  # (runs done, runs total, what runs next)


class Bench:
    """Runs a suite on one loaded target/draft pair (and optionally llama.cpp's binary)."""

    def __init__(self, target, draft, prompts: Sequence[Prompt], modes: Sequence[BenchMode], settings: Settings,
                 llama_cpp=None):
        from edgespec.session.loading import check_fits, prompt_tokens

        for m in modes:
            if m.needs_draft and draft is None:
                raise UsageError(f"mode {m.name} needs a draft model", "pass --draft or --pair, or leave that mode out of --modes")
            if m.external and llama_cpp is None:
                raise UsageError(f"mode {m.name} needs --llama-cpp-bin DIR")
        self.target, self.draft = target, draft
        self.prompts, self.modes, self.settings = list(prompts), list(modes), settings
        self.llama_cpp = llama_cpp
        self.tokens: list[list[int]] = []
        for p in self.prompts:
            toks = prompt_tokens(target, p.prompt, system=p.system, turns=p.turns)
            try:
                check_fits(target, len(toks), self.max_tokens(p))
            except EdgespecError as e:
                raise type(e)(f"prompt {p.id!r}: {e.message}", e.hint) from None
            self.tokens.append(toks)
        self.banned = list(target.eog_tokens) if settings.ignore_eos else []
        self.templates: dict[str, object] = {}
        self._contexts: dict[str, tuple] = {}  # lockstep: mode name -> (target, draft) contexts

    def max_tokens(self, p: Prompt) -> int:
        """The prompt's own budget (else DEFAULT_MAX_TOKENS), capped by --max-tokens when given."""
        own = p.max_tokens or DEFAULT_MAX_TOKENS
        return min(own, self.settings.max_tokens) if self.settings.max_tokens else own

    # ------------------------------------------------------------------------------ set-up
    def prepare(self, on_calibrate: Callable[[], None] | None = None) -> dict | None:
        """One controller per mode, built once; each run gets a deep copy. Returns the calibrated costs used."""
        from edgespec.session.options import GenOptions
        from edgespec.session.runner import make_controller

        costs = None
        for m in self.modes:
            if m.external:
                continue
            opts = GenOptions(mode=m.engine, k=m.k if m.k else None, k_max=self.settings.k_max)
            # The draft is passed for every mode, as `edgespec run` does with a pair, so all modes share one
            # calibration entry; only model and auto runs hand it to the engine (see _start).
            ctl = make_controller(self.target, self.draft, opts, on_calibrate=on_calibrate)
            self.templates[m.name] = ctl
            if ctl.adaptive and costs is None:
                costs = {"verify_s": {str(n): v for n, v in sorted(ctl.costs.verify.items())}, "draft_token_s": ctl.costs.draft_token,
                         "position": ctl.costs.position,
                         "attend_s": ctl.costs.attend, "attend_base_s": ctl.costs.attend_base,
                         "flash_attn": getattr(self.target, "flash_attn", None)}
        return costs

    def warm_up(self) -> dict | None:
        """Untimed: the shortest prompt in every edgespec mode, a few tokens each (pages the weights in)."""
        if not self.settings.warmup:
            return None
        i = min(range(len(self.prompts)), key=lambda j: len(self.tokens[j]))
        n = min(WARMUP_TOKENS, self.max_tokens(self.prompts[i]))
        done = []
        for m in self.modes:
            if not m.external:
                _drive([self._start(m, self.target, self.draft, self.tokens[i], n, seed=self.settings.seed)])
                done.append(m.name)
        return {"prompt": self.prompts[i].id, "modes": done, "max_tokens": n}

    # --------------------------------------------------------------------------------- runs
    def _start(self, mode: BenchMode, target, draft, prompt: list[int], max_tokens: int, seed: int) -> _Live:
        """A generation of `mode` on these contexts, from cold caches (every run pays its own prefill)."""
        target.rollback(0)
        if draft is not None:
            draft.rollback(0)
        return _Live(generate(
            target, draft if mode.uses_draft else None, prompt, sampling=self.settings.sampling,
            max_tokens=max_tokens, seed=seed, suppress=self.banned, controller=copy.deepcopy(self.templates[mode.name]),
        ))

    def _seed(self, repeat: int, pi: int) -> int:
        return self.settings.seed + 1000 * repeat + pi  # the same for every mode of this prompt and repeat

    def _models_for(self, mode: BenchMode):
        """Lockstep: the first edgespec mode uses the loaded contexts, each further one a twin of its own."""
        if mode.name not in self._contexts:
            if not self._contexts:
                self._contexts[mode.name] = (self.target, self.draft)
            else:
                need = max(len(t) + self.max_tokens(p) for t, p in zip(self.tokens, self.prompts)) + self.settings.k_max + 2
                n_ctx = min(self.target.n_ctx, 256 * -(-need // 256))
                t = self.target.twin(n_ctx)
                d = self.draft.twin(n_ctx) if self.draft is not None and mode.uses_draft else None
                self._contexts[mode.name] = (t, d)
        return self._contexts[mode.name]

    def close(self) -> None:
        """Free the lockstep twins (the loaded pair belongs to the caller)."""
        for t, d in self._contexts.values():
            if t is not self.target:
                t.close()
            if d is not None and d is not self.draft:
                d.close()
        self._contexts = {}

    def _run_group(self, items: list[tuple[int, int, int, BenchMode]], lockstep: bool) -> list[Run]:
        """(seq, repeat, prompt index, mode) of edgespec modes: side by side (lockstep), or one after the other."""
        runs = []
        lives: list[_Live] = []
        for seq, repeat, pi, mode in items:
            p = self.prompts[pi]
            runs.append(Run(seq, repeat, p.id, p.category, mode.name, mode.k))
            models = self._models_for(mode) if lockstep else (self.target, self.draft)
            g = self._start(mode, *models, self.tokens[pi], self.max_tokens(p), self._seed(repeat, pi))
            if lockstep:
                lives.append(g)
                continue
            t0 = time.perf_counter()
            _drive([g])
            self._fill(runs[-1], g, time.perf_counter() - t0)
        if lockstep:
            _drive(lives)
            for run, g in zip(runs, lives):
                self._fill(run, g, g.stats.t_prefill + g.stats.t_decode)  # its own steps only: the others ran in between
        return runs

    def _run_external(self, seq: int, repeat: int, pi: int, mode: BenchMode) -> Run:
        p = self.prompts[pi]
        run = Run(seq, repeat, p.id, p.category, mode.name, mode.k, per_step=False)
        self.llama_cpp.run(run, self.target, self.draft, p, self.tokens[pi], self.max_tokens(p), self._seed(repeat, pi),
                           spec=mode.llama_spec)
        return run

    def _fill(self, run: Run, g: _Live, wall: float) -> None:
        run.stats, run.tokens, run.finish, run.wall_s, run.peak_rss = g.stats, g.tokens, g.finish, wall, g.peak
        run.step_log = g.log
        run.text = self.target.detokenize(g.tokens)

    def _compare(self, group: list[Run]) -> None:
        """Speedups and match flags for one prompt and repeat, against its plain run."""
        pi = next(i for i, p in enumerate(self.prompts) if p.id == group[0].prompt_id)
        plain = next((r for r in group if r.mode == PLAIN), None)
        if plain is None:
            return
        plain.speedup = 1.0
        greedy = self.settings.sampling.greedy
        plain.match = "reference" if greedy else None
        margins: dict[int, float] = {}
        for r in group:
            if r is plain:
                continue
            if plain.stats.tokens_per_s > 0 and r.stats.tokens_per_s > 0:
                r.speedup = r.stats.tokens_per_s / plain.stats.tokens_per_s
            if not greedy or plain.tokens is None:
                continue
            if r.tokens is not None:
                i = first_divergence(plain.tokens, r.tokens)
            elif r.raw is not None:  # llama.cpp: its bytes, up to where either reply ends (it may overshoot -n)
                from edgespec.bench.llamacpp import special_pieces  # printed as it prints them: <s>, <unk>, ...

                i = text_divergence(special_pieces(self.target, plain.tokens), r.raw)
            else:
                continue
            if i is None:
                r.match = "exact"
                continue
            if i not in margins:
                margins[i] = top2_margin(self.target, self.tokens[pi] + plain.tokens[:i], self.banned)
            r.first_diff, r.margin = i, margins[i]
            r.match = "near-tie" if r.margin < self.settings.near_tie else "MISMATCH"

    def run(self, progress: Progress | None = None) -> Result:
        """Every prompt in every mode, `repeats` times, in run_order's order. Ctrl-C keeps what is done.

        One prompt and repeat at a time: its edgespec modes (side by side with lockstep), then
        llama.cpp's, each in its place in the run order."""
        res = Result(self.prompts, self.modes, self.settings, started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        res.prompt_token_counts = {p.id: len(t) for p, t in zip(self.prompts, self.tokens)}
        res.prompt_token_ids = {p.id: list(t) for p, t in zip(self.prompts, self.tokens)}
        res.budgets = {p.id: self.max_tokens(p) for p in self.prompts}
        before = loadavg()
        t_start = time.perf_counter()
        order = run_order(len(self.prompts), len(self.modes), self.settings.repeats)
        M = len(self.modes)
        try:
            for g in range(0, len(order), M):
                items = [(g + j, r, pi, self.modes[mi]) for j, (r, pi, mi) in enumerate(order[g : g + M])]
                group: list[Run] = []
                try:
                    if self.settings.lockstep:
                        self._note(progress, g, len(order), items[0], None)
                        group = self._run_group([it for it in items if not it[3].external], lockstep=True)
                        group += [self._run_external(*it) for it in items if it[3].external]
                    else:
                        for it in items:
                            self._note(progress, it[0], len(order), it, it[3].name)
                            group += [self._run_external(*it)] if it[3].external else self._run_group([it], lockstep=False)
                finally:
                    group.sort(key=lambda run: run.seq)
                    res.runs.extend(group)
                    self._compare(group)
        except KeyboardInterrupt:
            res.interrupted = True
        if progress:
            progress(len(res.runs), len(order), "done")
        res.wall_s = time.perf_counter() - t_start
        res.loadavg = {"before": before, "after": loadavg()}
        return res

    def _note(self, progress: Progress | None, done: int, total: int, item, mode_name: str | None) -> None:
        if progress:
            _, r, pi, _ = item
            what = self.prompts[pi].id + (f" · {mode_name}" if mode_name else "")
            progress(done, total, what + (f" · repeat {r + 1}" if self.settings.repeats > 1 else ""))
