"""What the server costs on top of the engine, and a suite through the server as an editor sends it.

    python scripts/serve_bench.py overhead [--suite short] [--pair NAME] [--json out.json]
    python scripts/serve_bench.py suite [--suite edit] [--category C] [--pair NAME] [--json out.json]

`overhead` starts `edgespec serve` and, prompt by prompt, sends the prompt as a streamed chat request
and runs `edgespec run --json` on it (greedy, the prompt's budget): time to first token and decode
tokens/s as the client sees them, against the engine's own figures in `run` (which exclude model
loading). `suite` sends every prompt of a suite to the server (earlier turns included), streamed,
and reports per prompt what the client saw and what the server says speculation did.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def start_server(args, env) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "edgespec", "serve", "--port", "0", *args]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = []
    ready = threading.Event()

    def read():
        for line in proc.stderr:
            sys.stderr.write(line)
            if "listening on http://" in line:
                url.append(line.split("listening on ", 1)[1].split()[0])
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    ready.wait(600)
    if not url:
        sys.exit("the server did not start")
    while httpx.get(url[0] + "/health", timeout=10).status_code != 200:
        time.sleep(0.5)
    return proc, url[0]


def stream_chat(url: str, messages: list[dict], max_tokens: int) -> dict:
    """One streamed request: time to the first content, decode tokens/s after it, the server's figures."""
    body = {"model": None, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    body.pop("model")
    t0 = time.perf_counter()
    first = last = None
    usage, spec, text = None, None, []
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=900) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage, spec = chunk["usage"], chunk.get("edgespec")
            for c in chunk.get("choices", []):
                piece = c.get("delta", {}).get("content")
                if piece:
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    text.append(piece)
    n = usage["completion_tokens"]
    return {"ttft_s": first - t0 if first else None, "decode_tokens_per_s": (n - 1) / (last - first) if first and last > first else None,
            "completion_tokens": n, "prompt_tokens": usage["prompt_tokens"],
            "cached_tokens": usage["prompt_tokens_details"]["cached_tokens"], "edgespec": spec, "text": "".join(text)}


def run_json(args: list[str], prompt, env) -> dict:
    p = subprocess.run([sys.executable, "-m", "edgespec", "run", "--json", "--temp", "0", *args, prompt.prompt],
                       env=env, capture_output=True, timeout=900)
    if p.returncode:
        sys.exit(p.stderr.decode())
    return json.loads(p.stdout)


def overhead(a, env) -> dict:
    from edgespec.bench import suite as S

    prompts = S.load_suite(name=a.suite)
    model_args = ["--pair", a.pair] if a.pair else []
    proc, url = start_server(model_args, env)
    rows = []
    try:
        for p in prompts:
            if p.turns or p.system:
                continue  # `run` takes one message
            budget = p.max_tokens or 64
            served = stream_chat(url, p.messages(), budget)
            ran = run_json([*model_args, "-n", str(budget)], p, env)
            rows.append({"prompt": p.id, "server": {k: v for k, v in served.items() if k != "text"},
                         "run": {k: ran[k] for k in ("time_to_first_token_s", "decode_tokens_per_s", "generated_tokens", "prompt_tokens")},
                         "same_text": served["text"] == ran["text"]})
            print(f"{p.id:28s} ttft server {served['ttft_s']:.3f} s run {ran['time_to_first_token_s']:.3f} s · decode server "
                  f"{served['decode_tokens_per_s']:.1f} run {ran['decode_tokens_per_s']:.1f} tok/s · same text {rows[-1]['same_text']}", flush=True)
    finally:
        proc.terminate()
        proc.wait(60)
    ttft = [r["server"]["ttft_s"] / r["run"]["time_to_first_token_s"] for r in rows]
    dec = [r["server"]["decode_tokens_per_s"] / r["run"]["decode_tokens_per_s"] for r in rows if r["server"]["decode_tokens_per_s"]]
    summary = {"prompts": len(rows), "ttft_ratio_median": statistics.median(ttft), "decode_ratio_median": statistics.median(dec),
               "same_text": sum(r["same_text"] for r in rows)}
    print(json.dumps(summary))
    return {"summary": summary, "rows": rows}


def through_server(a, env) -> dict:
    from edgespec.bench import suite as S

    prompts = S.select(S.load_suite(name=a.suite), a.category)
    proc, url = start_server(["--pair", a.pair] if a.pair else [], env)
    rows = []
    try:
        for p in prompts:
            served = stream_chat(url, p.messages(), p.max_tokens or 64)
            rows.append({"prompt": p.id, "category": p.category, **{k: v for k, v in served.items() if k != "text"}})
            s = served["edgespec"]
            print(f"{p.id:28s} ttft {served['ttft_s']:.2f} s · decode {served['decode_tokens_per_s']:.1f} tok/s (client) "
                  f"{s['decode_tokens_per_s']:.1f} (server) · accepted {s['accepted']}/{s['drafted']} · cached {served['cached_tokens']}", flush=True)
    finally:
        proc.terminate()
        proc.wait(60)
    return {"rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["overhead", "suite"])
    ap.add_argument("--suite", default=None)
    ap.add_argument("--pair", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--category", action="append", default=[], help="suite: only these categories")
    a = ap.parse_args()
    a.suite = a.suite or ("short" if a.what == "overhead" else "edit")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    out = overhead(a, env) if a.what == "overhead" else through_server(a, env)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
