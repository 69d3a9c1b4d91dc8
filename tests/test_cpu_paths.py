"""The CPU probe that decides whether llama.cpp's AMX kernels may be used, and loading without them."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from edgespec.machine import cpu_paths
from edgespec.errors import UsageError

PY = sys.executable
CLEAN = [PY, "-c", "print('{\"ok\": true, \"amx_used\": true}')"]
SIGILL = [PY, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGILL)"]
HANG = [PY, "-c", "import time; time.sleep(60)"]
FAILS = [PY, "-c", "import sys; sys.stderr.write('RuntimeError: llama_decode failed\\n'); sys.exit(3)"]


@pytest.fixture(autouse=True)
def fresh(tmp_path, monkeypatch):
    """Each test: its own cache directory and no remembered decisions or override."""
    monkeypatch.setenv("EDGESPEC_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("EDGESPEC_AMX", raising=False)
    monkeypatch.setattr(cpu_paths, "_decisions", {})


def counting(marker, then):
    """A stand-in child that leaves a mark (so a test can tell whether it ran), then does `then`."""
    return [PY, "-c", f"open({str(marker)!r}, 'a').write('x'); " + then[-1]]


def test_child_that_decodes_is_trusted():
    r = cpu_paths.run_probe(CLEAN)
    assert r.ok and r.detail == "decoded" and r.amx_used


def test_child_killed_by_sigill_is_not():
    r = cpu_paths.run_probe(SIGILL)
    assert not r.ok and r.detail == "killed by SIGILL"


def test_child_that_hangs_is_stopped_at_the_time_limit():
    t0 = time.perf_counter()
    r = cpu_paths.run_probe(HANG, timeout=1.0)
    assert not r.ok and r.detail == "no answer within 1 s"
    assert time.perf_counter() - t0 < 10


def test_child_that_fails_says_why():
    r = cpu_paths.run_probe(FAILS)
    assert not r.ok and r.detail == "exit code 3: RuntimeError: llama_decode failed"


def test_a_crash_turns_amx_off_once_and_the_verdict_is_cached(tmp_path):
    marker = tmp_path / "ran"
    d = cpu_paths.decide(probe_argv=counting(marker, SIGILL), available=True)
    assert d.available and not d.use_amx and d.avoids_amx and d.fresh
    assert "SIGILL" in d.reason and "EDGESPEC_AMX=on" in d.notice()
    assert marker.read_text() == "x"
    # a new process (no remembered decision) reads the cache: no probe, no notice
    cpu_paths._decisions.clear()
    d2 = cpu_paths.decide(probe_argv=counting(marker, SIGILL), available=True)
    assert not d2.use_amx and not d2.fresh and d2.notice() is None
    assert marker.read_text() == "x"
    entry = json.loads((tmp_path / "cache" / "cpu_probe.json").read_text())[cpu_paths.cache_key()]
    assert entry["ok"] is False and entry["detail"] == "killed by SIGILL" and entry["cpu"] == cpu_paths.cpu_model()


def test_a_clean_probe_keeps_amx(tmp_path):
    d = cpu_paths.decide(probe_argv=CLEAN, available=True)
    assert d.use_amx and not d.avoids_amx and d.notice() is None


def test_a_hang_turns_amx_off(monkeypatch):
    d = cpu_paths.decide(probe_argv=HANG, available=True, timeout=1.0)
    assert not d.use_amx and "no answer within 1 s" in d.reason


def test_the_cache_is_per_cpu_kernel_and_build(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    cpu_paths.decide(probe_argv=counting(marker, CLEAN), available=True)
    cpu_paths._decisions.clear()
    monkeypatch.setattr(cpu_paths, "cache_key", lambda: "another-cpu-or-kernel-or-build")
    cpu_paths.decide(probe_argv=counting(marker, CLEAN), available=True)
    assert marker.read_text() == "xx"


@pytest.mark.parametrize("how", ["option", "env"])
def test_override_forces_amx_on_or_off_without_a_probe(tmp_path, monkeypatch, how):
    marker = tmp_path / "ran"
    for setting, use in (("on", True), ("off", False)):
        if how == "env":
            monkeypatch.setenv("EDGESPEC_AMX", setting)
        d = cpu_paths.decide(setting if how == "option" else None, probe_argv=counting(marker, SIGILL), available=True)
        assert d.use_amx is use and d.setting == setting and "forced" in d.reason
    assert not marker.exists()


def test_option_wins_over_environment(monkeypatch):
    monkeypatch.setenv("EDGESPEC_AMX", "off")
    assert cpu_paths.decide("on", available=True).use_amx


def test_bad_setting_is_a_usage_error(monkeypatch):
    with pytest.raises(UsageError, match="--amx must be one of auto, on, off"):
        cpu_paths.decide("maybe")
    monkeypatch.setenv("EDGESPEC_AMX", "yes")
    with pytest.raises(UsageError, match="EDGESPEC_AMX must be one of"):
        cpu_paths.decide()


def test_without_amx_nothing_changes_and_no_probe_runs(tmp_path):
    marker = tmp_path / "ran"
    d = cpu_paths.decide(probe_argv=counting(marker, SIGILL), available=False)
    assert not d.available and not d.avoids_amx and d.notice() is None
    assert not marker.exists()


def test_this_machine_decision_matches_what_llama_cpp_offers():
    d = cpu_paths.decide()
    assert d.available == ("AMX" in cpu_paths.extra_buffer_types())
    if not d.available:
        assert not d.avoids_amx  # models load exactly as llama.cpp would load them


def test_the_real_probe_child_decodes_here():
    """The child itself: writes its quantised model, loads it with llama.cpp's defaults, decodes."""
    r = cpu_paths.run_probe(cpu_paths.child_command(2))
    if cpu_paths.decide().available and not r.ok:
        pytest.xfail(f"this machine's AMX kernels fail: {r.detail}")  # then the decision above turns them off
    assert r.ok, r.detail


def test_probe_model_is_a_valid_quantised_gguf(tmp_path):
    import gguf
    from gguf.quants import dequantize

    from edgespec.machine import cpu_probe
    from edgespec.llama import gguf_write

    path = cpu_probe.write_model(tmp_path / "probe.gguf")
    reader = gguf.GGUFReader(str(path))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.ffn_up.weight"] == "Q4_0"
    # the writer's quantisation agrees with the gguf package's dequantisation
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 64)).astype(np.float32)
    q8 = np.frombuffer(gguf_write.quantize_q8_0(a), dtype=np.uint8).reshape(4, -1)
    q4 = np.frombuffer(gguf_write.quantize_q4_0(a), dtype=np.uint8).reshape(4, -1)
    assert np.abs(dequantize(q8, gguf.GGMLQuantizationType.Q8_0) - a).max() < 0.02
    assert np.abs(dequantize(q4, gguf.GGMLQuantizationType.Q4_0) - a).max() < 0.35


def test_repack_overrides_name_exactly_the_supported_matrices(tmp_path, tiny):
    from edgespec.machine import cpu_probe, devices
    from edgespec.llama import gguf_read as gguf_info

    path = cpu_probe.write_model(tmp_path / "probe.gguf")
    ov = cpu_paths.repack_overrides(path)
    info = gguf_info.read(path)
    cpu = devices.cpu_features()
    want = [t.name for t in info.tensors if t.layer is not None and cpu.repacks(t)]
    assert ov.tensors == len(want)
    import re

    matched = [t.name for t in info.tensors if any(re.search(p.decode(), t.name) for p in ov.patterns)]
    assert sorted(matched) == sorted(want)  # never token_embd, never a type without a repacked kernel
    if "CPU_REPACK" in cpu_paths.extra_buffer_types() and cpu.avx2:
        assert ov.tensors == 6  # the Q4_0 FFN matrices
    # layers placed on a GPU keep their own buffers
    assert cpu_paths.repack_overrides(path, n_gpu_layers=1, has_gpu=True).tensors == ov.tensors // 2
    assert cpu_paths.repack_overrides(tiny["target"]).tensors == 0  # F32: nothing to repack


def test_loading_without_amx_decodes_the_same(load, tmp_path):
    """The path taken when AMX is avoided (no extra buffer types, repack by name) gives the same logits."""
    from edgespec.machine import cpu_probe

    path = cpu_probe.write_model(tmp_path / "probe.gguf")
    avoid = cpu_paths.Decision(available=True, use_amx=False, reason="test")
    a, b = load(path), load(path, cpu=avoid)
    assert b.cpu_paths["amx"] is False and "by name" in b.cpu_paths["cpu_repack"]
    toks = list(range(3, 20))
    assert np.allclose(a.eval(toks, logits="all"), b.eval(toks, logits="all"), atol=1e-4)


@pytest.mark.slow
def test_qwen_without_amx_keeps_the_repack_and_the_output(qwen_pair):
    """On the 1.5B target: 168 of its matrices (the Q4_K ones) get the CPU repack by name where the CPU has
    AVX2, and greedy decoding is unchanged."""
    from edgespec.llama.model import Model

    avoid = cpu_paths.Decision(available=True, use_amx=False, reason="test")
    outs = []
    for cpu in (None, avoid):
        with Model(qwen_pair[0], n_ctx=512, n_threads=2, cpu=cpu) as m:
            if cpu is avoid and "CPU_REPACK" in cpu_paths.extra_buffer_types():
                from edgespec.machine import devices
                if devices.cpu_features().avx2:
                    assert m.cpu_paths["cpu_repack"].startswith("168 of ")
            rows = m.eval(m.tokenize("def add(a, b):\n"), logits="last")
            out = []
            for _ in range(12):
                t = int(np.argmax(rows[-1]))
                out.append(t)
                rows = m.eval([t], logits="last")
            outs.append(out)
    assert outs[0] == outs[1]


def test_packaged_executable_runs_its_own_probe_child(monkeypatch):
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    assert cpu_paths.child_command(4) == [sys.executable, "__cpu-probe", "4"]


def test_cli_reports_cpu_paths_and_refuses_a_bad_amx_value(tiny, cli_env):
    out = subprocess.run([PY, "-m", "edgespec", "plan", "-m", str(tiny["target"]), "--json"], env=cli_env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    paths = json.loads(out.stdout)["cpu_paths"]
    assert set(paths) >= {"amx", "amx_available", "reason", "extra_buffer_types", "cpu"}
    bad = subprocess.run([PY, "-m", "edgespec", "plan", "-m", str(tiny["target"]), "--amx", "maybe"], env=cli_env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--amx must be one of" in bad.stderr
