"""Measuring what speculation costs on this machine, and remembering it.

`measure` times a target decode of n positions (logits at each) for n = 1..k_max+1 and one
draft-model token, at a realistic context length, and a few sizes again after a longer context
(what a batch gains in cost per 1,000 tokens of context: long answers verify their drafts there). Results are cached on disk, keyed by the model
files, backend settings, threads and context bucket; the controller refreshes them from real steps
and `save` writes the refreshed numbers back.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from edgespec.core.policy import MODEL_EDGES, MODEL_PRIOR, Acceptance, Costs
from edgespec.models.cache import cache_dir

SIZES = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32, 48, 64)
GROWTH_SIZES = (1, 4, 16, 32)  # timed again after a longer context
LONG_CONTEXT = 1024  # ... of this many tokens (or what the context allows)
_FILLER = (
    "def merge_sorted(a, b):\n    out = []\n    i = j = 0\n    while i < len(a) and j < len(b):\n"
    "        if a[i] <= b[j]:\n            out.append(a[i]); i += 1\n        else:\n            out.append(b[j]); j += 1\n"
    "    return out + a[i:] + b[j:]\n\nThe function merges two sorted lists in linear time. "
)


# For the draft model's acceptance prior: varied text (prose, code, data), not the repetitive filler.
_SAMPLE = (
    "The service keeps a small cache in front of the database. When a request arrives, it first checks "
    "whether the key is present and fresh; otherwise it loads the row, stores it with a timestamp and "
    "returns it.\n\n```python\ndef get_user(db, cache, user_id, ttl=300):\n    hit = cache.get(user_id)\n"
    "    if hit and time.time() - hit[1] < ttl:\n        return hit[0]\n    row = db.fetch_one(\"SELECT * FROM users "
    "WHERE id = ?\", (user_id,))\n    cache[user_id] = (row, time.time())\n    return row\n```\n\n"
    'Example response: {"id": 42, "name": "Ada Lovelace", "roles": ["admin", "editor"], "active": true}\n'
)


def _key(target, draft) -> str:
    import llama_cpp

    parts = [llama_cpp.__version__]
    for m in (target, draft):
        if m is None:
            parts.append("-")
            continue
        st = os.stat(m.path)
        parts += [str(Path(m.path).resolve()), str(st.st_size), str(int(st.st_mtime)), str(m.n_gpu_layers), str(m.n_threads)]
    bucket = 1 << max(0, (target.n_ctx - 1).bit_length())  # context size bucket (power of two)
    parts.append(str(bucket))
    parts.append("fa:" + str(getattr(target, "flash_attn", "auto")))  # the attention kernel changes the curve
    amx = (getattr(target, "cpu_paths", None) or {}).get("amx")
    if amx:  # the AMX kernels have a cost curve of their own
        parts.append("amx")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def _path() -> Path:
    return cache_dir() / "calibration.json"


def _read_all() -> dict:
    try:
        return json.loads(_path().read_text())
    except (OSError, ValueError):
        return {}


def plausible(verify: dict[int, float]) -> bool:
    """Whether a saved curve can be a machine's: two positions never cost three single steps (a
    curve refreshed by an earlier edgespec could drift that far; it is measured again)."""
    one, two = verify.get(1), verify.get(2)
    return bool(one and one > 0 and (two is None or two <= 3 * one))


def load(target, draft) -> Costs | None:
    entry = _read_all().get(_key(target, draft))
    if not entry:
        return None
    verify = {int(n): v for n, v in entry["verify"].items()}
    if not plausible(verify):
        return None
    return Costs(verify=verify, draft_token=entry.get("draft_token"), draft_agreement=entry.get("draft_agreement"),
                 position=int(entry.get("position", 256)), attend=entry.get("attend"), attend_base=entry.get("attend_base", 0.0))


def save(target, draft, costs: Costs) -> None:
    """Write (refreshed) costs for this pair; a failure to write the cache is not worth an error."""
    data = _read_all()
    now = costs.snapshot()  # at the machine's speed now
    data[_key(target, draft)] = {
        "target": str(target.path), "draft": str(draft.path) if draft is not None else None,
        "verify": {str(n): v for n, v in now["verify"].items()}, "draft_token": now["draft_token"],
        "draft_agreement": costs.draft_agreement, "position": now["position"], "attend": now["attend"], "attend_base": now["attend_base"],
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    try:
        _path().parent.mkdir(parents=True, exist_ok=True)
        tmp = _path().with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, _path())
    except OSError:
        pass


def measure(target, draft, k_max: int = 64, reps: int = 4, position: int | None = None) -> Costs:
    """Time target decodes of n positions and draft tokens at a context of `position` tokens."""
    filler = target.tokenize(_FILLER * 40, add_special=False)
    position = position or min(256, target.n_ctx // 4)
    need = k_max + 1
    sizes = sorted({s for s in SIZES if s <= need} | {need})
    base = filler[: min(position, target.n_ctx - need - 1)]
    batch = filler[len(base) : len(base) + need]

    target.rollback(0)
    target.eval(base, logits="none")
    target.eval(batch[:1], logits="all")  # warm-up
    times: dict[int, list[float]] = {n: [] for n in sizes}
    for r in range(reps):
        for n in sizes:
            if n > 17 and r >= max(2, reps // 2):  # large batches vary less and cost more: half the repetitions
                continue
            target.rollback(len(base))
            t0 = time.perf_counter()
            target.eval(batch[:n], logits="all")
            times[n].append(time.perf_counter() - t0)
    # The minimum over repetitions: on a busy machine noise only ever adds time. No batch can cost
    # less than a single token, whatever a noisy sample says.
    verify = {n: min(v) for n, v in times.items()}
    costs = Costs(verify={n: max(v, verify[1]) for n, v in verify.items()}, position=len(base))
    costs.attend_base, costs.attend = _attend(target, filler, len(base), need)
    target.rollback(0)

    if draft is not None:
        draft.rollback(0)
        draft.eval(base, logits="none")
        per = []
        for t in batch[: 2 + 4 * reps]:
            t0 = time.perf_counter()
            draft.eval([t], logits="last")
            per.append(time.perf_counter() - t0)
        costs.draft_token = min(per[2:])  # the first two warm the draft up
        draft.rollback(0)
        costs.draft_agreement = agreement(target, draft, chunk=need)
    return costs


def _attend(target, filler: list[int], position: int, need: int) -> tuple[float, float]:
    """(per batch, per position): seconds a batch gains per 1,000 tokens of context. A few sizes are
    timed after `position` tokens (the cache holds them already) and again after LONG_CONTEXT, the
    two sets close together in time (a machine whose speed drifts does not pass for a context that
    costs more), and a line fitted through the differences by size (fit_attend). (0, 0) where the
    context has no room for a longer one."""
    far = min(LONG_CONTEXT, target.n_ctx - need - 1, len(filler) - need)
    if far < position + 256:
        return 0.0, 0.0
    sizes = [s for s in GROWTH_SIZES if s <= need]

    def timed(at: int) -> dict[int, float]:
        batch, out = filler[at : at + max(sizes)], {}
        for n in sizes:
            best = float("inf")
            for _ in range(3 if n <= 16 else 2):
                target.rollback(at)
                t0 = time.perf_counter()
                target.eval(batch[:n], logits="all")
                best = min(best, time.perf_counter() - t0)
            out[n] = best
        return out

    target.rollback(position)
    near = timed(position)
    target.rollback(position)
    target.eval(filler[position:far], logits="none")
    farther = timed(far)
    return fit_attend({n: (farther[n] - near[n]) * 1000.0 / (far - position) for n in sizes})


def fit_attend(extra: dict[int, float]) -> tuple[float, float]:
    """The least-squares line a + b * n through what each size n gained (seconds per 1,000 tokens of
    context), with a, b >= 0: more context never makes a batch cheaper, whatever noise says."""
    ns, es = list(extra), list(extra.values())
    if len(ns) < 2:
        return 0.0, max(0.0, es[0] / ns[0]) if ns else 0.0
    mn, me = sum(ns) / len(ns), sum(es) / len(es)
    var = sum((n - mn) ** 2 for n in ns)
    b = sum((n - mn) * (e - me) for n, e in zip(ns, es)) / var
    a = me - b * mn
    if b < 0:
        return max(0.0, me), 0.0
    if a < 0:
        return 0.0, max(0.0, sum(n * e for n, e in zip(ns, es)) / sum(n * n for n in ns))
    return a, b


def agreement(target, draft, chunk: int = 17) -> list[list[int]]:
    """[hits, tries] per MODEL_EDGES bucket: at each position of a sample text (the true prefix fed to
    both models), whether the draft's greedy token is the target's, bucketed by the draft's own
    probability of it. That is the acceptance of a one-token greedy draft there.

    Fed in batches of `chunk` positions, the size the memory plan allows logits for.
    """
    tokens = target.tokenize(_SAMPLE, add_special=True)[:96]
    seen = Acceptance(edges=MODEL_EDGES, prior=MODEL_PRIOR)  # counts hits and tries by bucket
    target.rollback(0)
    draft.rollback(0)
    for start in range(0, len(tokens), chunk):
        part = tokens[start : start + chunk]
        t = np.argmax(target.eval(part, logits="all"), axis=1)
        rows = draft.eval(part, logits="all")
        d = np.argmax(rows, axis=1)
        top = rows[np.arange(len(part)), d].astype(np.float64)
        q = 1.0 / np.exp(rows.astype(np.float64) - top[:, None]).sum(axis=1)  # the draft's probability of d
        for hit, conf in zip(t == d, q):
            seen.update([conf], int(hit))
    target.rollback(0)
    draft.rollback(0)
    return [[int(h), int(n)] for h, n in zip(seen.hits, seen.tries)]


def load_or_measure(target, draft, k_max: int = 64) -> tuple[Costs, bool]:
    """(costs, measured_now): cached costs when this pair and setting were calibrated before."""
    cached = load(target, draft)
    if (cached is not None and (k_max + 1) <= max(cached.verify) and cached.attend is not None
            and (draft is None or (cached.draft_token and cached.draft_agreement))):
        return cached, False
    costs = measure(target, draft, k_max)
    save(target, draft, costs)
    return costs, True
