"""The memory planner: context size, KV cache type, GPU layers per model and mmap/mlock that fit a budget,
or, before anything is loaded, one line that says what would fit instead.

Layers go to a GPU where the throughput model (edgespec.core.policy.speedup over a prior cost curve:
memory bandwidth for the weights, and what an extra verified position costs) says they buy the most.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgespec.core.policy import Costs, speedup
from edgespec.errors import EdgespecError, UsageError
from edgespec.llama import gguf_read
from edgespec.machine.devices import CpuFeatures, cpu_features
from edgespec.machine.estimate import (
    KV_GGML, KV_TYPES, PROCESS_OVERHEAD, ModelEstimate, default_ram_margin, default_vram_margin, estimate_model, fmt_bytes,
)
from edgespec.machine.system import SystemMemory, system_memory
from edgespec.session.options import FLASH_ATTN_SETTINGS

DEFAULT_MAX_CTX = 8192
MIN_CTX = 2048

# Throughput model for GPU layer placement: only the ratio matters (dedicated GPU memory is about
# ten times faster than system RAM), plus how much an extra verified position costs relative to a
# decode step: 0.55 on a compute-bound CPU (measured on 2 x86-64 cores), about 0.15 on a CPU with
# enough cores to be memory-bound, nearly nothing on a GPU.
CPU_BW = 40e9
GPU_BW = 400e9
CPU_VERIFY_COST_FEW_CORES = 0.55
CPU_VERIFY_COST_MANY_CORES = 0.15
GPU_VERIFY_COST = 0.05
DEFAULT_ACCEPTANCE = 0.7


def flash_attention(setting: str | None, type_v: str) -> bool | None:
    """Whether llama.cpp runs a model's attention with its flash-attention kernel: True, False, or None
    (llama.cpp's choice, which is on wherever the backend has the kernel).

    setting: auto (None), on or off. A quantised V cache needs the kernel. Off is faster for batched
    verification on a CPU after a long context: ggml's CPU kernel takes a batch's query rows one at a
    time, where the other path multiplies them as matrices (32 positions after 2,000 tokens: 1.20 s
    with it against 0.85 s without on 2 Intel Xeon cores; the same after 256 tokens, and for one-token
    steps). It is not the default: the kernel computes each row the same whatever the batch, the
    matrix path does not, and with it off a model drafting for itself no longer agrees with itself
    on every token (SmolLM2 135M: 86-90% of drafts accepted instead of all). Off also holds the
    batch's attention scores as a whole matrix (edgespec.machine.estimate).
    """
    if setting == "on" or type_v != "f16":
        return True
    if setting == "off":
        return False
    return None


class InsufficientMemoryError(EdgespecError):
    """No settings fit the memory budget; the message says what would."""



@dataclass
class Plan:
    """Settings that fit the budget, and what they are estimated to cost.

    Pass n_ctx, type_k/type_v (names; `ggml_type_k`/`ggml_type_v` give llama.cpp's ids), flash_attn
    (required by llama.cpp for a quantised V cache), n_gpu_layers, draft_gpu_layers, use_mmap and
    use_mlock to llama.cpp. n_ubatch is the batch size the estimate assumed.
    """

    target: str
    draft: str | None
    n_ctx: int
    type_k: str
    type_v: str
    n_gpu_layers: int
    draft_gpu_layers: int
    use_mmap: bool
    use_mlock: bool
    n_ubatch: int
    target_estimate: ModelEstimate
    draft_estimate: ModelEstimate | None
    process_overhead: int
    budget: int
    vram_budget: int
    system: SystemMemory
    offload: str = "none"  # none | all | draft-first | target-first | user
    flash_attn_setting: str | None = None  # auto (None) | on | off: see flash_attention
    notes: list[str] = field(default_factory=list)

    @property
    def flash_attn(self) -> bool | None:
        """The target's attention kernel (flash_attention)."""
        return flash_attention(self.flash_attn_setting, self.type_v)

    @property
    def draft_flash_attn(self) -> bool | None:
        return flash_attention(self.flash_attn_setting, self.type_v)  # the same kernel: a self-draft must agree

    @property
    def ggml_type_k(self) -> int:
        return KV_GGML[self.type_k]

    @property
    def ggml_type_v(self) -> int:
        return KV_GGML[self.type_v]

    @property
    def ram(self) -> int:
        d = self.draft_estimate.ram if self.draft_estimate else 0
        return self.target_estimate.ram + d + self.process_overhead

    @property
    def vram(self) -> int:
        d = self.draft_estimate.vram if self.draft_estimate else 0
        return self.target_estimate.vram + d

    def as_dict(self) -> dict:
        return {
            "target": self.target, "draft": self.draft, "n_ctx": self.n_ctx, "type_k": self.type_k,
            "type_v": self.type_v, "flash_attn": _fa_name(self.flash_attn),
            "draft_flash_attn": _fa_name(self.draft_flash_attn) if self.draft else None, "n_gpu_layers": self.n_gpu_layers,
            "draft_gpu_layers": self.draft_gpu_layers, "use_mmap": self.use_mmap, "use_mlock": self.use_mlock,
            "n_ubatch": self.n_ubatch, "offload": self.offload,
            "estimate": {
                "ram": self.ram, "vram": self.vram, "process_overhead": self.process_overhead,
                "target": self.target_estimate.as_dict(),
                "draft": self.draft_estimate.as_dict() if self.draft_estimate else None,
            },
            "budget": {"ram": self.budget, "vram": self.vram_budget},
            "system": {
                "ram_total": self.system.total, "ram_available": self.system.available, "source": self.system.source,
                "gpus": [asdict(g) for g in self.system.gpus],
            },
            "notes": list(self.notes),
        }


def _info(model) -> gguf_read.GGUFInfo:
    return model if isinstance(model, gguf_read.GGUFInfo) else gguf_read.read(model)


def _ngl_value(info: gguf_read.GGUFInfo, layers: int) -> int:
    return -1 if layers >= info.n_layer + 1 else layers


def _max_layers(info, budget: int, kw: dict) -> int:
    """Most layers (0..n_layer+1) of `info` whose GPU share fits in `budget` bytes."""
    best = 0
    for ngl in range(1, info.n_layer + 2):
        if estimate_model(info, n_gpu_layers=ngl, **kw).vram <= budget:
            best = ngl
        else:
            break
    return best


def default_cpu_verify_cost() -> float:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return CPU_VERIFY_COST_FEW_CORES if cores <= 4 else CPU_VERIFY_COST_MANY_CORES


def prior_costs(t_est: ModelEstimate, d_est: ModelEstimate | None, k: int, cpu_verify_cost: float) -> Costs:
    """Seconds per step before anything is measured: the weights' bytes over memory bandwidth for one
    position, and each extra verified position costing cpu_verify_cost of that on the CPU layers,
    GPU_VERIFY_COST on the GPU ones; a draft token is the draft's weights over bandwidth."""
    t_cpu = (t_est.weights + t_est.repack) / CPU_BW if t_est.weights else 0.0
    t_gpu = t_est.weights_vram / GPU_BW
    verify = {n: max(t_cpu * (1 + cpu_verify_cost * (n - 1)) + t_gpu * (1 + GPU_VERIFY_COST * (n - 1)), 1e-9)
              for n in range(1, k + 2)}
    d_step = d_est.weights / CPU_BW + d_est.weights_vram / GPU_BW if d_est is not None else None
    return Costs(verify, draft_token=d_step)


def _speed(t_est: ModelEstimate, d_est: ModelEstimate | None, k: int, alpha: float, cpu_verify_cost: float) -> float:
    """Relative tokens/s: the better of plain decoding and speculation at draft length k (the engine picks)."""
    costs = prior_costs(t_est, d_est, k, cpu_verify_cost)
    plain = 1.0 / costs.verify_cost(1)
    if d_est is None or k <= 0:
        return plain
    return plain * max(1.0, speedup(costs, k, alpha, costs.draft_token))


def _fa_name(v: bool | None) -> str:
    return {True: "on", False: "off", None: "auto"}[v]


def plan(
    target,
    draft=None,
    *,
    n_ctx: int | None = None,
    budget: int | None = None,
    vram_budget: int | None = None,
    kv_type: str | None = None,
    n_gpu_layers: int | None = None,
    draft_gpu_layers: int | None = None,
    use_mmap: bool | None = None,
    use_mlock: bool | None = None,
    flash_attn: str | None = None,
    k: int = 4,
    acceptance: float = DEFAULT_ACCEPTANCE,
    cpu_verify_cost: float | None = None,
    n_ubatch: int = 512,
    n_outputs: int = 65,
    max_ctx: int = DEFAULT_MAX_CTX,
    min_ctx: int = MIN_CTX,
    system: SystemMemory | None = None,
    cpu: CpuFeatures | None = None,
) -> Plan:
    """Choose context size, KV cache type, GPU layers of each model and mmap/mlock within a budget.

    target, draft: .gguf paths (or parsed GGUFInfo). n_ctx: a fixed context, or None to take the
    largest of max_ctx, max_ctx/2, ... down to min_ctx that fits (capped by the models' training
    context). budget: bytes of system RAM for the whole process (default: available RAM minus a
    margin); vram_budget likewise for dedicated GPU memory (summed over GPUs). kv_type, n_gpu_layers,
    draft_gpu_layers, use_mmap, use_mlock: fixed by the caller, or None for the planner to choose.
    flash_attn: auto (None), on or off (see flash_attention); off keeps the KV cache f16.
    k, acceptance, cpu_verify_cost: what the throughput model that places layers on a GPU assumes (the
    draft length, the acceptance rate, the cost of an extra verified position on the CPU; see _speed).

    Raises InsufficientMemoryError, before anything is loaded, when nothing fits; its one-line
    message says what would (a smaller context, a quantised KV cache, no draft, a smaller quantisation).
    """
    tinfo = _info(target)
    dinfo = _info(draft) if draft is not None else None
    system = system or system_memory()
    cpu = cpu if cpu is not None else cpu_features()
    cpu_verify_cost = default_cpu_verify_cost() if cpu_verify_cost is None else cpu_verify_cost
    if kv_type is not None and kv_type not in KV_TYPES:
        raise UsageError(f"unknown KV cache type {kv_type!r}", f"use one of {', '.join(KV_TYPES)}")
    if flash_attn not in (None, *FLASH_ATTN_SETTINGS):
        raise UsageError(f"unknown flash-attention setting {flash_attn!r}", f"use one of {', '.join(FLASH_ATTN_SETTINGS)}")
    if flash_attn == "off" and kv_type not in (None, "f16"):
        raise UsageError(f"a {kv_type} KV cache needs flash attention", "drop --flash-attn off or use --kv-type f16")
    if n_ctx is not None and n_ctx < 16:
        raise UsageError(f"the context must be at least 16 tokens, got {n_ctx}")
    if budget is None:
        budget = system.available - default_ram_margin(system.total)
    dedicated = system.dedicated_gpus
    unified = system.unified_gpu
    if vram_budget is None:
        if dedicated:
            vram_budget = sum(max(0, g.free - default_vram_margin(g.total)) for g in dedicated)
        elif unified:
            vram_budget = max(0, unified.free - default_vram_margin(unified.total))
        else:
            vram_budget = 0
    vram_budget = max(0, int(vram_budget))
    notes: list[str] = []
    same_file = dinfo is not None and Path(tinfo.path).resolve() == Path(dinfo.path).resolve()

    # contexts to try, largest first
    train = [c for c in (tinfo.context_length, dinfo.context_length if dinfo else None) if c]
    cap = min(train) if train else max_ctx
    if n_ctx is not None:
        contexts = [int(n_ctx)]
        if train and n_ctx > min(train):
            notes.append(f"--ctx {n_ctx} is beyond the {min(train)}-token training context; quality may drop")
    else:
        top = min(max_ctx, cap)
        contexts = []
        c = top
        while c >= min(min_ctx, top):
            contexts.append(c)
            c //= 2
        contexts = contexts or [top]
    kv_order = [kv_type] if kv_type else (["f16"] if flash_attn == "off" else list(KV_TYPES))
    trials = [(c, kv) for c in contexts for kv in kv_order if kv != "q4_0"] + [(c, "q4_0") for c in contexts if "q4_0" in kv_order]
    mmaps = [use_mmap] if use_mmap is not None else [True, False]

    def build(ctx, kv, mmap, t_ngl, d_ngl, offload):
        kw = dict(n_ctx=ctx, type_k=kv, type_v=kv, use_mmap=mmap, unified=unified is not None, n_ubatch=n_ubatch, n_outputs=n_outputs, cpu=cpu)
        gpu = bool(system.gpus)  # without a GPU llama.cpp ignores n_gpu_layers
        fa = flash_attention(flash_attn, kv)
        te = estimate_model(tinfo, n_gpu_layers=t_ngl if gpu else 0, flash_attn=fa, **kw)
        de = estimate_model(dinfo, n_gpu_layers=d_ngl if gpu else 0, flash_attn=fa, **kw) if dinfo else None
        if de is not None and mmap and same_file:
            de.weights = 0  # one file mapped twice: the page cache holds it once
        return Plan(
            target=str(tinfo.path), draft=str(dinfo.path) if dinfo else None, n_ctx=ctx, type_k=kv, type_v=kv,
            n_gpu_layers=t_ngl, draft_gpu_layers=d_ngl, use_mmap=mmap, use_mlock=False, n_ubatch=n_ubatch,
            target_estimate=te, draft_estimate=de, process_overhead=PROCESS_OVERHEAD, budget=budget,
            vram_budget=vram_budget, system=system, offload=offload, flash_attn_setting=flash_attn,
        )

    def placements(ctx, kv, mmap):
        """Candidate (target ngl, draft ngl, label) for this context/KV type, best guess first."""
        if n_gpu_layers is not None or draft_gpu_layers is not None:
            return [(n_gpu_layers or 0, draft_gpu_layers or 0, "user")]
        if unified is not None:
            return [(-1, -1 if dinfo else 0, "all")]
        if not dedicated or vram_budget <= 0:
            return [(0, 0, "none")]
        kw = dict(n_ctx=ctx, type_k=kv, type_v=kv, use_mmap=mmap, unified=False, n_ubatch=n_ubatch, n_outputs=n_outputs, cpu=cpu)
        cands = []
        # draft first: the draft runs k times per step, so its bytes are worth more per byte moved
        if dinfo:
            d = _max_layers(dinfo, vram_budget, kw)
            left = vram_budget - (estimate_model(dinfo, n_gpu_layers=d, **kw).vram if d else 0)
            t = _max_layers(tinfo, left, kw)
            cands.append((_ngl_value(tinfo, t), _ngl_value(dinfo, d), "draft-first"))
        t = _max_layers(tinfo, vram_budget, kw)
        left = vram_budget - (estimate_model(tinfo, n_gpu_layers=t, **kw).vram if t else 0)
        d = _max_layers(dinfo, left, kw) if dinfo else 0
        cands.append((_ngl_value(tinfo, t), _ngl_value(dinfo, d) if dinfo else 0, "target-first"))
        scored = []
        for tn, dn, label in cands:
            p = build(ctx, kv, mmap, tn, dn, label)
            if tn == -1 and (dn == -1 or not dinfo):
                label = "all"
            elif tn == 0 and dn == 0:
                label = "none"
            scored.append((-_speed(p.target_estimate, p.draft_estimate, k, acceptance, cpu_verify_cost), len(scored), (tn, dn, label)))
        return [c for _, _, c in sorted(scored)]

    def fits(p: Plan) -> bool:
        return p.ram <= budget and p.vram <= vram_budget

    chosen = None
    for ctx, kv in trials:
        for mmap in mmaps:
            for tn, dn, label in placements(ctx, kv, mmap):
                p = build(ctx, kv, mmap, tn, dn, label)
                if fits(p):
                    chosen = p
                    break
            if chosen:
                break
        if chosen:
            break
    if chosen is None:
        raise InsufficientMemoryError(_explain(tinfo, dinfo, contexts, kv_order, budget, build, mmaps, placements, fits))

    # notes: what was given up, and mlock
    if n_ctx is None and chosen.n_ctx < contexts[0]:
        notes.append(f"context reduced to {chosen.n_ctx} tokens to fit (wanted {contexts[0]})")
    if kv_type is None and chosen.type_k != "f16":
        notes.append(f"KV cache quantised to {chosen.type_k} to fit (needs flash attention)")
    if use_mmap is None and not chosen.use_mmap:
        notes.append("mmap off: repacked weights would otherwise be held twice")
    if chosen.target_estimate.repack and chosen.use_mmap:
        notes.append(f"{fmt_bytes(chosen.target_estimate.repack + (chosen.draft_estimate.repack if chosen.draft_estimate else 0))} of weights are repacked for this CPU and also stay mapped (reclaimable page cache)")
    if n_gpu_layers is not None and not system.gpus and n_gpu_layers != 0:
        notes.append("no GPU found: llama.cpp keeps every layer on the CPU")
    chosen.use_mlock = _choose_mlock(chosen, use_mlock, notes)
    chosen.notes = notes
    return chosen


def _choose_mlock(p: Plan, want: bool | None, notes: list[str]) -> bool:
    """mlock keeps the weights from being paged out; only on request, and only if the limit allows."""
    if not want:
        return False
    weights = p.target_estimate.weights + (p.draft_estimate.weights if p.draft_estimate else 0)
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    except (ImportError, OSError, ValueError, AttributeError):
        return True
    if soft != getattr(__import__("resource"), "RLIM_INFINITY", -1) and soft < weights:
        notes.append(f"mlock requested but RLIMIT_MEMLOCK is {fmt_bytes(soft)} (< {fmt_bytes(weights)} of weights): not locking")
        return False
    return True


def _explain(tinfo, dinfo, contexts, kv_order, budget, build, mmaps, placements, fits) -> str:
    """One line: what was asked, what it needs, and what would fit instead."""

    def cheapest(ctx, kv, with_draft=True):
        out = None
        for mmap in mmaps:
            for tn, dn, label in placements(ctx, kv, mmap):
                p = build(ctx, kv, mmap, tn, dn, label)
                if not with_draft:
                    p.draft_estimate = None
                if out is None or (p.ram, p.vram) < (out.ram, out.vram):
                    out = p
        return out

    asked = cheapest(contexts[0], kv_order[0])
    who = "target + draft need" if dinfo else "the target needs"
    msg = (f"{who} about {fmt_bytes(asked.ram)} at a {contexts[0]}-token context ({kv_order[0]} KV cache) "
           f"but the memory budget is {fmt_bytes(budget)}")
    if asked.vram > asked.vram_budget:
        msg += f" and {fmt_bytes(asked.vram)} of GPU memory (budget {fmt_bytes(asked.vram_budget)})"
    options = []
    kvs = list(KV_TYPES) if len(kv_order) > 1 else kv_order
    # 1. a smaller context (and KV type) with the same models
    for ctx in (c for c in (2048, 1024, 512) if c < min(contexts)):
        kv = next((kv for kv in kvs if fits(cheapest(ctx, kv))), None)
        if kv:
            options.append(f"--ctx {ctx}" + (f" with a {kv} KV cache" if kv != "f16" else ""))
            break
    # 2. the target alone
    if dinfo is not None:
        for ctx in [contexts[0]] + [c for c in (2048, 1024) if c < contexts[0]]:
            if fits(cheapest(ctx, kvs[-1], with_draft=False)):
                options.append("no draft model" + (f" (--ctx {ctx})" if ctx != contexts[0] else ""))
                break
    # 3. a smaller quantisation of the target
    low = cheapest(min(min(contexts), 2048), kvs[-1])
    te = low.target_estimate
    weights = te.weights + te.repack
    room = budget - (low.ram - weights)
    if tinfo.n_params and room > 0:
        bpw = 8 * room / tinfo.n_params
        if bpw >= 2.0:
            now = 8 * (tinfo.tensor_bytes) / tinfo.n_params
            options.append(f"a smaller quantisation of the target (at most {bpw:.1f} bits/weight, about {fmt_bytes(room)} of weights; this file has {now:.1f})")
    if not options:
        return msg + "; nothing smaller fits either: free some memory or pick a smaller model"
    return msg + "; would fit: " + ", or ".join(options)
