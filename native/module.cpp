// Python binding of the native kernels (edgespec._native). Signatures match the numpy reference in
// edgespec/verify.py. Array arguments are .noconvert(): float64 or strided input raises TypeError
// rather than being copied behind the caller's back. The GIL is released around the loops.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>

#include <cstdint>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>

#include "sampling.hpp"
#include "verify.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

template <typename T, size_t D>
using Array = nb::ndarray<T, nb::ndim<D>, nb::c_contig, nb::device::cpu>;

using Rows = Array<const float, 2>;
using OutRows = Array<float, 2>;
using Row = Array<const float, 1>;
using Tokens = Array<const int32_t, 1>;
using Uniforms = Array<const double, 1>;
using Result = std::pair<int32_t, int32_t>;

void expect(bool ok, const std::string& what) {
    if (!ok) throw std::invalid_argument(what);
}

// Validates the shapes of a k-token verification and returns k.
int64_t check_verify_shapes(const Rows& logits, const Tokens& draft) {
    expect(logits.shape(0) >= 1 && logits.shape(1) >= 1, "logits must have shape [k+1, n_vocab]");
    expect(logits.shape(1) <= std::numeric_limits<int32_t>::max(), "n_vocab does not fit in int32");
    const int64_t k = static_cast<int64_t>(logits.shape(0)) - 1;
    expect(static_cast<int64_t>(draft.shape(0)) == k, "draft must have k = logits.shape[0] - 1 tokens");
    return k;
}

edgespec::SamplingParams make_params(double temperature, int64_t top_k, double top_p, double min_p) {
    edgespec::SamplingParams p{temperature, top_k, top_p, min_p};
    edgespec::check_params(p);
    return p;
}

Result greedy_accept(Rows logits, Tokens draft) {
    const int64_t k = check_verify_shapes(logits, draft);
    const auto r = edgespec::greedy_accept(logits.data(), draft.data(), k, logits.shape(1));
    return {r.n_accepted, r.token};
}

void probs_from_logits(Rows logits, OutRows out, double temperature, int64_t top_k, double top_p,
                       double min_p) {
    expect(logits.shape(0) == out.shape(0) && logits.shape(1) == out.shape(1),
           "out must have the shape of logits");
    expect(static_cast<const void*>(logits.data()) != static_cast<void*>(out.data()) || logits.size() == 0,
           "out must not alias logits");
    const auto p = make_params(temperature, top_k, top_p, min_p);
    const int64_t n = logits.shape(1);
    for (size_t i = 0; i < logits.shape(0); ++i)
        edgespec::probs_from_logits_row(logits.data() + i * n, out.data() + i * n, n, p);
}

int32_t sample_token(Row probs, double u) {
    expect(probs.shape(0) >= 1, "probs must not be empty");
    expect(probs.shape(0) <= std::numeric_limits<int32_t>::max(), "n_vocab does not fit in int32");
    expect(u >= 0.0 && u < 1.0, "u must be in [0, 1)");
    return edgespec::sample_token(probs.data(), probs.shape(0), u);
}

Result sample_accept(Rows target_logits, Tokens draft, Rows draft_probs, Uniforms uniforms,
                     double temperature, int64_t top_k, double top_p, double min_p,
                     std::optional<OutRows> scratch) {
    const int64_t k = check_verify_shapes(target_logits, draft);
    const int64_t n = target_logits.shape(1);
    expect(static_cast<int64_t>(draft_probs.shape(0)) == k && static_cast<int64_t>(draft_probs.shape(1)) == n,
           "draft_probs must have shape [k, n_vocab]");
    expect(static_cast<int64_t>(uniforms.shape(0)) == k + 1, "uniforms must have k+1 entries");
    for (int64_t i = 0; i <= k; ++i) expect(uniforms.data()[i] >= 0.0 && uniforms.data()[i] < 1.0,
                                            "uniforms must be in [0, 1)");
    float* s = nullptr;
    if (scratch) {
        expect(scratch->shape(0) >= 2 && static_cast<int64_t>(scratch->shape(1)) == n,
               "scratch must have shape [rows >= 2, n_vocab]");
        s = scratch->data();
    }
    const auto p = make_params(temperature, top_k, top_p, min_p);
    const auto r = edgespec::sample_accept(target_logits.data(), draft.data(), draft_probs.data(),
                                           uniforms.data(), k, n, p, s);
    return {r.n_accepted, r.token};
}

}  // namespace

NB_MODULE(_native, m) {
    m.doc() = "Native speculative-decoding kernels; edgespec.verify holds the numpy reference.";
    using release = nb::call_guard<nb::gil_scoped_release>;

    m.def("greedy_accept", &greedy_accept, "logits"_a.noconvert(), "draft"_a.noconvert(), release(),
          "Accept draft tokens while they equal the target argmax; returns (n_accepted, token).");
    m.def("probs_from_logits", &probs_from_logits, "logits"_a.noconvert(), "out"_a.noconvert(),
          "temperature"_a, "top_k"_a, "top_p"_a, "min_p"_a, release(),
          "Write each row's top_k/top_p/min_p/temperature sampling distribution into out.");
    m.def("sample_token", &sample_token, "probs"_a.noconvert(), "u"_a, release(),
          "Inverse-CDF sample (ascending ids) from possibly unnormalised probs with uniform u.");
    m.def("sample_accept", &sample_accept, "target_logits"_a.noconvert(), "draft"_a.noconvert(),
          "draft_probs"_a.noconvert(), "uniforms"_a.noconvert(), "temperature"_a, "top_k"_a, "top_p"_a,
          "min_p"_a, "scratch"_a.noconvert().none() = nb::none(), release(),
          "Speculative rejection sampling; returns (n_accepted, token). scratch: None or a [>=2, n_vocab] workspace.");
    m.def("kernel_variant", &edgespec::kernel_variant,
          "Which row kernels run: baseline, avx2 or avx512 (by CPU; EDGESPEC_KERNELS picks one).");
}
