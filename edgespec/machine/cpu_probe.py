"""The CPU probe's child process: can llama.cpp decode with its default CPU weight paths here?

Writes a tiny quantised llama model (Q8_0 and Q4_0 matrices shaped for llama.cpp's AMX kernels:
rows and row lengths multiples of 32), loads it with llama.cpp's default model parameters (extra
buffer types on, so AMX where offered), decodes a 16-token batch and a few single tokens, and prints
one JSON line. If the AMX kernels fault, this process dies instead of the user's
(edgespec.cpu_paths runs it and reads its fate).
"""

from __future__ import annotations

import ctypes
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgespec.llama import gguf_write

N_EMBD, N_FF, N_HEAD, N_LAYER = 128, 256, 4, 2
N_VOCAB = 288  # 3 control + 256 byte tokens + 29 more: a multiple of 32, so the output matrix qualifies too


def write_model(path: Path) -> Path:
    rng = np.random.default_rng(7)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + [f"t{i}" for i in range(N_VOCAB - 259)]
    types = [2, 3, 3] + [6] * 256 + [1] * (N_VOCAB - 259)
    meta = {
        "general.architecture": "llama", "general.name": "edgespec-cpu-probe", "general.alignment": gguf_write.ALIGNMENT,
        "llama.context_length": 256, "llama.embedding_length": N_EMBD, "llama.block_count": N_LAYER,
        "llama.feed_forward_length": N_FF, "llama.attention.head_count": N_HEAD, "llama.attention.head_count_kv": N_HEAD,
        "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.rope.dimension_count": N_EMBD // N_HEAD,
        "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.scores": np.zeros(N_VOCAB, np.float32),
        "tokenizer.ggml.token_type": np.array(types, np.int32), "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
    }

    def w(*shape):
        return rng.standard_normal(shape).astype(np.float32) * 0.1

    ones = np.ones(N_EMBD, dtype=np.float32)
    F32, Q8, Q4 = gguf_write.F32, gguf_write.Q8_0, gguf_write.Q4_0
    tensors = {"token_embd.weight": (w(N_VOCAB, N_EMBD), Q8), "output_norm.weight": (ones, F32),
               "output.weight": (w(N_VOCAB, N_EMBD), Q8)}
    for i in range(N_LAYER):
        p = f"blk.{i}."
        tensors.update({
            p + "attn_norm.weight": (ones, F32), p + "ffn_norm.weight": (ones, F32),
            p + "attn_q.weight": (w(N_EMBD, N_EMBD), Q8), p + "attn_k.weight": (w(N_EMBD, N_EMBD), Q8),
            p + "attn_v.weight": (w(N_EMBD, N_EMBD), Q8), p + "attn_output.weight": (w(N_EMBD, N_EMBD), Q8),
            p + "ffn_gate.weight": (w(N_FF, N_EMBD), Q4), p + "ffn_up.weight": (w(N_FF, N_EMBD), Q4),
            p + "ffn_down.weight": (w(N_EMBD, N_FF), Q4),
        })
    return gguf_write.write(path, meta, tensors)


def probe(n_threads: int) -> dict:
    import llama_cpp as lc

    log: list[str] = []

    @lc.llama_log_callback
    def keep(level, text, user_data):  # pragma: no cover - called from C
        log.append(text.decode("utf-8", "replace") if text else "")

    lc.llama_log_set(keep, ctypes.c_void_p(0))
    lc.llama_backend_init()
    with tempfile.TemporaryDirectory(prefix="edgespec-probe-") as tmp:
        path = write_model(Path(tmp) / "probe.gguf")
        model = lc.llama_model_load_from_file(str(path).encode(), lc.llama_model_default_params())
        if not model:
            raise RuntimeError("llama.cpp could not load the probe model")
        cp = lc.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch = 256, 32, 32
        cp.n_threads = cp.n_threads_batch = n_threads
        ctx = lc.llama_init_from_model(model, cp)
        if not ctx:
            raise RuntimeError("llama.cpp could not create a context for the probe model")
        batch = lc.llama_batch_init(32, 0, 1)
        try:
            pos = 0
            for chunk in (list(range(3, 19)), [40], [41], [42]):  # a batch (matrix kernels), then single tokens
                for i, t in enumerate(chunk):
                    batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = t, pos + i, 1, 1
                    batch.seq_id[i][0] = 0
                batch.n_tokens = len(chunk)
                if lc.llama_decode(ctx, batch) != 0:
                    raise RuntimeError("llama_decode failed on the probe model")
                rows = np.ctypeslib.as_array(lc.llama_get_logits(ctx), shape=(len(chunk), N_VOCAB))
                if not np.isfinite(rows).all():
                    raise RuntimeError("the probe model's logits are not finite")
                pos += len(chunk)
        finally:
            lc.llama_batch_free(batch)
            lc.llama_free(ctx)
            lc.llama_model_free(model)
    text = "".join(log)
    return {"ok": True, "amx_used": "AMX model buffer" in text, "repack_used": "CPU_REPACK model buffer" in text}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    n_threads = int(args[0]) if args else 2
    try:
        result = probe(n_threads)
    except Exception as e:  # a failure that is not a crash still means "do not trust the default path"
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 3
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
