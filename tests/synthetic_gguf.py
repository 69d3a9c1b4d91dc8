"""GGUF headers of made-up models of any size, written with the gguf package for planner tests.

Only the header (metadata and tensor table) is written, so a "32B model" takes a few hundred kB; the
tensor sizes come from the gguf package's own quantisation table, not from edgespec's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def nbytes(qtype, n_elements: int) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    assert n_elements % block == 0
    return n_elements // block * size


def write_header(
    path: Path,
    *,
    arch: str = "llama",
    n_layer: int = 4,
    n_embd: int = 256,
    n_ff: int = 512,
    n_head: int = 4,
    n_head_kv: int = 2,
    head_dim: int | None = None,
    n_vocab: int = 1024,
    n_ctx_train: int = 4096,
    qtype: str = "Q4_K",
    embd_type: str = "Q8_0",
    tied: bool = False,
    tokens: list[str] | None = None,
    tokenizer: str = "gpt2",
    bos: int = 1,
    eos: int = 2,
    data: bool = False,
) -> Path:
    """A GGUF with a llama-shaped tensor table. data=False stops after the tensor table."""
    import gguf

    Q = gguf.GGMLQuantizationType
    q, qe = Q[qtype], Q[embd_type]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(path.stem)
    w.add_context_length(n_ctx_train)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    if head_dim is not None:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M if qtype == "Q4_K" else gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model(tokenizer)
    toks = tokens if tokens is not None else [f"t{i}" for i in range(n_vocab)]
    w.add_token_list(toks)
    w.add_token_types([1] * len(toks))
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    w.add_chat_template("{{ messages }}")
    hd = head_dim or n_embd // n_head
    shapes = {"token_embd.weight": ((len(toks), n_embd), qe), "output_norm.weight": ((n_embd,), Q.F32)}
    if not tied:
        shapes["output.weight"] = ((len(toks), n_embd), Q.Q6_K if n_embd % 256 == 0 else qe)
    for i in range(n_layer):
        p = f"blk.{i}."
        shapes[p + "attn_norm.weight"] = ((n_embd,), Q.F32)
        shapes[p + "attn_q.weight"] = ((n_head * hd, n_embd), q)
        shapes[p + "attn_k.weight"] = ((n_head_kv * hd, n_embd), q)
        shapes[p + "attn_v.weight"] = ((n_head_kv * hd, n_embd), q)
        shapes[p + "attn_output.weight"] = ((n_embd, n_head * hd), q)
        shapes[p + "ffn_norm.weight"] = ((n_embd,), Q.F32)
        shapes[p + "ffn_gate.weight"] = ((n_ff, n_embd), q)
        shapes[p + "ffn_up.weight"] = ((n_ff, n_embd), q)
        shapes[p + "ffn_down.weight"] = ((n_embd, n_ff), q)
    sizes = {}
    for name, (shape, t) in shapes.items():
        n = int(np.prod(shape))
        sizes[name] = nbytes(t, n)
        w.add_tensor_info(name, shape, np.float32, sizes[name], raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    if data:
        # zero-filled tensor data, aligned as GGUF wants
        with open(path, "ab") as f:
            pos = f.tell()
            for name in shapes:
                pad = (-pos) % 32
                f.write(b"\0" * pad)
                f.write(b"\0" * sizes[name])
                pos += pad + sizes[name]
    w.close()
    return path
