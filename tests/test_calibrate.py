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
    calibrate.save(target, draft, costs)
    again = calibrate.load(target, draft)
    assert again.verify == costs.verify and again.draft_agreement == costs.draft_agreement
    cached, measured_now = calibrate.load_or_measure(target, draft, k_max=4)
    assert not measured_now and cached.draft_agreement == costs.draft_agreement
