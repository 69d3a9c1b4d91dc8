// The acceptance step of speculative decoding: greedy and rejection sampling.
// Semantics are defined by the numpy reference in edgespec/verify.py; keep the two in step.
#pragma once

#include <cstdint>

#include "sampling.hpp"

namespace edgespec {

struct AcceptResult {
    int32_t n_accepted;  // draft tokens accepted, 0..k
    int32_t token;       // the token the target emits after them (correction or bonus)
};

// logits: [k+1, n_vocab]; draft: [k]. Accepts while the draft matches the target's argmax.
AcceptResult greedy_accept(const float* logits, const int32_t* draft, int64_t k, int64_t n_vocab);

// Speculative rejection sampling. target_logits: [k+1, n_vocab]; draft: [k]; draft_probs: [k, n_vocab]
// (already transformed with the same params); uniforms: [k+1] in [0, 1), uniforms[k] drives the final
// sample. scratch: caller's workspace of at least 2 * n_vocab floats (contents unspecified on return),
// or nullptr for a thread-local buffer.
AcceptResult sample_accept(const float* target_logits, const int32_t* draft, const float* draft_probs,
                           const double* uniforms, int64_t k, int64_t n_vocab,
                           const SamplingParams& params, float* scratch);

}  // namespace edgespec
