"""Record greedy answers for a bench suite once, then replay n-gram policies against them in seconds.

    python scripts/replay_policy.py record traces.json [--suite short|edit] [--pair NAME] [--max-tokens N] [--category C]
    python scripts/replay_policy.py replay traces.json [--max-tokens N] [--k-max 64] [--details] [--no-context]
    python scripts/replay_policy.py replay bench.json   # an `edgespec bench --json` file (greedy) instead
    python scripts/replay_policy.py replay bench.json --curve other.json --versus-ngram   # another machine's curve; auto vs ngram

`record` loads the target (plain greedy decoding), writes every prompt's tokens and answer, and the
pair's calibrated cost curve (measured now if not cached). `replay` needs no model: for each prompt
it prints the speed-up the current controller would reach over plain decoding (edgespec.bench.replay), and
the ceiling any policy could reach with the same n-gram drafter if it knew in advance how far each
lookup would be right. A bench JSON replays the same way, from its plain replies and the cost curve
that run calibrated, and its measured speed-ups are printed beside the replay and the ceiling.
Batches cost what the curve says at the context they attend to (calibration measures how a batch's
cost grows with the context); --no-context prices every batch at the calibration's context instead.
`record` keeps each prompt's own answer budget unless --max-tokens is given; `replay --max-tokens N`
cuts the answers first, so one long recording answers for shorter ones too.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time


def record(args) -> None:
    from edgespec.bench import suite
    from edgespec.core.engine import generate
    from edgespec.machine import calibrate
    from edgespec.models import registry
    from edgespec.session.loading import load_pair, prompt_tokens
    from edgespec.session.options import GenOptions, LoadOptions
    from edgespec.session.runner import make_controller

    models = registry.resolve(registry.load_registry(), args.pair, None, None)
    if models.missing:
        sys.exit(f"missing models: {', '.join(m.name for m in models.missing)} (run `edgespec models pull NAME` first)")
    target, draft = load_pair(models.target, models.draft, LoadOptions())
    costs, _ = calibrate.load_or_measure(target, draft, 16)
    prompts = suite.select(suite.load_suite(args.prompts, args.suite), args.category)
    out = {"target": str(target.path), "draft": str(draft.path) if draft else None, "max_tokens": args.max_tokens,
           "suite": args.suite, "verify_s": {str(n): v for n, v in sorted(costs.verify.items())},
           "position": costs.position, "attend_s": costs.attend, "attend_base_s": costs.attend_base,
           "prompts": []}
    for p in prompts:
        tokens = prompt_tokens(target, p.prompt, system=p.system, turns=p.turns)
        budget = min(args.max_tokens or 10**9, p.max_tokens or 64) if args.max_tokens else (p.max_tokens or 64)
        target.rollback(0)
        t0, answer = time.perf_counter(), []
        ctl = make_controller(target, None, GenOptions(mode="plain"))
        for step in generate(target, None, tokens, max_tokens=budget, controller=ctl):
            answer += step.tokens
        print(f"{p.id}: {len(answer)} tokens in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        out["prompts"].append({"id": p.id, "category": p.category, "prompt": tokens, "answer": answer})
    with open(args.traces, "w") as f:
        json.dump(out, f)


def replay_cmd(args) -> None:
    from edgespec.bench.replay import costs_from_traces, oracle, replay, traces_from_bench
    from edgespec.core.policy import Controller

    data = json.load(open(args.traces))
    if "edgespec_bench" in data:
        try:
            data = traces_from_bench(data)
        except ValueError as e:
            sys.exit(f"{args.traces}: {e}")
    curve = data
    if args.curve:  # another machine's cost curve over these answers
        curve = json.load(open(args.curve))
        curve = traces_from_bench(curve) if "edgespec_bench" in curve else curve
    costs = costs_from_traces(curve, context=not args.no_context)
    rows, by_cat, versus = [], {}, []
    for p in data["prompts"]:
        answer = p["answer"][: args.max_tokens] if args.max_tokens else p["answer"]
        r = replay(p["prompt"], answer, costs,
                   make_controller=lambda c: Controller(c, mode="auto", has_model=False, k_max=args.k_max))
        best = oracle(p["prompt"], answer, costs, k_max=args.k_max)
        meas = p.get("measured", {}).get("auto") if not args.max_tokens and not args.curve else None
        rows.append((p["id"], r, best, meas))
        by_cat.setdefault(p["category"], []).append((r.speedup, best, meas))
        ng = None
        if args.versus_ngram:  # the context-only mode, which always drafts where there is a match
            ng = replay(p["prompt"], answer, costs,
                        make_controller=lambda c: Controller(c, mode="ngram", has_model=False, k_max=args.k_max)).speedup
            versus.append((r.speedup / ng, p["id"]))
        if args.details:
            hist = " ".join(f"{k}:{v}" for k, v in sorted(r.k_hist.items()))
            m = f"measured {meas:5.2f}x  " if meas is not None else ""
            n = f"ngram {ng:5.2f}x  " if ng is not None else ""
            print(f"{p['id']:28s} {m}auto {r.speedup:5.2f}x  {n}ceiling {best:5.2f}x  accepted {r.accepted}/{r.drafted}  k {hist}")
    budget = f"<= {args.max_tokens} tokens" if args.max_tokens else "as recorded"
    print(f"replay of {len(rows)} answers ({budget}, k <= {args.k_max}) with the cost curve of "
          + (f"{args.curve}" if args.curve else f"{data['target']}"))
    if costs.attend or costs.attend_base:
        print(f"each 1,000 tokens of context beyond {costs.position} add {costs.attend_base * 1e3:.1f} ms per batch "
              f"+ {(costs.attend or 0.0) * 1e3:.2f} ms per position")
    else:
        print(f"every batch priced at the calibration's context ({costs.position} tokens)")
    gm = lambda v: math.exp(sum(map(math.log, v)) / len(v))
    has_meas = all(m is not None for *_, m in rows) and rows
    print(f"{'category':10s} {'auto median':>12s} {'worst':>7s} {'ceiling median':>15s}"
          + (f" {'measured gm':>12s} {'ceiling gm':>11s} {'of ceiling':>10s}" if has_meas else ""))
    for cat, v in list(by_cat.items()) + [("all", [(r.speedup, b, m) for _, r, b, m in rows])]:
        a = [x for x, _, _ in v]
        line = f"{cat:10s} {statistics.median(a):12.3f} {min(a):7.3f} {statistics.median(b for _, b, _ in v):15.3f}"
        if has_meas:
            mg, cg = gm([m for *_, m in v]), gm([b for _, b, _ in v])
            line += f" {mg:12.3f} {cg:11.3f} {mg / cg:10.0%}"
        print(line)
    print(f"geometric means over all prompts: replayed auto {gm([r.speedup for _, r, _, _ in rows]):.3f}, "
          f"ceiling {gm([b for _, _, b, _ in rows]):.3f}" + (f", measured auto {gm([m for *_, m in rows]):.3f}" if has_meas else ""))
    if versus:
        behind = sorted(v for v in versus if v[0] < 1 - 1e-9)
        worst = ", ".join(f"{i} {x:.3f}" for x, i in behind[:5])
        print(f"replayed auto over replayed ngram: geometric mean {gm([x for x, _ in versus]):.3f}; "
              f"behind on {len(behind)} of {len(versus)}" + (f" (lowest: {worst})" if behind else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record", help="plain greedy answers + cost curve (needs the models)")
    rec.add_argument("traces")
    rec.add_argument("--pair", default=None)
    rec.add_argument("--suite", default="short", help="a shipped suite: short or edit")
    rec.add_argument("--prompts", default=None, help="a JSONL suite of your own instead")
    rec.add_argument("--category", action="append", default=[])
    rec.add_argument("--max-tokens", type=int, default=None, help="cap every answer (default: each prompt's own budget)")
    rep = sub.add_parser("replay", help="replay the controller against recorded answers (no models)")
    rep.add_argument("traces")
    rep.add_argument("--max-tokens", type=int, default=None, help="cut the recorded answers first")
    rep.add_argument("--k-max", type=int, default=64)
    rep.add_argument("--details", action="store_true")
    rep.add_argument("--no-context", action="store_true", help="price every batch at the calibration's context")
    rep.add_argument("--curve", default=None, help="price the steps with the cost curve of this trace or bench JSON instead")
    rep.add_argument("--versus-ngram", action="store_true", help="also replay the ngram mode and compare auto with it per prompt")
    args = ap.parse_args()
    record(args) if args.cmd == "record" else replay_cmd(args)


if __name__ == "__main__":
    main()
