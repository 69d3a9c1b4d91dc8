// The distribution transform shared by draft and target, and inverse-CDF sampling.
// Semantics are defined by the numpy reference in edgespec/verify.py; keep the two in step.
#pragma once

#include <cstdint>

namespace edgespec {

struct SamplingParams {
    double temperature;  // > 0; greedy decoding does not go through the transform
    int64_t top_k;       // active when 0 < top_k < n_vocab
    double top_p;        // active when < 1
    double min_p;        // active when > 0
};

// Throws std::invalid_argument unless temperature > 0 and the values are not NaN.
void check_params(const SamplingParams& params);

// Writes the sampling distribution of one row of logits into out (zero outside the kept set),
// applying llama.cpp's order: top_k, top_p, min_p, temperature. out must not alias logits.
void probs_from_logits_row(const float* logits, float* out, int64_t n_vocab,
                           const SamplingParams& params);

// The same without the final normalisation: writes weights proportional to the distribution and
// returns their sum (saves a pass where only a few probabilities are needed).
double weights_from_logits_row(const float* logits, float* out, int64_t n_vocab,
                               const SamplingParams& params);

// First id whose cumulative sum (ascending ids) exceeds u * sum(probs); probs may be unnormalised.
// Throws std::invalid_argument if probs sums to 0.
int32_t sample_token(const float* probs, int64_t n_vocab, double u);

// Index of the largest value; ties go to the lowest id.
int32_t argmax(const float* x, int64_t n);

// The row kernels in use: "baseline" (SSE2/NEON/scalar), "avx2" or "avx512"; the CPU decides, and
// the environment variable EDGESPEC_KERNELS can ask for one.
const char* kernel_variant();

}  // namespace edgespec
