"""What a model will need in memory with given settings, part by part, from its GGUF header alone.

Estimate (per model, bytes; `ModelEstimate`)
  weights   tensor bytes from the GGUF tensor table (type + shape), split by layer. With mmap the
            whole file is mapped and populated, so the header counts too.
  repack    llama.cpp's CPU backend keeps a second, re-laid-out copy of some quantised matrices
            (the rules in edgespec.machine.devices.CpuFeatures.repacks). With mmap the
            original pages stay mapped as well, so both count; without mmap they do not.
  kv        n_ctx (padded to 256) x layers x (K + V row sizes) for the KV type (f16, q8_0, q4_0).
  compute   on the CPU, the pages llama.cpp's compute buffer actually touches: a full prompt batch
            of n_ubatch tokens needs about n_ubatch x (3 n_ff + 6 n_embd) floats (FFN gate/up/product,
            residual stream, attention in/out). Calibrated on Qwen2.5 0.5B/1.5B, SmolLM2-135M and
            Gemma 3 270M: within 6% of the measured growth (Gemma: 15% under, its extra norms). Without
            flash attention the batch's attention scores and mask are whole matrices: n_ubatch x n_ctx x
            (n_head + 1) floats + 6 n_embd floats a row, when that is more (llama.cpp's reserve for
            Qwen2.5 0.5B/1.5B at 16k and 32k contexts, to the MiB). On a GPU the buffer is allocated
            in full: max(that, n_ubatch x n_vocab floats for the logits + 2 n_ubatch x n_embd).
  output    the logits buffer: n_vocab floats per output row (n_outputs rows: one per verified
            draft position).
  overhead  per model: vocabulary tables, token caches and the like: 4.8 MiB + 164 bytes per token +
            134 bytes per BPE merge (fitted to SmolLM2, Qwen2.5 and Gemma 3 within 1 MiB).
  process   the interpreter, numpy, llama.cpp's libraries and the CLI: PROCESS_OVERHEAD.

Test tests/test_memory.py::test_estimate_matches_peak_rss loads the real models and compares.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from edgespec.errors import UsageError
from edgespec.llama import gguf_read
from edgespec.machine.devices import CpuFeatures, cpu_features
from edgespec.session.options import KV_TYPES  # noqa: F401  (the names users give; their ggml ids below)

MiB = 1 << 20
GiB = 1 << 30

PROCESS_OVERHEAD = 56 * MiB  # interpreter, numpy, llama.cpp libraries, the CLI (measured 46 MiB for `edgespec` on Linux)
MODEL_OVERHEAD_FIXED = int(4.8 * MiB)
MODEL_OVERHEAD_PER_TOKEN = 164
MODEL_OVERHEAD_PER_MERGE = 134
KV_PAD = 256  # llama.cpp rounds the context up to a multiple of 256
KV_GGML = {"f16": 1, "q8_0": 8, "q4_0": 2}  # ggml_type ids for llama_context_params.type_k / type_v
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


def pad_ctx(n_ctx: int) -> int:
    return max(KV_PAD, (int(n_ctx) + KV_PAD - 1) // KV_PAD * KV_PAD)


def kv_bytes_per_layer(info: gguf_read.GGUFInfo, n_ctx: int, type_k: str, type_v: str) -> list[int]:
    """KV cache bytes of each layer for a context of n_ctx tokens."""
    cells = pad_ctx(n_ctx)
    dk, dv = info.head_dim_k, info.head_dim_v
    out = []
    for n_kv in info.n_head_kv_per_layer():
        k = gguf_read.type_size(KV_GGML[type_k], dk * n_kv)
        v = gguf_read.type_size(KV_GGML[type_v], dv * n_kv)
        out.append(cells * (k + v))
    return out


def compute_touched(info: gguf_read.GGUFInfo, n_ubatch: int, n_ctx: int = 0, flash_attn: bool | None = None) -> int:
    """Compute-buffer bytes a full prompt batch touches (activations; see the module docstring).
    flash_attn False: attention without the flash kernel, whose scores grow with the context n_ctx."""
    act = int(n_ubatch) * (3 * info.n_ff + 6 * info.n_embd) * 4
    if flash_attn is False and n_ctx:
        act = max(act, int(n_ubatch) * (pad_ctx(n_ctx) * (info.n_head + 1) + 6 * info.n_embd) * 4)
    return act


def compute_reserved(info: gguf_read.GGUFInfo, n_ubatch: int, with_output: bool = True) -> int:
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


def gpu_split(info: gguf_read.GGUFInfo, n_gpu_layers: int) -> tuple[list[bool], bool]:
    """Which repeating layers, and whether the output layer, llama.cpp puts on the GPU.

    llama.cpp offloads the *last* n_gpu_layers layers; n_layer + 1 (or -1) also moves the output layer.
    """
    n = info.n_layer
    ngl = n + 1 if n_gpu_layers < 0 else min(int(n_gpu_layers), n + 1)
    start = n - min(ngl, n)
    return [i >= start for i in range(n)], ngl > n


def estimate_model(
    info: gguf_read.GGUFInfo,
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
    flash_attn: bool | None = None,
) -> ModelEstimate:
    """Bytes `info` needs with these settings. unified: the GPU shares system RAM (Metal, iGPU).
    flash_attn: the attention kernel (edgespec.machine.planner.flash_attention); False grows the CPU
    compute buffer with the context."""
    cpu = cpu if cpu is not None else cpu_features()
    n_ubatch = max(1, min(int(n_ubatch), pad_ctx(n_ctx)))
    on_gpu, output_on_gpu = gpu_split(info, n_gpu_layers) if n_gpu_layers else ([False] * info.n_layer, False)
    est = ModelEstimate(n_gpu_layers=int(n_gpu_layers))

    def tensor_on_gpu(t: gguf_read.TensorInfo) -> bool:
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
        est.compute = compute_touched(info, n_ubatch, n_ctx, flash_attn)
    est.output = max(1, int(n_outputs)) * info.vocab_size * 4
    est.overhead = MODEL_OVERHEAD_FIXED + MODEL_OVERHEAD_PER_TOKEN * info.vocab_size + MODEL_OVERHEAD_PER_MERGE * info.n_merges
    return est

