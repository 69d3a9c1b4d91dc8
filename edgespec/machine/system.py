"""What this machine is: its RAM (and the cgroup limit, in containers), its GPUs' memory, the CPU's
model and cores, and the description a benchmark records.

RAM: /proc/meminfo on Linux, sysctl + vm_stat on macOS, GlobalMemoryStatusEx on Windows. GPUs come
from ggml's device list (edgespec.machine.devices); Metal and integrated GPUs share system memory
("unified").
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from edgespec.errors import EdgespecError
from edgespec.machine import devices as ggml_devices


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



def gpus() -> list[GpuInfo]:
    """Every GPU ggml knows about, with its memory. [] on CPU-only builds."""
    found = [d for d in ggml_devices.devices() if d.is_gpu]
    return [GpuInfo(i, d.name, d.description, d.total, d.free, d.unified) for i, d in enumerate(found)]


def system_memory() -> SystemMemory:
    total, avail, source = ram()
    return SystemMemory(total, avail, source, tuple(gpus()))


# ---------------------------------------------------------------------------------------- the CPU
def _cpuinfo_field(*keys: str) -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in keys and value.strip():
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's name, as the OS reports it."""
    name = _cpuinfo_field("model name", "Hardware", "Model", "cpu model")
    if name:
        return name
    if sys.platform == "darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5)
            if out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty elsewhere)."""
    return set((_cpuinfo_field("flags", "Features") or "").split())


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def physical_cores() -> int | None:
    try:
        seen = set()
        phys = core = None
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    phys = value.strip()
                elif key == "core id":
                    core = value.strip()
                elif not line.strip():
                    if core is not None:
                        seen.add((phys, core))
                    phys = core = None
        if core is not None:
            seen.add((phys, core))
        return len(seen) or None
    except OSError:
        return None


def describe() -> dict:
    """The machine as a benchmark records it: CPU, cores, RAM, OS, ggml's devices and backend."""
    import llama_cpp

    devs = [d.as_dict() for d in ggml_devices.devices()]
    try:
        system_info = llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip(" |")
    except Exception:
        system_info = None
    try:
        gpu_offload = bool(llama_cpp.llama_supports_gpu_offload())
    except Exception:
        gpu_offload = None
    try:
        ram_total = ram()[0]
    except EdgespecError:
        ram_total = None
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    return {
        "cpu": cpu_model(), "cores_logical": os.cpu_count(), "cores_usable": affinity, "cores_physical": physical_cores(),
        "ram_bytes": ram_total, "os": platform.platform(), "machine": platform.machine(),
        "gpu": [d for d in devs if d["type"] in ("gpu", "igpu")], "devices": devs, "gpu_offload": gpu_offload,
        "backend": ", ".join(d["name"] for d in devs) or None, "llama_system_info": system_info,
    }


def versions() -> dict:
    import llama_cpp
    import numpy

    from edgespec import __version__

    return {"edgespec": __version__, "llama_cpp": llama_cpp.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


# ------------------------------------------------------------------------------- this process, now
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


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


def loadavg() -> list[float] | None:
    """1, 5 and 15-minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # Windows
        return None
