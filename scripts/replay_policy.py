"""Record greedy answers for a bench suite once, then replay n-gram policies against them in seconds.

    python scripts/replay_policy.py record traces.json [--suite short|edit] [--pair NAME] [--max-tokens N] [--category C]
    python scripts/replay_policy.py replay traces.json [--max-tokens N] [--k-max 64] [--details]

`record` loads the target (plain greedy decoding), writes every prompt's tokens and answer, and the
pair's calibrated cost curve (measured now if not cached). `replay` needs no model: for each prompt
it prints the speed-up the current controller would reach over plain decoding (edgespec.bench.replay), and
the ceiling any policy could reach with the same n-gram drafter if it knew in advance how far each
lookup would be right. `record` keeps each prompt's own answer budget unless --max-tokens is given;
`replay --max-tokens N` cuts the answers first, so one long recording answers for shorter ones too.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

from edgespec.core.policy import Costs


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
           "suite": args.suite, "verify_s": {str(n): v for n, v in sorted(costs.verify.items())}, "prompts": []}
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
    from edgespec.bench.replay import oracle, replay

    from edgespec.core.policy import Controller

    data = json.load(open(args.traces))
    costs = Costs({int(n): v for n, v in data["verify_s"].items()})
    rows, by_cat = [], {}
    for p in data["prompts"]:
        answer = p["answer"][: args.max_tokens] if args.max_tokens else p["answer"]
        r = replay(p["prompt"], answer, costs, make_controller=lambda c: Controller(c, mode="auto", has_model=False, k_max=args.k_max))
        best = oracle(p["prompt"], answer, costs, k_max=args.k_max)
        rows.append((p["id"], r, best))
        by_cat.setdefault(p["category"], []).append((r.speedup, best))
        if args.details:
            hist = " ".join(f"{k}:{v}" for k, v in sorted(r.k_hist.items()))
            print(f"{p['id']:28s} auto {r.speedup:5.2f}x  ceiling {best:5.2f}x  accepted {r.accepted}/{r.drafted}  k {hist}")
    budget = f"<= {args.max_tokens} tokens" if args.max_tokens else "as recorded"
    print(f"replay of {len(rows)} answers ({budget}, k <= {args.k_max}) with the cost curve of {data['target']}")
    print(f"{'category':10s} {'auto median':>12s} {'worst':>7s} {'ceiling median':>15s}")
    gm = lambda v: math.exp(sum(map(math.log, v)) / len(v))
    for cat, v in by_cat.items():
        a = [x for x, _ in v]
        print(f"{cat:10s} {statistics.median(a):12.3f} {min(a):7.3f} {statistics.median(b for _, b in v):15.3f}")
    a = [r.speedup for _, r, _ in rows]
    print(f"{'all':10s} {statistics.median(a):12.3f} {min(a):7.3f} {statistics.median(b for _, _, b in rows):15.3f}"
          f"   (geometric means: auto {gm(a):.3f}, ceiling {gm([b for _, _, b in rows]):.3f})")


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
    args = ap.parse_args()
    record(args) if args.cmd == "record" else replay_cmd(args)


if __name__ == "__main__":
    main()
