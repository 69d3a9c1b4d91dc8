"""Memory detection, the per-model estimate and the planner (synthetic GGUF headers), checked against
llama.cpp's own numbers on tiny models and against measured peak RSS on real ones (slow)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import synthetic_gguf
from edgespec.llama import gguf_read as gguf_info
from edgespec.machine import devices, estimate, planner, system
from edgespec.errors import EdgespecError, UsageError
from edgespec.machine.devices import CpuFeatures
from edgespec.machine.estimate import GiB, MiB
from edgespec.machine.system import GpuInfo, SystemMemory

NO_REPACK = CpuFeatures()
AVX2 = CpuFeatures(avx2=True, avx512=True)


def ram(total_gb: float, avail_gb: float | None = None, gpus=()) -> SystemMemory:
    total = int(total_gb * GiB)
    return SystemMemory(total, int((avail_gb if avail_gb is not None else total_gb) * GiB), "test", tuple(gpus))


def gpu(free_gb: float, total_gb: float | None = None, unified: bool = False, name: str = "CUDA0") -> GpuInfo:
    return GpuInfo(0, name, "test GPU", int((total_gb or free_gb) * GiB), int(free_gb * GiB), unified)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """Headers of made-up models: a ~7B-shaped target (1.9 GB of Q4_K weights), a small and a large draft."""
    root = tmp_path_factory.mktemp("synth")
    w = synthetic_gguf.write_header
    return {
        "target": gguf_info.read(w(root / "target.gguf", n_layer=28, n_embd=3584, n_ff=9472, n_head=28, n_head_kv=4, n_vocab=32000, n_ctx_train=32768)),
        "draft": gguf_info.read(w(root / "draft.gguf", n_layer=12, n_embd=1024, n_ff=2816, n_head=16, n_head_kv=2, n_vocab=32000, n_ctx_train=32768)),
        "big_draft": gguf_info.read(w(root / "big.gguf", n_layer=24, n_embd=3072, n_ff=8192, n_head=24, n_head_kv=4, n_vocab=32000, n_ctx_train=32768)),
        "short": gguf_info.read(w(root / "short.gguf", n_layer=4, n_embd=256, n_ff=512, n_vocab=1024, n_ctx_train=2048)),
    }


# ---------------------------------------------------------------- detection and parsing
def test_parse_meminfo_and_vm_stat():
    text = "MemTotal:       24684084 kB\nMemFree:        21084592 kB\nMemAvailable:   23246452 kB\nBuffers: 1 kB\n"
    assert system.parse_meminfo(text) == (24684084 * 1024, 23246452 * 1024)
    old = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 10 kB\nCached: 200 kB\n"
    assert system.parse_meminfo(old) == (1000 * 1024, 310 * 1024)
    vm = ("Mach Virtual Memory Statistics: (page size of 16384 bytes)\nPages free:  1000.\nPages active: 5.\n"
          "Pages inactive:  2000.\nPages speculative: 300.\nPages purgeable: 50.\n")
    assert system.parse_vm_stat(vm) == 3350 * 16384


@pytest.mark.parametrize(
    "text, value",
    [("6GB", 6_000_000_000), ("6 GiB", 6 * GiB), ("6144MiB", 6 * GiB), ("512M", 512_000_000), ("1.5", 1_500_000_000),
     ("2g", 2_000_000_000), ("100kB", 100_000), ("50%", 5 * GiB)],
)
def test_parse_size(text, value):
    assert estimate.parse_size(text, total=10 * GiB) == value


@pytest.mark.parametrize("text", ["lots", "6XB", "-1GB", "0", "150%", "GiB"])
def test_parse_size_rejects(text):
    with pytest.raises(UsageError):
        estimate.parse_size(text, total=10 * GiB)


def test_this_machine():
    sysmem = system.system_memory()
    assert 0 < sysmem.available <= sysmem.total
    if sys.platform.startswith("linux"):
        total, _ = system.parse_meminfo(Path("/proc/meminfo").read_text())
        assert sysmem.total <= total
    lib = devices.ggml()  # the device API answers: at least the CPU device
    lib.ggml_backend_dev_count.restype = __import__("ctypes").c_size_t
    assert lib.ggml_backend_dev_count() >= 1
    for g in sysmem.gpus:
        assert g.total >= g.free >= 0 and g.name


# ---------------------------------------------------------------- the estimate
def test_weights_kv_and_overhead(synth):
    t = synth["target"]
    e = estimate.estimate_model(t, n_ctx=4096, use_mmap=False, cpu=NO_REPACK, n_outputs=16)
    assert e.weights == t.tensor_bytes and e.repack == 0 and e.vram == 0
    n_kv = 4 * 128  # 4 KV heads x head dim 128
    assert e.kv == 28 * 4096 * 2 * n_kv * 2  # layers x cells x (K+V) x bytes
    assert e.output == 16 * 32000 * 4
    assert e.compute == 512 * (3 * 9472 + 6 * 3584) * 4
    mapped = estimate.estimate_model(t, n_ctx=4096, use_mmap=True, cpu=NO_REPACK)
    assert mapped.weights == t.tensor_bytes + t.data_offset  # the mapping covers the header too
    q8 = estimate.estimate_model(t, n_ctx=4096, type_k="q8_0", type_v="q8_0", cpu=NO_REPACK)
    q4 = estimate.estimate_model(t, n_ctx=4096, type_k="q4_0", type_v="q4_0", cpu=NO_REPACK)
    assert q8.kv == e.kv * 34 // 64 and q4.kv == e.kv * 18 // 64
    assert estimate.estimate_model(t, n_ctx=1000, cpu=NO_REPACK).kv == estimate.estimate_model(t, n_ctx=1024, cpu=NO_REPACK).kv  # padded to 256


def test_repacked_weights(synth):
    t = synth["target"]
    q4k = sum(x.nbytes for x in t.tensors if x.type_name == "Q4_K" and x.name != "token_embd.weight")
    mapped = estimate.estimate_model(t, n_ctx=2048, use_mmap=True, cpu=AVX2)
    assert mapped.repack == q4k > 0  # with mmap the originals stay mapped next to the repacked copies
    assert estimate.estimate_model(t, n_ctx=2048, use_mmap=False, cpu=AVX2).repack == 0
    assert estimate.estimate_model(t, n_ctx=2048, use_mmap=True, cpu=NO_REPACK).repack == 0
    # ARM: Q4_K and Q6_K have repacked kernels with the dot-product extension, none without it
    k_quants = sum(x.nbytes for x in t.tensors if x.type_name in ("Q4_K", "Q6_K") and x.name != "token_embd.weight")
    assert estimate.estimate_model(t, n_ctx=2048, cpu=CpuFeatures(neon=True, dotprod=True)).repack == k_quants > q4k
    assert estimate.estimate_model(t, n_ctx=2048, cpu=CpuFeatures(neon=True)).repack == 0


def test_gpu_split_follows_llama_cpp(synth):
    t = synth["target"]
    layer = t.layer_bytes()
    half = estimate.estimate_model(t, n_ctx=2048, n_gpu_layers=14, cpu=NO_REPACK, use_mmap=False)
    assert half.weights_vram == sum(layer[14:])  # the last 14 layers
    assert half.kv_vram == half.kv and half.compute_vram > 0
    full = estimate.estimate_model(t, n_ctx=2048, n_gpu_layers=-1, cpu=NO_REPACK, use_mmap=False)
    assert full.weights_vram == sum(layer) + t.output_bytes() and full.weights == t.input_bytes()
    assert full.kv == 0 and full.compute_vram >= 512 * 32000 * 4  # room for a full batch of logits
    assert estimate.estimate_model(t, n_ctx=2048, n_gpu_layers=28, cpu=NO_REPACK).weights_vram == sum(layer)
    unified = estimate.estimate_model(t, n_ctx=2048, n_gpu_layers=-1, unified=True, cpu=NO_REPACK)
    assert unified.vram == 0 and unified.weights >= t.tensor_bytes  # shared memory: all of it is RAM


def _mib_from_llama_cpp(model_path: Path, n_ctx: int, type_k: int, type_v: int, pattern: str,
                        n_ubatch: int = 64, flash: bool = True) -> float:
    """The MiB llama.cpp's log reports (summed over the lines matching `pattern`) for a new context."""
    import llama_cpp as lc

    from edgespec.llama import model as llama

    llama._ensure_backend()
    mp = lc.llama_model_default_params()
    model = lc.llama_model_load_from_file(str(model_path).encode(), mp)
    cp = lc.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_threads, cp.n_threads_batch = n_ctx, n_ubatch, n_ubatch, 1, 1
    cp.type_k, cp.type_v = type_k, type_v
    cp.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
    llama._log_lines.clear()
    ctx = lc.llama_init_from_model(model, cp)
    try:
        assert ctx, "llama.cpp refused the context"
        sizes = [float(m.group(1)) for line in llama._log_lines if (m := re.search(pattern + r"\s*([\d.]+) MiB", line))]
        assert sizes, list(llama._log_lines)
        return sum(sizes)
    finally:
        if ctx:
            lc.llama_free(ctx)
        lc.llama_model_free(model)


@pytest.fixture(scope="module")
def head64(tmp_path_factory):
    """A tiny loadable model with one 64-wide head (quantised KV caches need head sizes in blocks of 32)."""
    import tiny_models

    saved = tiny_models.N_HEAD, tiny_models.N_HEAD_KV
    tiny_models.N_HEAD = tiny_models.N_HEAD_KV = 1
    try:
        tokens, types = tiny_models.byte_vocab()
        path = tmp_path_factory.mktemp("head64") / "head64.gguf"
        return tiny_models.write_model(path, tiny_models.make_weights(7, len(tokens)), tokens, types, name="head64")
    finally:
        tiny_models.N_HEAD, tiny_models.N_HEAD_KV = saved


@pytest.mark.parametrize("n_ctx, kv", [(1000, ("f16", "f16")), (2048, ("q8_0", "q8_0")), (700, ("q8_0", "q4_0"))])
def test_kv_estimate_matches_llama_cpp(head64, n_ctx, kv):
    info = gguf_info.read(head64)
    assert info.head_dim_k == 64
    ours = sum(estimate.kv_bytes_per_layer(info, n_ctx, *kv)) / MiB
    theirs = _mib_from_llama_cpp(head64, n_ctx, estimate.KV_GGML[kv[0]], estimate.KV_GGML[kv[1]], r"llama_kv_cache: size =")
    assert ours == pytest.approx(theirs, abs=0.01)


@pytest.mark.parametrize("n_ctx", [4096, 16384])
def test_compute_without_flash_attention_grows_with_the_context(tiny, n_ctx):
    """Without the flash kernel llama.cpp reserves the batch's attention scores in full; with it, not."""
    info = gguf_info.read(tiny["target"])
    f16 = estimate.KV_GGML["f16"]
    off = _mib_from_llama_cpp(tiny["target"], n_ctx, f16, f16, r"CPU compute buffer size =", n_ubatch=512, flash=False)
    on = _mib_from_llama_cpp(tiny["target"], n_ctx, f16, f16, r"CPU compute buffer size =", n_ubatch=512, flash=True)
    ours = estimate.compute_touched(info, 512, n_ctx, flash_attn=False) / MiB
    assert ours == pytest.approx(off, rel=0.05) and on < off / 4
    assert estimate.compute_touched(info, 512, n_ctx, flash_attn=None) == estimate.compute_touched(info, 512)
    assert estimate.compute_touched(info, 512, 2 * n_ctx, flash_attn=False) > 1.9 * estimate.compute_touched(info, 512, n_ctx, flash_attn=False)


# ---------------------------------------------------------------- the planner
def test_plan_takes_the_largest_context_that_fits(synth):
    p = planner.plan(synth["target"], synth["draft"], system=ram(32), cpu=NO_REPACK)
    assert (p.n_ctx, p.type_k, p.type_v, p.n_gpu_layers, p.draft_gpu_layers) == (8192, "f16", "f16", 0, 0)
    assert p.use_mmap and not p.use_mlock and not p.flash_attn and p.offload == "none"
    assert p.ram <= p.budget == int(32 * GiB) - estimate.default_ram_margin(int(32 * GiB))
    assert p.ram == p.target_estimate.ram + p.draft_estimate.ram + estimate.PROCESS_OVERHEAD
    json.dumps(p.as_dict())  # serialisable
    short = planner.plan(synth["short"], system=ram(32), cpu=NO_REPACK)
    assert short.n_ctx == 2048 and short.draft is None  # capped by the training context


def test_plan_gives_up_context_then_kv_precision(synth):
    t, d = synth["target"], synth["draft"]
    full = planner.plan(t, d, system=ram(64), cpu=NO_REPACK, flash_attn="on")  # the compute of every KV type
    kv8k = full.target_estimate.kv + full.draft_estimate.kv
    base = full.ram - kv8k
    # room for 8k at q8_0 but not f16: q8_0 at 8k is preferred over f16 at 4k
    p = planner.plan(t, d, budget=base + int(kv8k * 0.6), system=ram(64), cpu=NO_REPACK)
    assert (p.n_ctx, p.type_k) == (8192, "q8_0") and p.flash_attn
    assert any("q8_0" in n for n in p.notes)
    # room for a quarter: 4k at q8_0
    p = planner.plan(t, d, budget=base + int(kv8k * 0.3), system=ram(64), cpu=NO_REPACK)
    assert (p.n_ctx, p.type_k) == (4096, "q8_0") and any("context reduced" in n for n in p.notes)
    # q4_0 only when nothing else fits
    p = planner.plan(t, d, budget=base + int(kv8k * 0.08), system=ram(64), cpu=NO_REPACK)
    assert (p.n_ctx, p.type_k) == (2048, "q4_0")
    # a fixed context is kept; the KV type gives way
    p = planner.plan(t, d, n_ctx=8192, budget=base + int(kv8k * 0.3), system=ram(64), cpu=NO_REPACK)
    assert (p.n_ctx, p.type_k) == (8192, "q4_0")


def test_plan_flash_attention_settings(synth):
    """auto is llama.cpp's choice unless a quantised V cache needs the kernel; off counts the scores
    matrix it then holds, and never falls back on a quantised cache."""
    t, d = synth["target"], synth["draft"]
    auto = planner.plan(t, d, n_ctx=4096, system=ram(64), cpu=NO_REPACK)
    assert (auto.flash_attn, auto.draft_flash_attn) == (None, None) and auto.as_dict()["flash_attn"] == "auto"
    off = planner.plan(t, d, n_ctx=4096, system=ram(64), cpu=NO_REPACK, flash_attn="off")
    assert (off.flash_attn, off.draft_flash_attn) == (False, False)
    assert off.target_estimate.compute > auto.target_estimate.compute  # the scores matrix
    q8 = planner.plan(t, d, n_ctx=4096, kv_type="q8_0", system=ram(64), cpu=NO_REPACK)
    assert q8.flash_attn is True and q8.draft_flash_attn is True
    with pytest.raises(UsageError, match="needs flash attention"):
        planner.plan(t, d, n_ctx=4096, kv_type="q4_0", flash_attn="off", system=ram(64), cpu=NO_REPACK)
    with pytest.raises(UsageError, match="unknown flash-attention"):
        planner.plan(t, d, flash_attn="maybe", system=ram(64), cpu=NO_REPACK)
    full = planner.plan(t, d, system=ram(64), cpu=NO_REPACK, flash_attn="off", use_mmap=True)
    tight = planner.plan(t, d, flash_attn="off", budget=full.ram - 1, system=ram(64), cpu=NO_REPACK, use_mmap=True)
    assert tight.type_k == "f16" and tight.n_ctx < full.n_ctx


def test_plan_turns_mmap_off_when_repacking_would_double_weights(synth):
    t, d = synth["target"], synth["draft"]
    mapped = planner.plan(t, d, n_ctx=4096, kv_type="f16", system=ram(64), cpu=AVX2)
    assert mapped.use_mmap and mapped.target_estimate.repack > 0
    p = planner.plan(t, d, n_ctx=4096, kv_type="f16", budget=mapped.ram - 1, system=ram(64), cpu=AVX2)
    assert not p.use_mmap and p.ram < mapped.ram and any("mmap off" in n for n in p.notes)
    with pytest.raises(planner.InsufficientMemoryError):
        planner.plan(t, d, n_ctx=4096, kv_type="f16", use_mmap=True, budget=mapped.ram - 1, system=ram(64), cpu=AVX2)


def test_nothing_fits_says_what_would(synth):
    t, d = synth["target"], synth["draft"]
    alone = planner.plan(t, n_ctx=8192, kv_type="f16", system=ram(64), cpu=NO_REPACK)
    with pytest.raises(planner.InsufficientMemoryError) as e:  # the target fits, the pair does not
        planner.plan(t, d, n_ctx=8192, kv_type="f16", budget=alone.ram + 10 * MiB, system=ram(64), cpu=NO_REPACK)
    msg = e.value.line()
    assert "\n" not in msg and "budget is" in msg and "would fit:" in msg and "no draft model" in msg
    assert isinstance(e.value, EdgespecError)
    with pytest.raises(planner.InsufficientMemoryError) as e:  # a fixed context too large: a smaller one fits
        planner.plan(t, d, n_ctx=32768, kv_type="f16", budget=alone.ram + 300 * MiB, system=ram(64), cpu=NO_REPACK)
    assert "--ctx 2048" in e.value.line()
    with pytest.raises(planner.InsufficientMemoryError) as e:  # the weights alone are too big: a smaller quant
        planner.plan(t, system=ram(64), budget=int(t.tensor_bytes * 0.7), cpu=NO_REPACK)
    assert "smaller quantisation of the target (at most" in e.value.line()
    with pytest.raises(planner.InsufficientMemoryError) as e:
        planner.plan(t, d, budget=100 * MiB, system=ram(64), cpu=NO_REPACK)
    assert "nothing smaller fits" in e.value.line()


def test_dedicated_gpu_placement_by_estimated_throughput(synth):
    t, d = synth["target"], synth["draft"]
    roomy = planner.plan(t, d, system=ram(32, gpus=[gpu(48)]), cpu=NO_REPACK)
    assert (roomy.n_gpu_layers, roomy.draft_gpu_layers, roomy.offload) == (-1, -1, "all")
    assert roomy.vram <= roomy.vram_budget and roomy.target_estimate.weights_vram > 0
    d_full = estimate.estimate_model(d, n_ctx=8192, n_gpu_layers=-1, cpu=NO_REPACK).vram
    budget = d_full + 600 * MiB  # the draft and a fifth of the target
    # memory-bound CPU (verifying extra positions is cheap): speculation pays, the draft goes first
    p = planner.plan(t, d, vram_budget=budget, cpu_verify_cost=0.15, system=ram(32, gpus=[gpu(48)]), cpu=NO_REPACK)
    assert p.draft_gpu_layers == -1 and 0 < p.n_gpu_layers < 29 and p.offload == "draft-first"
    assert p.vram <= budget
    # compute-bound CPU (verifying costs 0.55 of a step per position): plain decoding of the target wins
    p = planner.plan(t, d, vram_budget=budget, cpu_verify_cost=0.55, system=ram(32, gpus=[gpu(48)]), cpu=NO_REPACK)
    assert p.offload == "target-first" and p.n_gpu_layers > 0 and p.vram <= budget
    # a draft nearly as large as the target cannot pay for itself either way
    p = planner.plan(t, synth["big_draft"], vram_budget=int(1.2 * GiB), cpu_verify_cost=0.15, system=ram(32, gpus=[gpu(48)]), cpu=NO_REPACK)
    assert p.offload == "target-first" and p.n_gpu_layers > 0


def test_unified_memory_offloads_everything(synth):
    p = planner.plan(synth["target"], synth["draft"], system=ram(32, gpus=[gpu(20, 24, unified=True, name="Metal")]), cpu=NO_REPACK)
    assert (p.n_gpu_layers, p.draft_gpu_layers, p.offload) == (-1, -1, "all") and p.vram == 0
    assert p.target_estimate.compute >= 512 * 32000 * 4  # GPU buffers live in system RAM


def test_a_model_as_its_own_draft_is_mapped_once(synth):
    t = synth["target"]
    alone = planner.plan(t, n_ctx=4096, kv_type="f16", system=ram(32), cpu=NO_REPACK)
    self_pair = planner.plan(t, t, n_ctx=4096, kv_type="f16", system=ram(32), cpu=NO_REPACK)
    assert self_pair.draft_estimate.weights == 0 and self_pair.ram - alone.ram == self_pair.draft_estimate.ram
    unmapped = planner.plan(t, t, n_ctx=4096, kv_type="f16", use_mmap=False, system=ram(32), cpu=NO_REPACK)
    assert unmapped.draft_estimate.weights == t.tensor_bytes


def test_user_layers_without_a_gpu(synth):
    p = planner.plan(synth["target"], n_gpu_layers=10, system=ram(32), cpu=NO_REPACK)
    assert p.n_gpu_layers == 10 and p.vram == 0 and any("no GPU" in n for n in p.notes)


def test_mlock_only_when_the_limit_allows(synth, monkeypatch):
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda what: (8 * MiB, 8 * MiB))
    p = planner.plan(synth["target"], use_mlock=True, system=ram(32), cpu=NO_REPACK)
    assert not p.use_mlock and any("RLIMIT_MEMLOCK" in n for n in p.notes)
    monkeypatch.setattr(resource, "getrlimit", lambda what: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert planner.plan(synth["target"], use_mlock=True, system=ram(32), cpu=NO_REPACK).use_mlock


def test_bad_arguments(synth):
    with pytest.raises(UsageError):
        planner.plan(synth["target"], kv_type="q5_1", system=ram(32))
    with pytest.raises(UsageError):
        planner.plan(synth["target"], n_ctx=4, system=ram(32))


# ---------------------------------------------------------------- the CLI
def _cli(args, env):
    return subprocess.run([sys.executable, "-m", "edgespec", *args], env=env, capture_output=True, text=True, timeout=120)


def test_cli_plan(tiny, cli_env):
    p = _cli(["plan", "--target", tiny["target"], "--draft", tiny["draft"], "--json"], cli_env)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["n_ctx"] == 2048 and out["type_k"] == "f16" and out["draft"].endswith("draft.gguf")
    assert out["estimate"]["ram"] <= out["budget"]["ram"]
    p = _cli(["plan", "-m", tiny["target"], "-d", tiny["draft"], "--ctx", "1024", "--kv-type", "q8_0"], cli_env)
    assert p.returncode == 0 and "1024 tokens" in p.stdout and "q8_0" in p.stdout and "RAM total" in p.stdout
    p = _cli(["plan", "-m", tiny["target"], "--budget", "1MB"], cli_env)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 1 and len(lines) == 1 and "budget is 1 MB" in lines[0] and "Traceback" not in p.stderr
    p = _cli(["plan", "-m", tiny["target"], "--budget", "lots"], cli_env)
    assert p.returncode == 2 and "not a size" in p.stderr
    p = _cli(["plan", "-m", tiny["target"], "-d", tiny["other_vocab"]], cli_env)
    assert p.returncode == 0  # the planner sizes memory; pairing is `models info --draft` and the loader's job
    p = _cli(["plan", "--pair", "qwen2.5-coder-7b"], cli_env)  # not downloaded in this cache
    assert p.returncode == 1 and "not downloaded yet" in p.stderr and "models pull" in p.stderr


# ---------------------------------------------------------------- against reality (slow)
MEASURE = textwrap.dedent(
    """
    import json, sys
    import edgespec.cli  # the CLI's imports: the process the estimate is for
    from edgespec.llama.model import Model

    paths, n_ctx, n_prompt = sys.argv[1].split(","), int(sys.argv[2]), int(sys.argv[3])
    flash = {"on": True, "off": False, "auto": None}
    models = [Model(p, n_ctx=n_ctx, n_threads=2, use_mmap=True, flash_attn=flash[fa]) for p, fa in zip(paths, sys.argv[4].split(","))]
    for m in models:
        text = "def fibonacci(n):\\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\\n" * (n_prompt // 20 + 1)
        toks = m.tokenize(text)[:n_prompt]
        m.eval(toks, "last")  # prompt: one full batch when n_prompt >= 512
        for i in range(4):  # verification-sized steps: 5 positions with logits, then roll back
            n = m.n_past
            m.eval([100 + i + j for j in range(5)], "all")
            m.rollback(n + 1)
    status = dict(l.split(":", 1) for l in open("/proc/self/status") if l.startswith("Vm"))
    print(json.dumps({"hwm": int(status["VmHWM"].split()[0]) * 1024}))
    """
)


def measured_peak(paths, n_ctx, n_prompt, flash: list[str]) -> int:
    p = subprocess.run([sys.executable, "-c", MEASURE, ",".join(map(str, paths)), str(n_ctx), str(n_prompt), ",".join(flash)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])["hwm"]


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM from /proc")
@pytest.mark.parametrize("which, n_ctx, n_prompt", [("smollm2", 2048, 2040), ("smollm2", 8192, 8184), ("qwen", 2048, 32), ("qwen", 8192, 32)])
def test_estimate_matches_peak_rss(request, which, n_ctx, n_prompt):
    """Peak RSS of a process that loads the model(s) as planned, reads a prompt and verifies a few drafts,
    against the planner's estimate for the same settings: within 15%. (SmolLM2 fills its context, the
    last batch a full 512 tokens: without flash attention that batch's scores are the largest buffer;
    the Qwen pair reads a short prompt, to keep the run short on two cores.)"""
    paths = [request.getfixturevalue("smollm2")] if which == "smollm2" else list(request.getfixturevalue("qwen_pair"))
    plan = planner.plan(paths[0], paths[1] if len(paths) > 1 else None, n_ctx=n_ctx, kv_type="f16", use_mmap=True, system=ram(64))
    flash = [plan.as_dict()["flash_attn"], plan.as_dict()["draft_flash_attn"] or "auto"][: len(paths)]
    peak = measured_peak(paths, n_ctx, n_prompt, flash)
    # the estimate is for a full context; count the compute of the context this run reaches
    reached = min(n_ctx, n_prompt + 5)
    fa = [plan.flash_attn, plan.draft_flash_attn]
    est = plan.ram - sum(e.compute - estimate.compute_touched(gguf_info.read(p), plan.n_ubatch, reached, f)
                         for p, e, f in zip(paths, [plan.target_estimate, plan.draft_estimate], fa))
    err = (est - peak) / peak
    print(f"\n{which} n_ctx={n_ctx} prompt={n_prompt}: estimate {est / MiB:.0f} MiB, peak RSS {peak / MiB:.0f} MiB ({err:+.1%})")
    assert abs(err) < 0.15


@pytest.mark.slow
def test_compute_buffer_reserve_matches_llama_cpp(smollm2):
    """What llama.cpp reserves for the graph (what a GPU would have to hold), against the estimate."""
    from edgespec.llama import model as llama

    with llama.Model(smollm2, n_ctx=2048, n_threads=2) as m:
        sizes = [float(x.group(1)) for line in llama._log_lines if (x := re.search(r"CPU compute buffer size =\s*([\d.]+) MiB", line))]
    assert sizes and m is not None
    ours = estimate.compute_reserved(gguf_info.read(smollm2), 512) / MiB
    assert ours == pytest.approx(sizes[-1], rel=0.10)
