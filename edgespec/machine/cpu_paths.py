"""Which of llama.cpp's CPU weight paths to use: AMX, the CPU repack, or plain.

llama.cpp's CPU backend offers "extra" buffer types for quantised weights: AMX (Intel Advanced
Matrix Extensions) where the CPU reports it, and CPU_REPACK (weights re-laid-out for AVX2/AVX-512 or
ARM dot-product kernels). On some machines that report AMX, and where the kernel grants the tile
permission, the AMX matrix kernel still dies with SIGILL on the first batched decode: no message,
the whole process gone. So before the first model load on such a machine a child process writes a
tiny quantised model, loads it with llama.cpp's defaults and decodes a batch; if the child dies or
hangs, models load without the AMX buffer type and keep the CPU repack for exactly the tensors it
supports. The verdict is cached per CPU, kernel and llama.cpp build.

Where llama.cpp offers no AMX buffer type (no AMX on the CPU, or a build without it) nothing
changes and no probe runs. `EDGESPEC_AMX` (or --amx) = on | off | auto overrides the decision.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgespec.errors import UsageError
from edgespec.machine.devices import cpu_features, extra_buffer_types
from edgespec.machine.system import cpu_flags, cpu_model

SETTINGS = ("auto", "on", "off")
PROBE_TIMEOUT = 60.0  # seconds; the probe itself takes about one
_ENV = "EDGESPEC_AMX"
_CHILD_ARG = "__cpu-probe"


@dataclass(frozen=True)
class Decision:
    """Whether models load with llama.cpp's AMX buffer type, and why.

    available: llama.cpp offers AMX here (the CPU has it and the build has the kernels).
    use_amx: load with it. fresh: the probe ran in this process (its verdict is news to the user).
    """

    available: bool
    use_amx: bool
    reason: str
    setting: str = "auto"
    fresh: bool = False
    probe: dict | None = None

    @property
    def avoids_amx(self) -> bool:
        """Models must be loaded without the AMX buffer type (use_extra_bufts off, repack by override)."""
        return self.available and not self.use_amx

    def notice(self) -> str | None:
        """One line for the user, once: when a probe has just found that AMX does not work."""
        if self.fresh and self.avoids_amx:
            return (f"llama.cpp's AMX kernels do not work on this CPU ({self.reason}); loading models without them, "
                    f"with the CPU repack kept (checked once per CPU and llama.cpp build; {_ENV}=on forces them)")
        return None

    def as_dict(self) -> dict:
        return {"amx_available": self.available, "amx": self.use_amx, "setting": self.setting, "reason": self.reason,
                "probe": self.probe}


# -------------------------------------------------------------------------------------- the probe
@dataclass
class ProbeResult:
    ok: bool
    detail: str  # "decoded", "killed by SIGILL", "no answer within 60 s", "exit code 3: ..."
    seconds: float = 0.0
    amx_used: bool | None = None  # the child saw llama.cpp put weights in an AMX buffer


def child_command(n_threads: int) -> list[str]:
    """How to start the probe child: this interpreter, or the packaged executable itself."""
    if getattr(sys, "frozen", False):
        return [sys.executable, _CHILD_ARG, str(n_threads)]
    return [sys.executable, "-m", "edgespec.machine.cpu_probe", str(n_threads)]


def run_probe(argv: list[str], timeout: float = PROBE_TIMEOUT) -> ProbeResult:
    """Run a probe child and read its fate: a clean exit that says "ok", a signal, an error, or a hang."""
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop(_ENV, None)
    try:
        p = subprocess.run(argv, capture_output=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return ProbeResult(False, f"no answer within {timeout:g} s", time.perf_counter() - t0)
    except OSError as e:
        return ProbeResult(False, f"could not start the probe: {e.strerror or e}", time.perf_counter() - t0)
    dt = time.perf_counter() - t0
    if p.returncode < 0:
        try:
            name = signal.Signals(-p.returncode).name
        except ValueError:
            name = f"signal {-p.returncode}"
        return ProbeResult(False, f"killed by {name}", dt)
    out = p.stdout.decode("utf-8", "replace").strip().splitlines()
    last = out[-1] if out else ""
    try:
        answer = json.loads(last)
    except ValueError:
        answer = None
    if p.returncode == 0 and isinstance(answer, dict) and answer.get("ok"):
        return ProbeResult(True, "decoded", dt, bool(answer.get("amx_used")))
    why = (p.stderr.decode("utf-8", "replace").strip().splitlines() or [last or "no output"])[-1]
    return ProbeResult(False, f"exit code {p.returncode}: {why[:200]}", dt)


def _build_id() -> str:
    """The llama.cpp build: its version and the CPU backend library's size and time."""
    import llama_cpp
    from llama_cpp import llama_cpp as _lc

    parts = [llama_cpp.__version__]
    if getattr(sys, "frozen", False):
        # A one-file executable unpacks its libraries afresh on every start (new times): it names its build itself.
        libs = [Path(sys.executable)]
    else:
        base = Path(_lc._base_path)
        libs = sorted(base.glob("*ggml-cpu*")) + sorted(base.glob("*llama.*"))
    for lib in libs:
        try:
            st = lib.stat()
            parts.append(f"{lib.name}:{st.st_size}:{int(st.st_mtime)}")
        except OSError:
            pass
    return "|".join(parts)


def cache_key() -> str:
    flags = sorted(f for f in cpu_flags() if f.startswith(("amx", "avx512", "avx2", "xsave")))
    parts = [cpu_model(), ",".join(flags), platform.system(), platform.release(), _build_id()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def _cache_path() -> Path:
    from edgespec.models.cache import cache_dir

    return cache_dir() / "cpu_probe.json"


def _read_cache() -> dict:
    try:
        data = json.loads(_cache_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(key: str, result: ProbeResult) -> None:
    data = _read_cache()
    data[key] = {**asdict(result), "cpu": cpu_model(), "kernel": platform.release(),
                 "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        path = _cache_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass  # the probe runs again next time; not worth failing a command for


def setting_from(value: str | None) -> str:
    """--amx, else $EDGESPEC_AMX, else auto."""
    s = (value or os.environ.get(_ENV) or "auto").strip().lower()
    if s not in SETTINGS:
        src = "--amx" if value else _ENV
        raise UsageError(f"{src} must be one of {', '.join(SETTINGS)}, got {s!r}")
    return s


_decisions: dict[str, Decision] = {}


def decide(setting: str | None = None, *, probe_argv: list[str] | None = None, timeout: float = PROBE_TIMEOUT,
           available: bool | None = None) -> Decision:
    """Whether to load with AMX, probing the first time on a machine that offers it.

    probe_argv, available: for tests (a stand-in child; pretend llama.cpp offers AMX).
    """
    s = setting_from(setting)
    memo = f"{s}|{probe_argv}|{available}"
    if memo in _decisions:
        return _decisions[memo]
    has = ("AMX" in extra_buffer_types()) if available is None else available
    if not has:
        d = Decision(False, False, "llama.cpp offers no AMX kernels here", s)
    elif s == "on":
        d = Decision(True, True, f"forced on ({_ENV}=on or --amx on)", s)
    elif s == "off":
        d = Decision(True, False, f"forced off ({_ENV}=off or --amx off)", s)
    else:
        key = cache_key()
        cached = _read_cache().get(key)
        fresh = not isinstance(cached, dict) or "ok" not in cached
        if fresh:
            from edgespec.llama.model import default_threads

            result = run_probe(probe_argv or child_command(default_threads()), timeout)
            _write_cache(key, result)
            cached = asdict(result)
        reason = "the probe decoded with them" if cached["ok"] else f"the probe was {cached['detail']}" \
            if cached["detail"].startswith("killed") else f"the probe failed: {cached['detail']}"
        d = Decision(True, bool(cached["ok"]), reason, s, fresh, cached)
    _decisions[memo] = d
    return d


# ------------------------------------------------------------------ loading without the AMX buffer type
class llama_model_tensor_buft_override(ctypes.Structure):
    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


@dataclass
class Overrides:
    """A NULL-terminated tensor_buft_overrides array for llama_model_params, and what it covers."""

    array: ctypes.Array | None = None
    patterns: list[bytes] = field(default_factory=list)
    tensors: int = 0  # weight tensors given the CPU repack
    matrices: int = 0  # 2-D weight tensors in the model

    def pointer(self) -> int | None:
        return ctypes.cast(self.array, ctypes.c_void_p).value if self.array is not None else None


def repack_overrides(path: str | os.PathLike, n_gpu_layers: int = 0, has_gpu: bool = False) -> Overrides:
    """CPU_REPACK for exactly the weights llama.cpp's repack supports on this CPU and that stay on the CPU.

    Exact tensor names, grouped per name pattern: forcing the repack buffer on a tensor it does not
    support (the token embedding, a type without a repacked kernel here) crashes llama.cpp.
    """
    from edgespec.llama import gguf_read
    from edgespec.machine import estimate
    buft = extra_buffer_types().get("CPU_REPACK")
    info = gguf_read.read(path)
    cpu = cpu_features()
    on_gpu, _ = estimate.gpu_split(info, n_gpu_layers) if (n_gpu_layers and has_gpu) else ([False] * info.n_layer, False)
    out = Overrides(matrices=sum(1 for t in info.tensors if len(t.shape) == 2))
    if not buft:
        return out
    by_suffix: dict[str, list[int]] = {}
    for t in info.tensors:
        layer = t.layer
        if layer is None or (layer < len(on_gpu) and on_gpu[layer]) or not cpu.repacks(t):
            continue
        by_suffix.setdefault(t.name.split(".", 2)[2], []).append(layer)
        out.tensors += 1
    for suffix, layers in by_suffix.items():
        alt = "|".join(str(i) for i in sorted(set(layers)))
        out.patterns.append(f"^blk\\.({alt})\\.{re.escape(suffix)}$".encode())
    arr = (llama_model_tensor_buft_override * (len(out.patterns) + 1))()
    for i, p in enumerate(out.patterns):
        arr[i].pattern, arr[i].buft = p, buft
    arr[len(out.patterns)].pattern, arr[len(out.patterns)].buft = None, None
    out.array = arr
    return out


def report(decision: Decision, models=()) -> dict:
    """What `calibrate`, `bench --json` and `plan` say about the CPU paths: the decision and, per
    loaded model, how its weights were placed."""
    doc = {"cpu": cpu_model(), "extra_buffer_types": list(extra_buffer_types()), **decision.as_dict()}
    placed = [m.cpu_paths for m in models if m is not None and getattr(m, "cpu_paths", None)]
    if placed:
        doc["models"] = placed
    return doc


def summary(decision: Decision) -> str:
    """One line: which paths quantised weights take on this CPU."""
    names = list(extra_buffer_types())
    repack = "CPU repack" if "CPU_REPACK" in names else "no CPU repack in this build"
    if decision.use_amx:
        return f"AMX in use ({decision.reason}), then {repack}"
    if decision.available:
        return f"AMX off ({decision.reason}); {repack} kept for the weights it supports"
    return f"{repack}; no AMX ({decision.reason})"
