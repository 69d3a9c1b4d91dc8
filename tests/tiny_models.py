"""Tiny random-weight llama GGUF models, written with the gguf package for tests.

A byte-level vocabulary (<unk>, <s>, </s> and the 256 byte tokens) means any text tokenizes,
and 2 layers x 64 dims load and decode in milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

N_EMBD = 64
N_FF = 128
N_HEAD = 4
N_HEAD_KV = 2
N_LAYER = 2
N_CTX_TRAIN = 2048

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def byte_vocab(swap: tuple[int, int] | None = None, extra: int = 0) -> tuple[list[str], list[int]]:
    """Token texts and types; `swap` exchanges two token texts, `extra` appends normal tokens."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256  # UNKNOWN, CONTROL, CONTROL, BYTE
    for i in range(extra):
        tokens.append(f"tok{i}")
        types.append(1)
    if swap:
        a, b = swap
        tokens[a], tokens[b] = tokens[b], tokens[a]
    return tokens, types


def make_weights(seed: int, n_vocab: int, scale: float = 1.0) -> dict[str, np.ndarray]:
    """Random weights; embeddings and output are large so that the argmax is rarely a near-tie."""
    rng = np.random.default_rng(seed)

    def w(*shape, std):
        return (rng.standard_normal(shape) * std * scale).astype(np.float32)

    t = {
        "token_embd.weight": w(n_vocab, N_EMBD, std=1.0),
        "output_norm.weight": np.ones(N_EMBD, dtype=np.float32),
        "output.weight": w(n_vocab, N_EMBD, std=0.5),
    }
    head_dim = N_EMBD // N_HEAD
    for i in range(N_LAYER):
        p = f"blk.{i}."
        t[p + "attn_norm.weight"] = np.ones(N_EMBD, dtype=np.float32)
        t[p + "attn_q.weight"] = w(N_EMBD, N_EMBD, std=0.2)
        t[p + "attn_k.weight"] = w(N_HEAD_KV * head_dim, N_EMBD, std=0.2)
        t[p + "attn_v.weight"] = w(N_HEAD_KV * head_dim, N_EMBD, std=0.2)
        t[p + "attn_output.weight"] = w(N_EMBD, N_EMBD, std=0.2)
        t[p + "ffn_norm.weight"] = np.ones(N_EMBD, dtype=np.float32)
        t[p + "ffn_gate.weight"] = w(N_FF, N_EMBD, std=0.2)
        t[p + "ffn_up.weight"] = w(N_FF, N_EMBD, std=0.2)
        t[p + "ffn_down.weight"] = w(N_EMBD, N_FF, std=0.2)
    return t


def perturb(weights: dict[str, np.ndarray], seed: int, amount: float) -> dict[str, np.ndarray]:
    """A draft that mostly agrees with the target: each weight gets relative noise of `amount`."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, a in weights.items():
        if name.endswith("norm.weight"):
            out[name] = a.copy()
        else:
            out[name] = (a + rng.standard_normal(a.shape).astype(np.float32) * a.std() * amount).astype(np.float32)
    return out


def write_model(
    path: Path,
    weights: dict[str, np.ndarray],
    tokens: list[str],
    types: list[int],
    *,
    chat_template: str | None = CHATML,
    bos: int = 1,
    eos: int = 2,
    name: str = "tiny",
) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(name)
    w.add_context_length(N_CTX_TRAIN)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(N_EMBD // N_HEAD)
    return _finish(w, path, weights, tokens, types, chat_template, bos, eos)


def _finish(w, path: Path, weights, tokens, types, chat_template, bos: int = 1, eos: int = 2) -> Path:
    """The part every tiny model shares: F32 weights, the byte tokenizer, the chat template, the file."""
    import gguf

    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_types(types)
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    w.add_add_bos_token(True)
    if chat_template:
        w.add_chat_template(chat_template)
    for name_, a in weights.items():
        w.add_tensor(name_, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_mamba(path: Path, tokens: list[str], types: list[int], seed: int = 5) -> Path:
    """A tiny Mamba (recurrent) model: its memory keeps a running state, so it cannot drop a tail."""
    import gguf

    v, e, inner, state, conv, rank = len(tokens), N_EMBD, 2 * N_EMBD, 16, 4, 4
    rng = np.random.default_rng(seed)

    def w(*shape, std=0.2):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    wr = gguf.GGUFWriter(str(path), "mamba")
    wr.add_name("tiny-mamba")
    wr.add_context_length(N_CTX_TRAIN)
    wr.add_embedding_length(e)
    wr.add_block_count(N_LAYER)
    wr.add_feed_forward_length(0)
    wr.add_head_count(0)
    wr.add_ssm_conv_kernel(conv)
    wr.add_ssm_inner_size(inner)
    wr.add_ssm_state_size(state)
    wr.add_ssm_time_step_rank(rank)
    wr.add_layer_norm_rms_eps(1e-5)
    t = {"token_embd.weight": w(v, e, std=1.0), "output_norm.weight": np.ones(e, np.float32), "output.weight": w(v, e, std=0.5)}
    for i in range(N_LAYER):
        p = f"blk.{i}."
        t.update({
            p + "attn_norm.weight": np.ones(e, np.float32), p + "ssm_in.weight": w(2 * inner, e),
            p + "ssm_conv1d.weight": w(inner, conv), p + "ssm_conv1d.bias": w(inner), p + "ssm_x.weight": w(rank + 2 * state, inner),
            p + "ssm_dt.weight": w(inner, rank), p + "ssm_dt.bias": w(inner), p + "ssm_a": -np.exp(w(inner, state)),
            p + "ssm_d": np.ones(inner, np.float32), p + "ssm_out.weight": w(e, inner),
        })
    return _finish(wr, path, t, tokens, types, CHATML)


def build_set(root: Path) -> dict[str, Path]:
    """The test models: target, a perturbed draft, a draft with a different tokenizer, a wider target and its
    narrower draft, a recurrent model, copies to corrupt."""
    root.mkdir(parents=True, exist_ok=True)
    tokens, types = byte_vocab()
    tw = make_weights(1234, len(tokens))
    paths = {
        "target": write_model(root / "target.gguf", tw, tokens, types, name="tiny-target"),
        "draft": write_model(root / "draft.gguf", perturb(tw, 99, 0.02), tokens, types, name="tiny-draft"),
        "self_draft": write_model(root / "self_draft.gguf", tw, tokens, types, name="tiny-self"),
    }
    # A target with 32 more (padding) tokens than its draft, as Qwen2.5 7B+ (152064 rows) beside 0.5B (151936).
    wide_tokens, wide_types = byte_vocab(extra=32)
    ww = make_weights(1234, len(wide_tokens))
    paths["wide_target"] = write_model(root / "wide_target.gguf", ww, wide_tokens, wide_types, name="tiny-wide")
    narrow = {k: (a[: len(tokens)] if k in ("token_embd.weight", "output.weight") else a) for k, a in perturb(ww, 98, 0.02).items()}
    paths["narrow_draft"] = write_model(root / "narrow_draft.gguf", narrow, tokens, types, name="tiny-narrow")
    # A chat template that refuses a system message, as Gemma's and some Mistral templates do.
    strict = ("{% for message in messages %}{% if message['role'] == 'system' %}"
              "{{ raise_exception('System role not supported') }}{% endif %}{% endfor %}" + CHATML)
    paths["strict_template"] = write_model(root / "strict_template.gguf", tw, tokens, types, chat_template=strict, name="tiny-strict")
    paths["mamba"] = write_mamba(root / "mamba.gguf", tokens, types)
    other_tokens, other_types = byte_vocab(swap=(100, 101))
    paths["other_vocab"] = write_model(root / "other_vocab.gguf", tw, other_tokens, other_types, name="tiny-other")
    raw = paths["target"].read_bytes()
    (root / "truncated.gguf").write_bytes(raw[: len(raw) * 2 // 3])
    paths["truncated"] = root / "truncated.gguf"
    (root / "not_a_model.gguf").write_text("this is not a model\n")
    paths["not_gguf"] = root / "not_a_model.gguf"
    return paths
