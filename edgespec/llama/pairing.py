"""Whether a draft model can propose tokens for a target: one rule, for GGUF headers (`models info
--draft`, before loading) and for loaded models alike.

Both must use the same tokenizer: its type, BOS and EOS ids, and the token texts from id 5 on
(the first few are control tokens whose texts differ between otherwise identical vocabularies). The
vocabulary sizes may differ by up to 128 rows of padding (Qwen2.5 7B and up have 152064 rows, the
0.5B 151936); the engine drafts over the ids both have.
"""

from __future__ import annotations

from typing import Protocol

from edgespec.errors import IncompatibleModelsError

MAX_SIZE_DIFFERENCE = 128
HINT = "pick a draft model from the same family as the target"


class Vocabulary(Protocol):
    tokenizer_model: str | None
    vocab_size: int
    bos: int | None
    eos: int | None

    def token_text(self, i: int) -> bytes | None: ...  # None: not known (a header read without its token list)


def pairing_problem(target: Vocabulary, draft: Vocabulary) -> str | None:
    """Why `draft` cannot propose tokens for `target`, or None if it can."""
    if target.tokenizer_model != draft.tokenizer_model:
        return f"tokenizer types differ: target {target.tokenizer_model!r}, draft {draft.tokenizer_model!r}"
    nt, nd = target.vocab_size, draft.vocab_size
    if abs(nt - nd) > MAX_SIZE_DIFFERENCE:
        return f"vocabulary sizes differ by more than {MAX_SIZE_DIFFERENCE}: target {nt}, draft {nd}"
    if target.bos != draft.bos or target.eos != draft.eos:
        return f"special tokens differ: target BOS/EOS {target.bos}/{target.eos}, draft {draft.bos}/{draft.eos}"
    for i in range(5, min(nt, nd)):
        a, b = target.token_text(i), draft.token_text(i)
        if a is None or b is None:
            break
        if a != b:
            return (f"tokenizers differ at token {i}: target {a.decode('utf-8', 'replace')!r}, "
                    f"draft {b.decode('utf-8', 'replace')!r}")
    return None


def check_pairing(target: Vocabulary, draft: Vocabulary) -> None:
    problem = pairing_problem(target, draft)
    if problem:
        raise IncompatibleModelsError(problem, HINT)
