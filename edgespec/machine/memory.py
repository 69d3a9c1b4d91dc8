"""Memory: what this machine has (RAM, GPUs) and what a target/draft pair will need, and a planner
that picks settings which fit.

Detection
  RAM: /proc/meminfo (and the cgroup limit, in containers) on Linux, sysctl + vm_stat on macOS,
  GlobalMemoryStatusEx on Windows. GPUs: ggml's backend device API (ggml_backend_dev_count/get/
  name/type/memory) through ctypes on the libggml that llama-cpp-python ships, so whatever backend
  it was built with (CUDA, Metal, Vulkan, ...) reports its devices; Metal and integrated GPUs share
  system memory ("unified").

Estimate (per model, bytes; `ModelEstimate`)
  weights   tensor bytes from the GGUF tensor table (type + shape), split by layer. With mmap the
            whole file is mapped and populated, so the header counts too.
  repack    llama.cpp's CPU backend keeps a second, re-laid-out copy of some quantised matrices
            (Q4_0/Q4_K with AVX2, Q2_K with AVX-512, Q4_0/IQ4_NL with ARM dot-product). With mmap the
            original pages stay mapped as well, so both count; without mmap they do not.
  kv        n_ctx (padded to 256) x layers x (K + V row sizes) for the KV type (f16, q8_0, q4_0).
  compute   on the CPU, the pages llama.cpp's compute buffer actually touches: a full prompt batch
            of n_ubatch tokens needs about n_ubatch x (3 n_ff + 6 n_embd) floats (FFN gate/up/product,
            residual stream, attention in/out). Calibrated on Qwen2.5 0.5B/1.5B, SmolLM2-135M and
            Gemma 3 270M: within 6% of the measured growth (Gemma: 15% under, its extra norms). On a GPU the buffer is allocated
            in full: max(that, n_ubatch x n_vocab floats for the logits + 2 n_ubatch x n_embd).
  output    the logits buffer: n_vocab floats per output row (n_outputs rows: one per verified
            draft position).
  overhead  per model: vocabulary tables, token caches and the like: 4.8 MiB + 164 bytes per token +
            134 bytes per BPE merge (fitted to SmolLM2, Qwen2.5 and Gemma 3 within 1 MiB).
  process   the interpreter, numpy, llama.cpp's libraries and the CLI: PROCESS_OVERHEAD.

Test tests/test_memory.py::test_estimate_matches_peak_rss loads the real models and compares.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgespec.llama import gguf_read as gguf_info
from edgespec.errors import EdgespecError, UsageError

MiB = 1 << 20
GiB = 1 << 30

PROCESS_OVERHEAD = 56 * MiB  # interpreter, numpy, llama.cpp libraries, the CLI (measured 46 MiB for `edgespec` on Linux)
MODEL_OVERHEAD_FIXED = int(4.8 * MiB)
MODEL_OVERHEAD_PER_TOKEN = 164
MODEL_OVERHEAD_PER_MERGE = 134
KV_PAD = 256  # llama.cpp rounds the context up to a multiple of 256
DEFAULT_MAX_CTX = 8192
MIN_CTX = 2048
KV_TYPES = ("f16", "q8_0", "q4_0")
KV_GGML = {"f16": 1, "q8_0": 8, "q4_0": 2}  # ggml_type ids for llama_context_params.type_k / type_v

# Throughput model for GPU layer placement: only the ratio matters (dedicated GPU memory is about
# ten times faster than system RAM), plus how much an extra verified position costs relative to a
# decode step: 0.55 on a compute-bound CPU (2 cores, measured, see facts.md), about 0.15 on a CPU with
# enough cores to be memory-bound, nearly nothing on a GPU.
CPU_BW = 40e9
GPU_BW = 400e9
CPU_VERIFY_COST_FEW_CORES = 0.55
CPU_VERIFY_COST_MANY_CORES = 0.15
GPU_VERIFY_COST = 0.05
DEFAULT_ACCEPTANCE = 0.7


class InsufficientMemoryError(EdgespecError):
    """No settings fit the memory budget; the message says what would."""


# ====================================================================== detection
@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    description: str
    total: int
    free: int
    unified: bool  # shares system RAM (Apple silicon, integrated GPUs)


@dataclass(frozen=True)
class SystemMemory:
    total: int
    available: int
    source: str
    gpus: tuple[GpuInfo, ...] = ()

    @property
    def dedicated_gpus(self) -> tuple[GpuInfo, ...]:
        return tuple(g for g in self.gpus if not g.unified)

    @property
    def unified_gpu(self) -> GpuInfo | None:
        return next((g for g in self.gpus if g.unified), None)


def parse_meminfo(text: str) -> tuple[int, int]:
    """(total, available) bytes from /proc/meminfo text."""
    vals = {}
    for line in text.splitlines():
        m = re.match(r"(\w+):\s+(\d+)(?:\s+kB)?", line)
        if m:
            vals[m.group(1)] = int(m.group(2)) * 1024
    total = vals["MemTotal"]
    avail = vals.get("MemAvailable")
    if avail is None:  # kernels before 3.14
        avail = vals.get("MemFree", 0) + vals.get("Buffers", 0) + vals.get("Cached", 0)
    return total, avail


def parse_vm_stat(text: str) -> int:
    """Available bytes from macOS `vm_stat`: free + inactive + speculative + purgeable pages."""
    m = re.search(r"page size of (\d+) bytes", text)
    page = int(m.group(1)) if m else 4096
    pages = 0
    for key in ("Pages free", "Pages inactive", "Pages speculative", "Pages purgeable"):
        m = re.search(rf"^{key}:\s+(\d+)", text, re.M)
        if m:
            pages += int(m.group(1))
    return pages * page


def _cgroup_limit() -> tuple[int, int] | None:
    """(limit, usage without reclaimable file cache) of this process's cgroup, if it has a limit."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        base = None
        if parts[0] == "0" and parts[1] == "":  # cgroup v2
            base = Path("/sys/fs/cgroup") / parts[2].lstrip("/")
            limit_f, usage_f = base / "memory.max", base / "memory.current"
        elif "memory" in parts[1].split(","):  # cgroup v1
            base = Path("/sys/fs/cgroup/memory") / parts[2].lstrip("/")
            limit_f, usage_f = base / "memory.limit_in_bytes", base / "memory.usage_in_bytes"
        if base is None:
            continue
        try:
            raw = limit_f.read_text().strip()
            if raw == "max" or int(raw) >= 1 << 60:
                return None
            limit, usage = int(raw), int(usage_f.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            stat = dict(l.split() for l in (base / "memory.stat").read_text().splitlines() if len(l.split()) == 2)
            usage -= int(stat.get("inactive_file", stat.get("total_inactive_file", 0)))
        except (OSError, ValueError):
            pass
        return limit, max(0, usage)
    return None


def _ram_linux() -> tuple[int, int, str]:
    total, avail = parse_meminfo(Path("/proc/meminfo").read_text())
    cg = _cgroup_limit()
    if cg:
        limit, usage = cg
        if limit < total:
            return limit, min(avail, max(0, limit - usage)), "cgroup memory limit"
    return total, avail, "/proc/meminfo"


def _ram_macos() -> tuple[int, int, str]:
    libc = ctypes.CDLL("libc.dylib")
    val = ctypes.c_uint64(0)
    size = ctypes.c_size_t(8)
    if libc.sysctlbyname(b"hw.memsize", ctypes.byref(val), ctypes.byref(size), None, 0) != 0:
        raise OSError("sysctl hw.memsize failed")
    total = val.value
    try:
        avail = parse_vm_stat(subprocess.run(["vm_stat"], capture_output=True, text=True, timeout=5).stdout)
    except (OSError, subprocess.SubprocessError):
        avail = 0
    return total, avail or total // 2, "sysctl hw.memsize + vm_stat"


def _ram_windows() -> tuple[int, int, str]:
    class MEMORYSTATUSEX(ctypes.Structure):
        _fields_ = [
            ("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong),
            ("ullTotalPhys", ctypes.c_ulonglong), ("ullAvailPhys", ctypes.c_ulonglong),
            ("ullTotalPageFile", ctypes.c_ulonglong), ("ullAvailPageFile", ctypes.c_ulonglong),
            ("ullTotalVirtual", ctypes.c_ulonglong), ("ullAvailVirtual", ctypes.c_ulonglong),
            ("ullAvailExtendedVirtual", ctypes.c_ulonglong),
        ]

    st = MEMORYSTATUSEX()
    st.dwLength = ctypes.sizeof(MEMORYSTATUSEX)
    if not ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(st)):  # type: ignore[attr-defined]
        raise OSError("GlobalMemoryStatusEx failed")
    return st.ullTotalPhys, st.ullAvailPhys, "GlobalMemoryStatusEx"


def ram() -> tuple[int, int, str]:
    """(total, available, source) bytes of system memory."""
    try:
        if sys.platform.startswith("linux"):
            return _ram_linux()
        if sys.platform == "darwin":
            return _ram_macos()
        if sys.platform == "win32":
            return _ram_windows()
    except (OSError, KeyError, ValueError, AttributeError) as e:
        raise EdgespecError(f"could not read this machine's memory size: {e}", "pass --budget explicitly") from e
    raise EdgespecError(f"memory detection is not supported on {sys.platform}", "pass --budget explicitly")


def _ggml_lib():
    import llama_cpp  # noqa: F401  (loads libllama and with it libggml)
    from llama_cpp import llama_cpp as _lc
    from llama_cpp._ctypes_extensions import load_shared_library

    return load_shared_library("ggml", Path(_lc._base_path))


def gpus() -> list[GpuInfo]:
    """Every non-CPU device ggml knows about, with its memory. [] on CPU-only builds or on failure."""
    try:
        lib = _ggml_lib()
        lib.ggml_backend_dev_count.restype = ctypes.c_size_t
        lib.ggml_backend_dev_get.restype = ctypes.c_void_p
        lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
        for fn in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
            getattr(lib, fn).restype = ctypes.c_char_p
            getattr(lib, fn).argtypes = [ctypes.c_void_p]
        lib.ggml_backend_dev_type.restype = ctypes.c_int
        lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
        lib.ggml_backend_dev_memory.restype = None
        lib.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)]
        n = lib.ggml_backend_dev_count()
        if n == 0 and hasattr(lib, "ggml_backend_load_all"):  # builds with dynamically loaded backends
            lib.ggml_backend_load_all()
            n = lib.ggml_backend_dev_count()
    except Exception:  # no llama_cpp, an old libggml without the device API: report no GPUs
        return []
    out = []
    for i in range(n):
        dev = lib.ggml_backend_dev_get(i)
        kind = lib.ggml_backend_dev_type(dev)  # 0 CPU, 1 GPU, 2 integrated GPU, 3 accelerator (BLAS, AMX)
        if kind not in (1, 2):
            continue
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        name = (lib.ggml_backend_dev_name(dev) or b"?").decode("utf-8", "replace")
        desc = (lib.ggml_backend_dev_description(dev) or b"").decode("utf-8", "replace")
        unified = kind == 2 or name.lower().startswith(("metal", "mtl")) or (sys.platform == "darwin" and os.uname().machine == "arm64")
        out.append(GpuInfo(len(out), name, desc, int(total.value), int(free.value), unified))
    return out


def system_memory() -> SystemMemory:
    total, avail, source = ram()
    return SystemMemory(total, avail, source, tuple(gpus()))


@dataclass(frozen=True)
class CpuFeatures:
    avx2: bool = False
    avx512: bool = False
    neon: bool = False
    dotprod: bool = False
    i8mm: bool = False
    sve_cnt: int = 0

    def repacks(self, t: gguf_info.TensorInfo) -> bool:
        """Whether llama.cpp's CPU backend keeps a repacked copy of this tensor: the rules of
        ggml_repack_get_optimal_repack_type (ggml-cpu/repack.cpp) for matrices used by mat-mul."""
        if len(t.shape) != 2 or t.name == "token_embd.weight":  # the embedding is read by row lookups, not mat-mul
            return False
        rows = t.shape[1]
        arm = self.neon and (self.i8mm or self.dotprod)
        name = t.type_name
        if name == "Q4_0":
            return bool(((self.avx2 or (self.sve_cnt == 32 and self.i8mm)) and rows % 8 == 0) or (arm and rows % 4 == 0))
        if name == "Q4_K":
            return (self.avx2 or arm) and rows % 8 == 0
        if name == "Q2_K":
            return self.avx512 and rows % 8 == 0
        if name in ("Q5_K", "Q6_K"):
            return arm and rows % 8 == 0
        if name in ("IQ4_NL", "MXFP4"):
            return bool((self.avx2 and rows % 8 == 0) or (self.neon and self.dotprod and rows % 4 == 0))
        if name in ("Q8_0", "Q1_0"):
            return arm and rows % 4 == 0
        return False


_cpu_features: CpuFeatures | None = None


def cpu_features() -> CpuFeatures:
    """What ggml's CPU backend was built for and runs on (ggml_cpu_has_*), else /proc/cpuinfo."""
    global _cpu_features
    if _cpu_features is not None:
        return _cpu_features
    feats = None
    try:
        import llama_cpp  # noqa: F401
        from llama_cpp import llama_cpp as _lc
        from llama_cpp._ctypes_extensions import load_shared_library

        lib = load_shared_library("ggml-cpu", Path(_lc._base_path))

        def has(n):
            f = getattr(lib, f"ggml_cpu_has_{n}", None)
            if f is None:
                return False
            f.restype = ctypes.c_int
            return bool(f())

        sve = 0
        if getattr(lib, "ggml_cpu_get_sve_cnt", None) is not None and has("sve"):
            lib.ggml_cpu_get_sve_cnt.restype = ctypes.c_int
            sve = int(lib.ggml_cpu_get_sve_cnt())
        feats = CpuFeatures(has("avx2"), has("avx512"), has("neon"), has("dotprod"), has("matmul_int8"), sve)
    except Exception:
        try:
            flags = Path("/proc/cpuinfo").read_text()
            feats = CpuFeatures(avx2=" avx2" in flags, avx512=" avx512f" in flags, neon=" asimd" in flags, dotprod=" asimddp" in flags, i8mm=" i8mm" in flags)
        except OSError:
            feats = CpuFeatures(neon=sys.platform == "darwin", dotprod=sys.platform == "darwin")
    _cpu_features = feats
    return feats


# ====================================================================== sizes
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?)(b?)\s*$", re.I)


def parse_size(text: str, *, total: int | None = None) -> int:
    """'6GB', '6 GiB', '6144MiB', '512M', '80%' (of `total`) or a bare number of GB -> bytes."""
    s = str(text).strip()
    if s.endswith("%"):
        if total is None:
            raise UsageError(f"a percentage budget needs the machine's memory size: {text!r}")
        try:
            pct = float(s[:-1])
        except ValueError:
            raise UsageError(f"not a size: {text!r}", "use e.g. 6GB, 6144MiB or 75%") from None
        if not 0 < pct <= 100:
            raise UsageError(f"a percentage budget must be in (0, 100]: {text!r}")
        return int(total * pct / 100)
    m = _SIZE_RE.match(s)
    if not m:
        raise UsageError(f"not a size: {text!r}", "use e.g. 6GB, 6144MiB or 75%")
    num, unit, binary, b = float(m.group(1)), m.group(2).lower(), m.group(3), m.group(4)
    if not unit and not binary and not b:
        unit = "g"  # a bare number is GB
    if binary and not unit:
        raise UsageError(f"not a size: {text!r}", "use e.g. 6GB, 6144MiB or 75%")
    power = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}[unit]
    value = int(num * (1024 if binary else 1000) ** power)
    if value <= 0:
        raise UsageError(f"the size must be positive: {text!r}")
    return value


def fmt_bytes(n: int | float) -> str:
    n = float(n)
    if n >= 1e9:
        return f"{n / 1e9:.2f} GB"
    if n >= 1e6:
        return f"{n / 1e6:.0f} MB"
    return f"{n / 1e3:.0f} kB"


def default_ram_margin(total: int) -> int:
    """Kept free for the OS and other programs: 10% of RAM, at least 512 MiB, at most 2 GiB."""
    return int(min(2 * GiB, max(512 * MiB, 0.10 * total)))


def default_vram_margin(total: int) -> int:
    """GPU memory kept free: the driver's context and fragmentation (512 MiB + 5%)."""
    return int(512 * MiB + 0.05 * total)


# ====================================================================== estimate
def pad_ctx(n_ctx: int) -> int:
    return max(KV_PAD, (int(n_ctx) + KV_PAD - 1) // KV_PAD * KV_PAD)


def kv_bytes_per_layer(info: gguf_info.GGUFInfo, n_ctx: int, type_k: str, type_v: str) -> list[int]:
    """KV cache bytes of each layer for a context of n_ctx tokens."""
    if type_k not in KV_GGML or type_v not in KV_GGML:
        raise UsageError(f"unknown KV cache type {type_k if type_k not in KV_GGML else type_v!r}", f"use one of {', '.join(KV_TYPES)}")
    cells = pad_ctx(n_ctx)
    dk, dv = info.head_dim_k, info.head_dim_v
    out = []
    for n_kv in info.n_head_kv_per_layer():
        k = gguf_info.type_size(KV_GGML[type_k], dk * n_kv)
        v = gguf_info.type_size(KV_GGML[type_v], dv * n_kv)
        out.append(cells * (k + v))
    return out


def compute_touched(info: gguf_info.GGUFInfo, n_ubatch: int) -> int:
    """Compute-buffer bytes a full prompt batch touches (activations; see the module docstring)."""
    return int(n_ubatch) * (3 * info.n_ff + 6 * info.n_embd) * 4


def compute_reserved(info: gguf_info.GGUFInfo, n_ubatch: int, with_output: bool = True) -> int:
    """What llama.cpp allocates for the compute graph (it reserves room for n_ubatch rows of logits)."""
    act = compute_touched(info, n_ubatch)
    if not with_output:
        return act
    return max(act, int(n_ubatch) * (info.vocab_size + 2 * info.n_embd) * 4)


@dataclass
class ModelEstimate:
    """Bytes one model needs, by part and by memory (ram: system RAM, vram: dedicated GPU memory)."""

    weights: int = 0
    repack: int = 0
    kv: int = 0
    compute: int = 0
    output: int = 0
    overhead: int = 0
    weights_vram: int = 0
    kv_vram: int = 0
    compute_vram: int = 0
    n_gpu_layers: int = 0

    @property
    def ram(self) -> int:
        return self.weights + self.repack + self.kv + self.compute + self.output + self.overhead

    @property
    def vram(self) -> int:
        return self.weights_vram + self.kv_vram + self.compute_vram

    def as_dict(self) -> dict:
        return {**asdict(self), "ram": self.ram, "vram": self.vram}


def gpu_split(info: gguf_info.GGUFInfo, n_gpu_layers: int) -> tuple[list[bool], bool]:
    """Which repeating layers, and whether the output layer, llama.cpp puts on the GPU.

    llama.cpp offloads the *last* n_gpu_layers layers; n_layer + 1 (or -1) also moves the output layer.
    """
    n = info.n_layer
    ngl = n + 1 if n_gpu_layers < 0 else min(int(n_gpu_layers), n + 1)
    start = n - min(ngl, n)
    return [i >= start for i in range(n)], ngl > n


def estimate_model(
    info: gguf_info.GGUFInfo,
    *,
    n_ctx: int,
    type_k: str = "f16",
    type_v: str = "f16",
    n_gpu_layers: int = 0,
    use_mmap: bool = True,
    unified: bool = False,
    n_ubatch: int = 512,
    n_outputs: int = 16,
    cpu: CpuFeatures | None = None,
) -> ModelEstimate:
    """Bytes `info` needs with these settings. unified: the GPU shares system RAM (Metal, iGPU)."""
    cpu = cpu if cpu is not None else cpu_features()
    n_ubatch = max(1, min(int(n_ubatch), pad_ctx(n_ctx)))
    on_gpu, output_on_gpu = gpu_split(info, n_gpu_layers) if n_gpu_layers else ([False] * info.n_layer, False)
    est = ModelEstimate(n_gpu_layers=int(n_gpu_layers))

    def tensor_on_gpu(t: gguf_info.TensorInfo) -> bool:
        if t.layer is not None:
            return t.layer < len(on_gpu) and on_gpu[t.layer]
        return output_on_gpu and t.name.startswith("output")

    cpu_bytes = gpu_bytes = repack = 0
    for t in info.tensors:
        if tensor_on_gpu(t) and not unified:
            gpu_bytes += t.nbytes
        else:
            cpu_bytes += t.nbytes
            if cpu.repacks(t) and not (unified and tensor_on_gpu(t)):
                repack += t.nbytes
    if use_mmap:
        # the mapping covers the whole file and llama.cpp populates it; repacked matrices keep their
        # original pages mapped next to the repacked copy
        est.weights = cpu_bytes + (info.data_offset if cpu_bytes else 0)
        est.repack = repack
    else:
        est.weights = cpu_bytes  # read into anonymous buffers; repacked tensors are not duplicated
    est.weights_vram = gpu_bytes

    kv = kv_bytes_per_layer(info, n_ctx, type_k, type_v)
    for i, b in enumerate(kv):
        if on_gpu[i] and not unified:
            est.kv_vram += b
        else:
            est.kv += b

    any_gpu = any(on_gpu) or output_on_gpu
    if unified and any_gpu:
        est.compute = compute_reserved(info, n_ubatch, with_output=True)  # GPU buffers, in system RAM
    elif any_gpu:
        est.compute_vram = compute_reserved(info, n_ubatch, with_output=output_on_gpu)
        est.compute = compute_touched(info, n_ubatch) if not all(on_gpu) else n_ubatch * info.n_embd * 4 * 2
    else:
        est.compute = compute_touched(info, n_ubatch)
    est.output = max(1, int(n_outputs)) * info.vocab_size * 4
    est.overhead = MODEL_OVERHEAD_FIXED + MODEL_OVERHEAD_PER_TOKEN * info.vocab_size + MODEL_OVERHEAD_PER_MERGE * info.n_merges
    return est


# ====================================================================== planner
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
    notes: list[str] = field(default_factory=list)

    @property
    def flash_attn(self) -> bool:
        return self.type_v != "f16"

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
            "type_v": self.type_v, "flash_attn": self.flash_attn, "n_gpu_layers": self.n_gpu_layers,
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


def _info(model) -> gguf_info.GGUFInfo:
    return model if isinstance(model, gguf_info.GGUFInfo) else gguf_info.read(model)


def _ngl_value(info: gguf_info.GGUFInfo, layers: int) -> int:
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


def _speed(t_est: ModelEstimate, d_est: ModelEstimate | None, k: int, alpha: float, cpu_verify_cost: float) -> float:
    """Relative tokens/s: the better of plain decoding and speculation (the engine picks).

    A step drafts k tokens (k draft passes) and verifies k+1 positions in one target pass; each extra
    position costs cpu_verify_cost of a step for the layers on the CPU, GPU_VERIFY_COST on the GPU.
    With acceptance rate alpha a step yields (1 - alpha^(k+1)) / (1 - alpha) tokens.
    """
    t_cpu = (t_est.weights + t_est.repack) / CPU_BW if t_est.weights else 0.0
    t_gpu = t_est.weights_vram / GPU_BW
    plain = 1.0 / max(t_cpu + t_gpu, 1e-9)
    if d_est is None or k <= 0:
        return plain
    d_step = d_est.weights / CPU_BW + d_est.weights_vram / GPU_BW
    verify = t_cpu * (1 + cpu_verify_cost * k) + t_gpu * (1 + GPU_VERIFY_COST * k)
    expected = (1 - alpha ** (k + 1)) / (1 - alpha)
    return max(plain, expected / max(k * d_step + verify, 1e-9))


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
    k: int = 4,
    acceptance: float = DEFAULT_ACCEPTANCE,
    cpu_verify_cost: float | None = None,
    n_ubatch: int = 512,
    n_outputs: int = 16,
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
    kv_order = [kv_type] if kv_type else list(KV_TYPES)
    trials = [(c, kv) for c in contexts for kv in kv_order if kv != "q4_0"] + [(c, "q4_0") for c in contexts if "q4_0" in kv_order]
    mmaps = [use_mmap] if use_mmap is not None else [True, False]

    def build(ctx, kv, mmap, t_ngl, d_ngl, offload):
        kw = dict(n_ctx=ctx, type_k=kv, type_v=kv, use_mmap=mmap, unified=unified is not None, n_ubatch=n_ubatch, n_outputs=n_outputs, cpu=cpu)
        gpu = bool(system.gpus)  # without a GPU llama.cpp ignores n_gpu_layers
        te = estimate_model(tinfo, n_gpu_layers=t_ngl if gpu else 0, **kw)
        de = estimate_model(dinfo, n_gpu_layers=d_ngl if gpu else 0, **kw) if dinfo else None
        if de is not None and mmap and same_file:
            de.weights = 0  # one file mapped twice: the page cache holds it once
        return Plan(
            target=str(tinfo.path), draft=str(dinfo.path) if dinfo else None, n_ctx=ctx, type_k=kv, type_v=kv,
            n_gpu_layers=t_ngl, draft_gpu_layers=d_ngl, use_mmap=mmap, use_mlock=False, n_ubatch=n_ubatch,
            target_estimate=te, draft_estimate=de, process_overhead=PROCESS_OVERHEAD, budget=budget,
            vram_budget=vram_budget, system=system, offload=offload,
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
