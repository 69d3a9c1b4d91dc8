"""ggml's view of this machine: its backend devices (CPU, GPUs, accelerators) with their memory, the CPU
device's extra buffer types, and the CPU features the CPU backend was built for and runs on.

One ctypes set-up on the libggml that llama-cpp-python ships, so whatever backend it was built with
(CUDA, Metal, Vulkan, ...) reports its devices the same way.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from edgespec.llama import gguf_read

KINDS = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel", 4: "meta"}  # enum ggml_backend_dev_type


def _load(name: str):
    import llama_cpp  # noqa: F401  (loads libllama and with it libggml)
    from llama_cpp import llama_cpp as _lc
    from llama_cpp._ctypes_extensions import load_shared_library

    return load_shared_library(name, Path(_lc._base_path))


@functools.lru_cache(maxsize=1)
def ggml():
    """libggml with the device API's signatures declared."""
    lib = _load("ggml")
    sig = {
        "ggml_backend_dev_count": (ctypes.c_size_t, []),
        "ggml_backend_dev_get": (ctypes.c_void_p, [ctypes.c_size_t]),
        "ggml_backend_dev_name": (ctypes.c_char_p, [ctypes.c_void_p]),
        "ggml_backend_dev_description": (ctypes.c_char_p, [ctypes.c_void_p]),
        "ggml_backend_dev_type": (ctypes.c_int, [ctypes.c_void_p]),
        "ggml_backend_dev_memory": (None, [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)]),
        "ggml_backend_dev_by_type": (ctypes.c_void_p, [ctypes.c_int]),
        "ggml_backend_dev_backend_reg": (ctypes.c_void_p, [ctypes.c_void_p]),
        "ggml_backend_reg_get_proc_address": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p]),
        "ggml_backend_buft_name": (ctypes.c_char_p, [ctypes.c_void_p]),
    }
    for fn, (res, args) in sig.items():
        f = getattr(lib, fn)
        f.restype, f.argtypes = res, args
    return lib


@dataclass(frozen=True)
class Device:
    name: str
    description: str
    kind: str  # cpu | gpu | igpu | accel | meta
    total: int
    free: int

    @property
    def is_gpu(self) -> bool:
        return self.kind in ("gpu", "igpu")

    @property
    def unified(self) -> bool:
        """Shares system RAM: integrated GPUs, Metal on Apple silicon."""
        return self.kind == "igpu" or self.name.lower().startswith(("metal", "mtl")) or (
            sys.platform == "darwin" and os.uname().machine == "arm64")

    def as_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "type": self.kind,
                "memory_total_bytes": self.total, "memory_free_bytes": self.free}


def devices() -> list[Device]:
    """Every backend device ggml knows about. [] where the library lacks the device API."""
    try:
        lib = ggml()
        n = lib.ggml_backend_dev_count()
        if n == 0 and hasattr(lib, "ggml_backend_load_all"):  # builds with dynamically loaded backends
            lib.ggml_backend_load_all()
            n = lib.ggml_backend_dev_count()
    except Exception:  # no llama_cpp, or an old libggml: report none
        return []
    out = []
    for i in range(n):
        dev = lib.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        kind = lib.ggml_backend_dev_type(dev)
        out.append(Device((lib.ggml_backend_dev_name(dev) or b"?").decode("utf-8", "replace"),
                          (lib.ggml_backend_dev_description(dev) or b"").decode("utf-8", "replace"),
                          KINDS.get(kind, str(kind)), int(total.value), int(free.value)))
    return out


@functools.lru_cache(maxsize=1)
def extra_buffer_types() -> dict[str, int]:
    """Name -> ggml_backend_buffer_type_t of the CPU device's extra buffer types, in llama.cpp's order
    of preference (for example AMX, CPU_REPACK). {} where the build has none or the API is missing."""
    out: dict[str, int] = {}
    try:
        lib = ggml()
        dev = lib.ggml_backend_dev_by_type(0)  # GGML_BACKEND_DEVICE_TYPE_CPU
        reg = lib.ggml_backend_dev_backend_reg(dev) if dev else None
        fn = lib.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_dev_get_extra_bufts") if reg else None
        if fn:
            arr = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(fn)(dev)
            i = 0
            while arr and arr[i]:
                out[(lib.ggml_backend_buft_name(arr[i]) or b"?").decode("utf-8", "replace")] = int(arr[i])
                i += 1
    except Exception:  # an older or unusual build: treat as having no extra buffer types
        return {}
    return out


# ------------------------------------------------------------------------------------ CPU features
@dataclass(frozen=True)
class CpuFeatures:
    avx2: bool = False
    avx512: bool = False
    neon: bool = False
    dotprod: bool = False
    i8mm: bool = False
    sve_cnt: int = 0

    def repacks(self, t: gguf_read.TensorInfo) -> bool:
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


@functools.lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """What ggml's CPU backend was built for and runs on (ggml_cpu_has_*), else the CPU's flags."""
    try:
        lib = _load("ggml-cpu")

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
        return CpuFeatures(has("avx2"), has("avx512"), has("neon"), has("dotprod"), has("matmul_int8"), sve)
    except Exception:
        from edgespec.machine.system import cpu_flags

        flags = cpu_flags()
        if flags:
            return CpuFeatures(avx2="avx2" in flags, avx512="avx512f" in flags, neon="asimd" in flags,
                               dotprod="asimddp" in flags, i8mm="i8mm" in flags)
        return CpuFeatures(neon=sys.platform == "darwin", dotprod=sys.platform == "darwin")
