"""Replaying the controller against recorded greedy answers (edgespec.replay), without models."""

from __future__ import annotations

import numpy as np
import pytest

from edgespec.core.policy import Costs
from edgespec.bench.replay import oracle, replay

# The shape of this project's CPU curve (seconds): a 16-position batch costs about nine plain steps.
CPU = {1: 0.031, 2: 0.060, 3: 0.083, 4: 0.103, 5: 0.128, 6: 0.150, 8: 0.232, 10: 0.270, 12: 0.294, 16: 0.277, 17: 0.331}


def test_an_answer_with_nothing_to_copy_is_plain_decoding():
    prompt = list(range(1000, 1100))
    answer = list(range(2000, 2200))
    r = replay(prompt, answer, Costs(dict(CPU)))
    assert r.speedup == pytest.approx(1.0) and r.drafted == 0
    assert oracle(prompt, answer, Costs(dict(CPU))) == pytest.approx(1.0)


def test_a_verbatim_copy_pays_and_stays_under_the_ceiling():
    rng = np.random.default_rng(0)
    source = rng.integers(100, 5000, size=300).tolist()
    prompt = [1, 2, 3] + source + [4, 5]
    answer = [6, 7] + source[:250]
    costs = Costs(dict(CPU))
    r = replay(prompt, answer, costs)
    best = oracle(prompt, answer, costs)
    assert r.speedup > 1.3 and r.accepted > 200
    assert best >= r.speedup - 1e-9
    assert max(r.k_hist) >= 8  # long drafts once the copy is established


@pytest.mark.parametrize("seed", range(5))
def test_the_ceiling_bounds_the_controller(seed):
    rng = np.random.default_rng(seed)
    vocab = rng.integers(100, 140, size=60)  # few distinct tokens: many partial matches
    prompt = rng.choice(vocab, size=200).tolist()
    answer = (prompt[50:90] + rng.choice(vocab, size=30).tolist() + prompt[120:160])
    costs = Costs(dict(CPU))
    assert oracle(prompt, answer, costs) >= replay(prompt, answer, costs).speedup - 1e-9


def test_the_replay_script_prices_answers_with_another_curve_and_compares_with_ngram(tmp_path):
    """scripts/replay_policy.py: one machine's answers, another machine's cost curve, auto against ngram."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    rng = np.random.default_rng(1)
    source = rng.integers(100, 5000, size=200).tolist()
    traces = {"target": "recorded", "verify_s": {str(n): v for n, v in CPU.items()}, "position": 256,
              "prompts": [{"id": "copy", "category": "quote", "prompt": [1, 2] + source + [3], "answer": source[:150]}]}
    flat = {"target": "flat", "verify_s": {"1": 0.03, "2": 0.035, "4": 0.04, "8": 0.05, "16": 0.07, "32": 0.1, "64": 0.16},
            "position": 256, "prompts": []}
    (tmp_path / "t.json").write_text(json.dumps(traces))
    (tmp_path / "flat.json").write_text(json.dumps(flat))
    script = Path(__file__).resolve().parents[1] / "scripts" / "replay_policy.py"
    run = lambda *a: subprocess.run([sys.executable, str(script), "replay", str(tmp_path / "t.json"), *a],
                                    capture_output=True, text=True, check=True).stdout
    own, other = run("--versus-ngram", "--details"), run("--curve", str(tmp_path / "flat.json"), "--versus-ngram")
    assert "ngram" in own.splitlines()[0] and "replayed auto over replayed ngram" in own
    assert f"cost curve of {tmp_path / 'flat.json'}" in other
    gain = lambda out: float(out.split("replayed auto ")[1].split(",")[0])
    assert gain(other) > gain(own) > 1.0  # a copy pays more where verification is nearly free
