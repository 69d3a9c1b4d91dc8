"""Reading GGUF headers without loading weights: metadata, tensor table, sizes, pairing."""

from __future__ import annotations

import pytest

import synthetic_gguf
import tiny_models
from edgespec.llama import gguf_read as gguf_info
from edgespec.llama.pairing import check_pairing, pairing_problem
from edgespec.errors import IncompatibleModelsError


def test_tables_match_the_gguf_package():
    import gguf

    for t in gguf.GGMLQuantizationType:
        assert t.value in gguf_info.GGML_TYPES, t
        name, block, size = gguf_info.GGML_TYPES[t.value]
        assert (name, (block, size)) == (t.name, gguf.GGML_QUANT_SIZES[t])
    for ft in gguf.LlamaFileType:
        if ft.name != "GUESSED":
            assert gguf_info.FILE_TYPES[ft.value] == ft.name.replace("MOSTLY_", "").replace("ALL_", ""), ft


def test_reads_a_tiny_model(tiny):
    info = gguf_info.read(tiny["target"])
    assert info.arch == "llama" and info.name == "tiny-target"
    assert (info.n_layer, info.n_embd, info.n_ff, info.n_head) == (tiny_models.N_LAYER, tiny_models.N_EMBD, tiny_models.N_FF, tiny_models.N_HEAD)
    assert info.n_head_kv_per_layer() == [tiny_models.N_HEAD_KV] * tiny_models.N_LAYER
    assert info.head_dim_k == tiny_models.N_EMBD // tiny_models.N_HEAD
    assert info.context_length == tiny_models.N_CTX_TRAIN and info.vocab_size == 259
    assert info.has_chat_template and info.file_type == "F32" and (info.bos, info.eos) == (1, 2)
    weights = tiny_models.make_weights(1234, 259)
    assert info.n_params == sum(a.size for a in weights.values())
    assert info.tensor_bytes == sum(a.nbytes for a in weights.values())
    assert info.data_end == info.file_size  # every byte accounted for
    info.check_complete()
    assert sum(info.layer_bytes()) + info.input_bytes() + info.output_bytes() == info.tensor_bytes


def test_quantised_tensor_sizes_and_layers(tmp_path):
    p = synthetic_gguf.write_header(tmp_path / "q.gguf", n_layer=3, n_embd=256, n_ff=512, data=True)
    info = gguf_info.read(p)
    info.check_complete()
    q = info.tensor("blk.1.ffn_up.weight")
    assert q.type_name == "Q4_K" and q.shape == (256, 512) and q.layer == 1
    assert q.nbytes == synthetic_gguf.nbytes(12, 256 * 512)
    assert info.tensor("token_embd.weight").type_name == "Q8_0" and info.tensor("output.weight").type_name == "Q6_K"
    assert len(info.layer_bytes()) == 3 and len(set(info.layer_bytes())) == 1
    assert info.file_type == "Q4_K_M" and 4 < info.bits_per_weight < 8


def test_tokens_only_when_asked(tiny):
    assert gguf_info.read(tiny["target"]).tokens is None
    toks = gguf_info.read(tiny["target"], tokens=True).tokens
    assert len(toks) == 259 and toks[:3] == [b"<unk>", b"<s>", b"</s>"] and toks[3] == b"<0x00>"


def test_bad_files_fail_with_one_line(tiny, tmp_path):
    with pytest.raises(gguf_info.GGUFError, match="not a GGUF file"):
        gguf_info.read(tiny["not_gguf"])
    info = gguf_info.read(tiny["truncated"])  # header intact, data cut
    with pytest.raises(gguf_info.GGUFError, match="truncated"):
        info.check_complete()
    raw = open(tiny["target"], "rb").read()
    (tmp_path / "cut.gguf").write_bytes(raw[:200])  # inside the metadata
    with pytest.raises(gguf_info.GGUFError, match="truncated or corrupt"):
        gguf_info.read(tmp_path / "cut.gguf")
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(gguf_info.GGUFError):
        gguf_info.read(tmp_path / "empty.gguf")
    with pytest.raises(gguf_info.GGUFError, match="not found"):
        gguf_info.read(tmp_path / "nope.gguf")
    for e in ("truncated", "not_gguf"):
        try:
            gguf_info.read(tiny[e]).check_complete()
        except gguf_info.GGUFError as err:
            assert "\n" not in err.line()


def test_pairing_from_metadata_agrees_with_loaded_models(tiny, load):
    from edgespec.llama.pairing import check_pairing as check_compatible

    t = gguf_info.read(tiny["target"], tokens=True)
    for name, ok in (("draft", True), ("self_draft", True), ("other_vocab", False)):
        d = gguf_info.read(tiny[name], tokens=True)
        problem = pairing_problem(t, d)
        try:
            check_compatible(load("target"), load(name))
            loaded_ok = True
        except IncompatibleModelsError:
            loaded_ok = False
        assert (problem is None) == ok == loaded_ok, (name, problem)
    problem = pairing_problem(t, gguf_info.read(tiny["other_vocab"], tokens=True))
    assert problem.startswith("tokenizers differ at token 100")


def test_pairing_rejects_other_vocabularies(tmp_path):
    a = gguf_info.read(synthetic_gguf.write_header(tmp_path / "a.gguf", n_vocab=1024), tokens=True)
    b = gguf_info.read(synthetic_gguf.write_header(tmp_path / "b.gguf", n_vocab=1024 + 64), tokens=True)
    c = gguf_info.read(synthetic_gguf.write_header(tmp_path / "c.gguf", n_vocab=2048), tokens=True)
    d = gguf_info.read(synthetic_gguf.write_header(tmp_path / "d.gguf", n_vocab=1024, eos=5), tokens=True)
    e = gguf_info.read(synthetic_gguf.write_header(tmp_path / "e.gguf", n_vocab=1024, tokenizer="llama"), tokens=True)
    assert pairing_problem(a, b) is None  # padded vocabularies within 128 tokens pair
    assert "differ by more than 128" in pairing_problem(a, c)
    assert "special tokens differ" in pairing_problem(a, d)
    assert "tokenizer types differ" in pairing_problem(a, e)
    with pytest.raises(IncompatibleModelsError):
        check_pairing(a, c)


@pytest.mark.slow
def test_real_models_header(qwen_pair, smollm2):
    target, draft = (gguf_info.read(p, tokens=True) for p in qwen_pair)
    assert (target.arch, target.n_layer, target.vocab_size, target.file_type) == ("qwen2", 28, 151936, "Q4_K_M")
    assert target.data_end == target.file_size and draft.n_layer == 24
    assert pairing_problem(target, draft) is None
    assert "vocabulary sizes differ" in pairing_problem(target, gguf_info.read(smollm2, tokens=True))
