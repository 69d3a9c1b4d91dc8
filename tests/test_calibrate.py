"""Calibration on the tiny models: the cost curve, the draft's agreement (the acceptance prior), the cache."""

from __future__ import annotations

from edgespec.machine import calibrate


def test_agreement_of_a_model_with_itself_is_total(load):
    target, same = load("target"), load("self_draft")
    agree = calibrate.agreement(target, same, chunk=5)
    hits, tries = sum(h for h, _ in agree), sum(t for _, t in agree)
    assert tries == min(96, len(target.tokenize(calibrate._SAMPLE)))
    assert hits == tries
    assert target.n_past == 0 and same.n_past == 0  # caches left empty


def test_agreement_of_a_perturbed_draft_is_partial_and_graded(load):
    target, draft = load("target"), load("draft")
    agree = calibrate.agreement(target, draft, chunk=17)
    hits, tries = sum(h for h, _ in agree), sum(t for _, t in agree)
    assert 0 < hits < tries


def test_measure_save_load_round_trip(load, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESPEC_CACHE", str(tmp_path))
    target, draft = load("target"), load("draft")
    costs = calibrate.measure(target, draft, k_max=4, reps=2)
    assert sorted(costs.verify) == [1, 2, 3, 4, 5]
    assert costs.draft_token > 0 and costs.draft_agreement
    assert costs.position == 256 and costs.attend is not None and costs.attend >= 0 and costs.attend_base >= 0
    calibrate.save(target, draft, costs)
    again = calibrate.load(target, draft)
    assert again.verify == costs.verify and again.draft_agreement == costs.draft_agreement
    assert (again.position, again.attend, again.attend_base) == (costs.position, costs.attend, costs.attend_base)
    cached, measured_now = calibrate.load_or_measure(target, draft, k_max=4)
    assert not measured_now and cached.draft_agreement == costs.draft_agreement


def test_a_curve_saved_without_its_context_cost_is_measured_again(load, tmp_path, monkeypatch):
    """Calibrations written before batches were priced by context: measured once more, not read as
    batches that cost the same after any context."""
    import json

    monkeypatch.setenv("EDGESPEC_CACHE", str(tmp_path))
    target, draft = load("target"), load("draft")
    calibrate.save(target, draft, calibrate.measure(target, draft, k_max=4, reps=2))
    path = tmp_path / "calibration.json"
    data = json.loads(path.read_text())
    for entry in data.values():
        del entry["attend"], entry["attend_base"], entry["position"]
    path.write_text(json.dumps(data))
    assert calibrate.load(target, draft).attend is None
    costs, measured_now = calibrate.load_or_measure(target, draft, k_max=4)
    assert measured_now and costs.attend is not None
