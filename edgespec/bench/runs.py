"""The benchmark: every prompt of a suite in every mode, interleaved, in one process.

Order: for each repeat r (0-based), for each prompt in suite order, every mode in turn, starting at
mode number r mod M (M modes, in --modes order) and wrapping around. With one repeat that is simply
the --modes order for every prompt; with more, each mode takes each position in turn, so slow drift
on a noisy machine (thermal throttling, another process) hits every mode alike. The executed order is
recorded as `run_order` in the JSON.

Every run starts from empty KV caches (prefill is measured, never reused from the previous mode) and
a fresh controller: its initial costs are the calibrated ones (edgespec.calibrate, cached on disk,
measured once if missing), deep-copied per run, so what one run learns never leaks into the next.

Greedy runs are compared with plain decoding of the same prompt and repeat: "exact", "near-tie"
(the first differing token is one where the target's top-2 logit margin, from a one-token
evaluation of prompt + plain[:i], is below the near-tie bound: llama.cpp's batched CPU evaluation is
not bit-identical to one-token evaluation) or "MISMATCH".

With lockstep, the edgespec modes of one prompt and repeat run side by side instead of one after the
other: each has its own KV caches (Model.twin: a second context on the same weights) and they take
one step each in turn, in the run order's order. Each step is timed on its own, so a burst of noise
(another process, a page-in) that lasts longer than a step or two hits every mode alike, and the
paired speed-ups are much tighter on a shared machine. llama.cpp rows still run after them.
"""

from __future__ import annotations

import copy
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from edgespec.core.engine import Stats, Step, generate
from edgespec.errors import EdgespecError, UsageError
from edgespec.core.verify import SamplingParams

CATEGORIES = ("codegen", "edit", "chat", "extract", "json")
QUICK_CATEGORIES = ("codegen", "edit", "extract", "chat", "json")  # --quick: first prompt of the first three present
DEFAULT_MODES = ("plain", "model-k2", "model-k4", "model-k6", "ngram", "auto")
DEFAULT_MAX_TOKENS = 64
QUICK_MAX_TOKENS = 64
QUICK_PROMPTS = 3
NEAR_TIE = 0.5  # logits; the largest batched-vs-one-token difference measured on CPU was ~0.43
WARMUP_TOKENS = 8
PLAIN = "plain"

_SUITE_KEYS = ("id", "category", "prompt", "system", "max_tokens")


# ----------------------------------------------------------------------------------------- suite
@dataclass(frozen=True)
class Prompt:
    id: str
    category: str
    prompt: str
    system: str | None = None
    max_tokens: int | None = None  # lowers --max-tokens for this prompt


def shipped_suite_text() -> str:
    return resources.files("edgespec").joinpath("prompts", "suite.jsonl").read_text(encoding="utf-8")


def load_suite(path: str | os.PathLike | None = None) -> list[Prompt]:
    """The shipped suite, or a user's JSONL file in the same format."""
    if path is None:
        return parse_suite(shipped_suite_text(), "edgespec/prompts/suite.jsonl")
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"prompt file not found: {p}") from None
    except IsADirectoryError:
        raise UsageError(f"{p} is a directory, not a JSONL prompt file") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"{p} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise UsageError(f"cannot read {p}: {e.strerror}") from None
    return parse_suite(text, str(p))


def parse_suite(text: str, name: str) -> list[Prompt]:
    """One JSON object per line: id, category, prompt (required), system, max_tokens (optional).

    Blank lines are skipped; anything else that is wrong fails naming the file and line.
    """
    prompts: list[Prompt] = []
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue

        def bad(problem: str) -> UsageError:
            return UsageError(
                f"{name}:{lineno}: {problem}",
                'each line must be a JSON object like {"id": "...", "category": "...", "prompt": "..."}',
            )

        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise bad(f"not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise bad(f"expected a JSON object, got {type(obj).__name__}")
        unknown = sorted(set(obj) - set(_SUITE_KEYS))
        if unknown:
            raise bad(f"unknown key {unknown[0]!r} (allowed: {', '.join(_SUITE_KEYS)})")
        for key in ("id", "category", "prompt"):
            if key not in obj:
                raise bad(f'missing "{key}"')
            if not isinstance(obj[key], str) or not obj[key].strip():
                raise bad(f'"{key}" must be a non-empty string')
        system = obj.get("system")
        if system is not None and not isinstance(system, str):
            raise bad('"system" must be a string')
        mt = obj.get("max_tokens")
        if mt is not None and (isinstance(mt, bool) or not isinstance(mt, int) or mt < 1):
            raise bad(f'"max_tokens" must be a whole number >= 1, got {mt!r}')
        pid = obj["id"]
        if pid in first_line:
            raise bad(f"duplicate id {pid!r} (first on line {first_line[pid]})")
        first_line[pid] = lineno
        prompts.append(Prompt(pid, obj["category"], obj["prompt"], system or None, mt))
    if not prompts:
        raise UsageError(f"{name} has no prompts")
    return prompts


def select(prompts: Sequence[Prompt], categories: Sequence[str] = (), quick: bool = False) -> list[Prompt]:
    """Filter by category (in suite order); --quick keeps the first prompt of up to three categories."""
    out = list(prompts)
    if categories:
        present = sorted({p.category for p in prompts})
        for c in categories:
            if c not in present:
                raise UsageError(f"no prompts in category {c!r}", f"categories here: {', '.join(present)}")
        out = [p for p in out if p.category in set(categories)]
    if quick:
        firsts: dict[str, Prompt] = {}
        for p in out:
            firsts.setdefault(p.category, p)
        order = [c for c in QUICK_CATEGORIES if c in firsts] + [c for c in firsts if c not in QUICK_CATEGORIES]
        chosen = {firsts[c].id for c in order[:QUICK_PROMPTS]}
        for p in out:  # fewer categories than QUICK_PROMPTS: top up in suite order
            if len(chosen) >= QUICK_PROMPTS:
                break
            chosen.add(p.id)
        out = [p for p in out if p.id in chosen]
    return out


# ----------------------------------------------------------------------------------------- modes
@dataclass(frozen=True)
class Mode:
    """A way to decode: `drafter` is the engine's mode (none, model, ngram, auto) or "llama.cpp"
    (llama.cpp's llama-speculative-simple binary); `k` a fixed draft length, None: chosen per step."""

    name: str
    drafter: str
    k: int | None = None

    @property
    def external(self) -> bool:
        return self.drafter == "llama.cpp"

    @property
    def needs_draft(self) -> bool:
        return self.drafter in ("model", "llama.cpp")


_MODE_RE = re.compile(r"^(plain|none|model|ngram|auto|llama\.cpp-spec)(?:-k(\d+))?$")
MODE_HELP = "plain, model-kN, model (k chosen per step), ngram, ngram-kN, auto, llama.cpp-spec[-kN]"


def parse_mode(text: str, llama_cpp_k: int = 4) -> Mode:
    m = _MODE_RE.match(text.strip().lower())
    if not m:
        raise UsageError(f"unknown mode {text!r}", f"modes: {MODE_HELP}")
    kind, k = m.group(1), (int(m.group(2)) if m.group(2) is not None else None)
    if kind in ("plain", "none"):
        if k is not None:
            raise UsageError(f"mode {text!r}: plain decoding has no draft length", "use plain")
        return Mode(PLAIN, "none", 0)
    if kind == "auto" and k is not None:
        raise UsageError(f"mode {text!r}: auto chooses k itself", "use auto, or model-kN for a fixed k")
    if k is not None and not 1 <= k <= 64:
        raise UsageError(f"mode {text!r}: k must be between 1 and 64")
    if kind == "llama.cpp-spec":
        k = llama_cpp_k if k is None else k
        return Mode(f"llama.cpp-spec-k{k}", "llama.cpp", k)
    return Mode(kind if k is None else f"{kind}-k{k}", kind, k)


def parse_modes(values: Sequence[str], llama_cpp_k: int = 4) -> list[Mode]:
    """Comma-separated and/or repeated; duplicates dropped; plain added first when missing
    (speedups and the match check are relative to it)."""
    modes: list[Mode] = []
    for v in values:
        for part in v.split(","):
            if part.strip():
                mode = parse_mode(part, llama_cpp_k)
                if mode.name not in {m.name for m in modes}:
                    modes.append(mode)
    if not modes:
        raise UsageError("--modes is empty", f"modes: {MODE_HELP}")
    if PLAIN not in {m.name for m in modes}:
        modes.insert(0, Mode(PLAIN, "none", 0))
    return modes


def run_order(n_prompts: int, n_modes: int, repeats: int) -> list[tuple[int, int, int]]:
    """(repeat, prompt index, mode index) in execution order; see the module docstring."""
    return [(r, p, (r + j) % n_modes) for r in range(repeats) for p in range(n_prompts) for j in range(n_modes)]


# ------------------------------------------------------------------------------------------ runs
@dataclass
class Run:
    """One prompt decoded once in one mode."""

    seq: int  # position in the run order (0-based)
    repeat: int
    prompt_id: str
    category: str
    mode: str
    k: int | None
    prompt_tokens: int = 0  # the prompt's length
    prefill_tokens: int = 0  # evaluated in the prefill (the last prompt token goes with the first step)
    generated_tokens: int = 0
    finish: str | None = None
    prefill_s: float = 0.0
    decode_s: float = 0.0
    wall_s: float = 0.0
    drafted: int = 0
    accepted: int = 0
    draft_steps: int | None = 0  # None: not reported (llama.cpp)
    target_passes: int | None = 0
    k_hist: dict[int, int] = field(default_factory=dict)
    accepted_hist: dict[int, int] = field(default_factory=dict)
    drafter_steps: dict[str, int] = field(default_factory=dict)
    peak_rss: int | None = None  # bytes
    text: str | None = ""  # None: the reply could not be read (llama.cpp's echo not found)
    tokens: list[int] | None = None  # None for llama.cpp rows: they are compared by their bytes
    raw: bytes | None = None  # llama.cpp rows: the reply as it printed it
    speedup: float | None = None  # decode tokens/s over plain's, same prompt and repeat
    match: str | None = None  # reference (plain) | exact | near-tie | MISMATCH | None (sampling, or unknown)
    first_diff: int | None = None
    margin: float | None = None

    @property
    def prefill_tps(self) -> float:
        return self.prefill_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        return self.generated_tokens / self.decode_s if self.decode_s > 0 else 0.0

    @property
    def e2e_tps(self) -> float:
        return self.generated_tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def mean_accepted(self) -> float | None:
        if self.draft_steps is None:
            return None
        return self.accepted / self.draft_steps if self.draft_steps else 0.0

    def as_dict(self) -> dict:
        return {
            "seq": self.seq, "repeat": self.repeat, "prompt": self.prompt_id, "category": self.category,
            "mode": self.mode, "k": self.k, "prompt_tokens": self.prompt_tokens, "prefill_tokens": self.prefill_tokens,
            "generated_tokens": self.generated_tokens, "finish": self.finish,
            "prefill_s": round(self.prefill_s, 5), "prefill_tokens_per_s": round(self.prefill_tps, 2),
            "decode_s": round(self.decode_s, 5), "decode_tokens_per_s": round(self.decode_tps, 3),
            "wall_s": round(self.wall_s, 5), "e2e_tokens_per_s": round(self.e2e_tps, 3),
            "speedup": None if self.speedup is None else round(self.speedup, 4),
            "drafted": self.drafted, "accepted": self.accepted,
            "acceptance_rate": round(self.acceptance_rate, 4),
            "mean_accepted_length": None if self.mean_accepted is None else round(self.mean_accepted, 3),
            "draft_steps": self.draft_steps, "target_passes": self.target_passes,
            "k_histogram": {str(k): v for k, v in sorted(self.k_hist.items())},
            "accepted_histogram": {str(k): v for k, v in sorted(self.accepted_hist.items())},
            "drafter_steps": dict(sorted(self.drafter_steps.items())),
            "peak_rss_bytes": self.peak_rss, "match": self.match, "first_diff": self.first_diff,
            "margin": None if self.margin is None else round(self.margin, 4), "text": self.text,
        }


def _fill_from_stats(run: Run, s: Stats) -> None:
    run.prefill_tokens = s.prompt_tokens
    run.generated_tokens = s.generated
    run.prefill_s, run.decode_s = s.t_prefill, s.t_decode
    run.drafted, run.accepted, run.draft_steps, run.target_passes = s.drafted, s.accepted, s.draft_steps, s.steps
    run.k_hist, run.accepted_hist, run.drafter_steps = dict(s.k_hist), dict(s.accepted_hist), dict(s.drafter_steps)


# -------------------------------------------------------------------------------------- memory
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass
class _Live:
    """One generation being driven, and what it has produced so far."""

    steps: Iterator[Step]
    stats: Stats = field(default_factory=Stats)
    tokens: list[int] = field(default_factory=list)
    finish: str | None = None
    peak: int | None = None  # the process's peak RSS seen while it ran

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
                if step.finish:
                    g.finish = step.finish
                rss = current_rss()
                if rss is not None and (g.peak is None or rss > g.peak):
                    g.peak = rss
    finally:
        for g in live:
            g.steps.close()


def current_rss() -> int | None:
    """Resident set size of this process now, in bytes (None where it cannot be read)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil  # type: ignore[import-not-found]

        return int(psutil.Process().memory_info().rss)
    except Exception:
        return None


def process_peak_rss() -> int | None:
    """Peak RSS of this process so far (bytes)."""
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak) if sys.platform == "darwin" else int(peak) * 1024
    except Exception:
        return None


# ------------------------------------------------------------------------------------- matching
def first_divergence(ref: Sequence[int], out: Sequence[int], prefix_only: bool = False) -> int | None:
    """Index of the first differing token; None when equal (or, prefix_only, when one is a prefix of the other)."""
    n = min(len(ref), len(out))
    for i in range(n):
        if ref[i] != out[i]:
            return i
    if prefix_only or len(ref) == len(out):
        return None
    return n


def text_divergence(pieces: Sequence[bytes], out: bytes) -> int | None:
    """For a reply known only as printed bytes (llama.cpp's): the index of the reference token whose bytes
    first differ from it, or None when one is a prefix of the other."""
    ref = b"".join(pieces)
    n = min(len(ref), len(out))
    j = next((i for i in range(n) if ref[i] != out[i]), None)
    if j is None:
        return None
    end = 0
    for i, piece in enumerate(pieces):
        end += len(piece)
        if end > j:
            return i
    return len(pieces)


def top2_margin(target, context: Sequence[int], banned: Sequence[int] = ()) -> float:
    """The target's top-2 logit margin for the token after `context`, from a one-token evaluation."""
    target.advance_to(list(context[:-1]))
    row = np.array(target.eval([context[-1]], logits="last")[-1], dtype=np.float32)
    if len(banned):
        row[np.asarray(banned, dtype=np.int64)] = -np.inf
    top2 = np.partition(row, -2)[-2:]
    return float(top2[1] - top2[0])


# ---------------------------------------------------------------------------------------- bench
@dataclass
class Settings:
    max_tokens: int = DEFAULT_MAX_TOKENS
    repeats: int = 1
    warmup: bool = True
    sampling: SamplingParams = field(default_factory=SamplingParams)
    seed: int = 0
    ignore_eos: bool = False
    k_max: int = 16
    near_tie: float = NEAR_TIE
    lockstep: bool = False  # edgespec modes of a prompt step in turn, each in its own context


@dataclass
class Result:
    prompts: list[Prompt]
    modes: list[Mode]
    settings: Settings
    runs: list[Run] = field(default_factory=list)
    prompt_token_counts: dict[str, int] = field(default_factory=dict)
    warmup: dict | None = None
    calibration: dict | None = None
    interrupted: bool = False
    started: str = ""
    wall_s: float = 0.0
    loadavg: dict | None = None  # the machine's load average before and after the runs (a busy machine is a noisy one)


Progress = Callable[[int, int, str], None]  # (runs done, runs total, what runs next)


class Bench:
    """Runs a suite on one loaded target/draft pair (and optionally llama.cpp's binary)."""

    def __init__(self, target, draft, prompts: Sequence[Prompt], modes: Sequence[Mode], settings: Settings,
                 llama_cpp=None):
        from edgespec.session.runner import check_fits, prompt_tokens

        for m in modes:
            if m.needs_draft and draft is None:
                raise UsageError(f"mode {m.name} needs a draft model", "pass --draft or --pair, or leave that mode out of --modes")
            if m.external and llama_cpp is None:
                raise UsageError(f"mode {m.name} needs --llama-cpp-bin DIR")
        if settings.repeats < 1:
            raise UsageError(f"--repeats must be >= 1, got {settings.repeats}")
        if settings.max_tokens < 1:
            raise UsageError(f"--max-tokens must be >= 1, got {settings.max_tokens}")
        self.target, self.draft = target, draft
        self.prompts, self.modes, self.settings = list(prompts), list(modes), settings
        self.llama_cpp = llama_cpp
        self.tokens: list[list[int]] = []
        for p in self.prompts:
            toks = prompt_tokens(target, p.prompt, system=p.system)
            try:
                check_fits(target, len(toks), self.max_tokens(p))
            except EdgespecError as e:
                raise type(e)(f"prompt {p.id!r}: {e.message}", e.hint) from None
            self.tokens.append(toks)
        self.banned = list(target.eog_tokens) if settings.ignore_eos else []
        self.templates: dict[str, object] = {}
        self._contexts: dict[str, tuple] = {}  # lockstep: mode name -> (target, draft) contexts

    def max_tokens(self, p: Prompt) -> int:
        return min(self.settings.max_tokens, p.max_tokens) if p.max_tokens else self.settings.max_tokens

    # ------------------------------------------------------------------------------ set-up
    def prepare(self, on_calibrate: Callable[[], None] | None = None) -> dict | None:
        """One controller per mode, built once; each run gets a deep copy. Returns the calibrated costs used."""
        from edgespec.session.runner import GenOptions, make_controller

        costs = None
        for m in self.modes:
            if m.external:
                continue
            opts = GenOptions(mode=m.drafter, k=m.k if m.drafter != "none" else None, k_max=self.settings.k_max)
            # The draft is passed for every mode, as `edgespec run` does with a pair, so all modes share one
            # calibration entry; only model and auto runs hand it to the engine (see _generate).
            ctl = make_controller(self.target, self.draft, opts, on_calibrate=on_calibrate)
            self.templates[m.name] = ctl
            if ctl.k_fixed is None and costs is None:
                costs = {"verify_s": {str(n): v for n, v in sorted(ctl.costs.verify.items())}, "draft_token_s": ctl.costs.draft_token}
        return costs

    def warm_up(self) -> dict | None:
        """Untimed: the shortest prompt in every edgespec mode, a few tokens each (pages the weights in)."""
        if not self.settings.warmup:
            return None
        i = min(range(len(self.prompts)), key=lambda j: len(self.tokens[j]))
        n = min(WARMUP_TOKENS, self.settings.max_tokens)
        done = []
        for m in self.modes:
            if not m.external:
                self._generate(m, self.tokens[i], n, seed=self.settings.seed)
                done.append(m.name)
        return {"prompt": self.prompts[i].id, "modes": done, "max_tokens": n}

    # --------------------------------------------------------------------------------- runs
    def _start(self, mode: Mode, target, draft, prompt: list[int], max_tokens: int, seed: int) -> "_Live":
        """A generation of `mode` on these contexts, from cold caches (every run pays its own prefill)."""
        target.rollback(0)
        if draft is not None:
            draft.rollback(0)
        return _Live(generate(
            target, draft if mode.drafter in ("model", "auto") else None, prompt, sampling=self.settings.sampling,
            max_tokens=max_tokens, seed=seed, suppress=self.banned, controller=copy.deepcopy(self.templates[mode.name]),
        ))

    def _generate(self, mode: Mode, prompt: list[int], max_tokens: int, seed: int) -> tuple[Stats, list[int], str | None, float, int | None]:
        g = self._start(mode, self.target, self.draft, prompt, max_tokens, seed)
        t0 = time.perf_counter()
        _drive([g])
        return g.stats, g.tokens, g.finish, time.perf_counter() - t0, g.peak

    def _seed(self, repeat: int, pi: int) -> int:
        return self.settings.seed + 1000 * repeat + pi  # the same for every mode of this prompt and repeat

    def _models_for(self, mode: Mode):
        """Lockstep: the first edgespec mode uses the loaded contexts, each further one a twin of its own."""
        if mode.name not in self._contexts:
            if not self._contexts:
                self._contexts[mode.name] = (self.target, self.draft)
            else:
                need = max(len(t) for t in self.tokens) + self.settings.max_tokens + self.settings.k_max + 2
                n_ctx = min(self.target.n_ctx, 256 * -(-need // 256))
                t = self.target.twin(n_ctx)
                d = self.draft.twin(n_ctx) if self.draft is not None and mode.drafter in ("model", "auto") else None
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

    def _run_lockstep(self, items: list[tuple[int, int, int, Mode]]) -> list[Run]:
        """(seq, repeat, prompt index, mode) of one prompt and repeat, edgespec modes only: one step each in turn."""
        runs, lives = [], []
        for seq, repeat, pi, mode in items:
            p = self.prompts[pi]
            runs.append(Run(seq, repeat, p.id, p.category, mode.name, mode.k))
            lives.append(self._start(mode, *self._models_for(mode), self.tokens[pi], self.max_tokens(p), self._seed(repeat, pi)))
        _drive(lives)
        for run, g, (_, _, pi, _) in zip(runs, lives, items):
            # its own steps only: the other modes ran in between
            self._fill(run, pi, g.stats, g.tokens, g.finish, g.stats.t_prefill + g.stats.t_decode, g.peak)
        return runs

    def _run_all_lockstep(self, order, res: Result, progress: Progress | None) -> None:
        M = len(self.modes)
        for g in range(0, len(order), M):
            items = [(g + j, r, pi, self.modes[mi]) for j, (r, pi, mi) in enumerate(order[g : g + M])]
            r, pi = items[0][1], items[0][2]
            if progress:
                progress(g, len(order), f"{self.prompts[pi].id}" + (f" · repeat {r + 1}" if self.settings.repeats > 1 else ""))
            group = self._run_lockstep([it for it in items if not it[3].external])
            for seq, rr, ppi, mode in items:
                if mode.external:
                    group.append(self._run_one(seq, rr, ppi, mode))
            group.sort(key=lambda run: run.seq)
            res.runs.extend(group)
            self._compare(group)

    def _run_one(self, seq: int, repeat: int, pi: int, mode: Mode) -> Run:
        p = self.prompts[pi]
        run = Run(seq, repeat, p.id, p.category, mode.name, mode.k)
        seed = self._seed(repeat, pi)
        if mode.external:
            self.llama_cpp.run(run, self.target, self.draft, p, self.tokens[pi], self.max_tokens(p), seed)
            return run
        self._fill(run, pi, *self._generate(mode, self.tokens[pi], self.max_tokens(p), seed))
        return run

    def _fill(self, run: Run, pi: int, stats: Stats, tokens: list[int], finish: str | None, wall: float, peak: int | None) -> None:
        _fill_from_stats(run, stats)
        run.prompt_tokens = len(self.tokens[pi])
        run.tokens, run.finish, run.wall_s, run.peak_rss = tokens, finish, wall, peak
        run.text = self.target.detokenize(tokens)

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
            if plain.decode_tps > 0 and r.decode_tps > 0:
                r.speedup = r.decode_tps / plain.decode_tps
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
        """Every prompt in every mode, `repeats` times, in run_order's order. Ctrl-C keeps what is done."""
        res = Result(self.prompts, self.modes, self.settings, started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        res.prompt_token_counts = {p.id: len(t) for p, t in zip(self.prompts, self.tokens)}
        before = loadavg()
        t_start = time.perf_counter()
        order = run_order(len(self.prompts), len(self.modes), self.settings.repeats)
        M = len(self.modes)
        group: list[Run] = []
        try:
            if self.settings.lockstep:
                self._run_all_lockstep(order, res, progress)
            for seq, (r, pi, mi) in enumerate([] if self.settings.lockstep else order):
                mode = self.modes[mi]
                if progress:
                    progress(seq, len(order), f"{self.prompts[pi].id} · {mode.name}" + (f" · repeat {r + 1}" if self.settings.repeats > 1 else ""))
                run = self._run_one(seq, r, pi, mode)
                res.runs.append(run)
                group.append(run)
                if len(group) == M:
                    self._compare(group)
                    group = []
        except KeyboardInterrupt:
            res.interrupted = True
            if group:
                self._compare(group)
        if progress:
            progress(len(res.runs), len(order), "done")
        res.wall_s = time.perf_counter() - t_start
        res.loadavg = {"before": before, "after": loadavg()}
        return res


def loadavg() -> list[float] | None:
    """1, 5 and 15-minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # Windows
        return None
