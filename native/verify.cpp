#include "verify.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

namespace edgespec {
namespace {

void check_token(int32_t x, int64_t n_vocab) {
    if (x < 0 || x >= n_vocab)
        throw std::invalid_argument("draft token " + std::to_string(x) + " is outside the vocabulary");
}

}  // namespace

AcceptResult greedy_accept(const float* logits, const int32_t* draft, int64_t k, int64_t n_vocab) {
    for (int64_t i = 0; i < k; ++i) check_token(draft[i], n_vocab);
    for (int64_t i = 0; i < k; ++i) {
        const int32_t a = argmax(logits + i * n_vocab, n_vocab);
        if (a != draft[i]) return {static_cast<int32_t>(i), a};
    }
    return {static_cast<int32_t>(k), argmax(logits + k * n_vocab, n_vocab)};
}

AcceptResult sample_accept(const float* target_logits, const int32_t* draft, const float* draft_probs,
                           const double* uniforms, int64_t k, int64_t n_vocab,
                           const SamplingParams& params, float* scratch) {
    check_params(params);
    for (int64_t i = 0; i < k; ++i) check_token(draft[i], n_vocab);
    // Two rows are enough: the current row's weights and the residual.
    thread_local std::vector<float> own;
    if (scratch == nullptr) {
        own.resize(2 * n_vocab);
        scratch = own.data();
    }
    float* w = scratch;
    float* residual = scratch + n_vocab;
    const double u_final = uniforms[k];

    // Rows are transformed lazily: a rejection at i leaves rows i+1..k untouched. Rows are kept as
    // unnormalised weights; p = float(w / z) is formed only where it is read, as the reference does.
    for (int64_t i = 0; i < k; ++i) {
        const double inv = 1.0 / weights_from_logits_row(target_logits + i * n_vocab, w, n_vocab, params);
        const int32_t x = draft[i];
        const float* q = draft_probs + i * n_vocab;
        const float px = static_cast<float>(w[x] * inv);
        if (q[x] > 0.0f && uniforms[i] < static_cast<double>(px) / static_cast<double>(q[x])) continue;
        // Rejected: resample from max(p - q, 0), or from p when that is empty (p == q).
        for (int64_t j = 0; j < n_vocab; ++j) {
            const float r = static_cast<float>(w[j] * inv) - q[j];
            residual[j] = r > 0.0f ? r : 0.0f;
        }
        const bool empty = std::none_of(residual, residual + n_vocab, [](float r) { return r > 0.0f; });
        return {static_cast<int32_t>(i), sample_token(empty ? w : residual, n_vocab, u_final)};
    }
    weights_from_logits_row(target_logits + k * n_vocab, w, n_vocab, params);
    return {static_cast<int32_t>(k), sample_token(w, n_vocab, u_final)};
}

}  // namespace edgespec
