"""Record greedy answers for a bench suite once, then replay n-gram policies against them in seconds.

    python scripts/replay_policy.py record traces.json [--pair NAME] [--max-tokens 256] [--category C]
    python scripts/replay_policy.py replay traces.json [--max-tokens 64] [--details]

`record` loads the target (plain greedy decoding), writes every prompt's tokens and answer, and the
pair's calibrated cost curve (measured now if not cached). `replay` needs no model: for each prompt
it prints the speed-up the current controller would reach over plain decoding (edgespec.bench.replay), and
the ceiling any policy could reach with the same n-gram drafter if it knew in advance how far each
lookup would be right. Answers are cut to --max-tokens before replaying, so one recording at 256
tokens answers for 64 and 128 too.
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
    prompts = suite.select(suite.load_suite(args.prompts), args.category)
    out = {"target": str(target.path), "draft": str(draft.path) if draft else None, "max_tokens": args.max_tokens,
           "verify_s": {str(n): v for n, v in sorted(costs.verify.items())}, "prompts": []}
    for p in prompts:
        tokens = prompt_tokens(target, p.prompt, system=p.system)
        target.rollback(0)
        t0, answer = time.perf_counter(), []
        ctl = make_controller(target, None, GenOptions(mode="plain"))
        for step in generate(target, None, tokens, max_tokens=args.max_tokens, controller=ctl):
            answer += step.tokens
        print(f"{p.id}: {len(answer)} tokens in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        out["prompts"].append({"id": p.id, "category": p.category, "prompt": tokens, "answer": answer})
    with open(args.traces, "w") as f:
        json.dump(out, f)


def replay_cmd(args) -> None:
    from edgespec.bench.replay import oracle, replay

    data = json.load(open(args.traces))
    costs = Costs({int(n): v for n, v in data["verify_s"].items()})
    rows, by_cat = [], {}
    for p in data["prompts"]:
        answer = p["answer"][: args.max_tokens]
        r = replay(p["prompt"], answer, costs)
        best = oracle(p["prompt"], answer, costs)
        rows.append((p["id"], r, best))
        by_cat.setdefault(p["category"], []).append((r.speedup, best))
        if args.details:
            hist = " ".join(f"{k}:{v}" for k, v in sorted(r.k_hist.items()))
            print(f"{p['id']:28s} auto {r.speedup:5.2f}x  ceiling {best:5.2f}x  accepted {r.accepted}/{r.drafted}  k {hist}")
    print(f"replay of {len(rows)} answers (<= {args.max_tokens} tokens) with the cost curve of {data['target']}")
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
    rec.add_argument("--prompts", default=None, help="a JSONL suite (default: the shipped one)")
    rec.add_argument("--category", action="append", default=[])
    rec.add_argument("--max-tokens", type=int, default=256)
    rep = sub.add_parser("replay", help="replay the controller against recorded answers (no models)")
    rep.add_argument("traces")
    rep.add_argument("--max-tokens", type=int, default=64)
    rep.add_argument("--details", action="store_true")
    args = ap.parse_args()
    record(args) if args.cmd == "record" else replay_cmd(args)


if __name__ == "__main__":
    main()
