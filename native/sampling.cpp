// The sampling transform and inverse-CDF sampling. Sections: vector kernels (exp and max over a row,
// compiled per ISA and picked at run time), plain scans, the filters, the public functions.
#include "sampling.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <type_traits>
#include <vector>

#if defined(__GNUC__) && defined(__x86_64__)
#define EDGESPEC_X86_DISPATCH 1  // AVX2 / AVX-512 variants of the row kernels, chosen at run time
#include <immintrin.h>
#endif

namespace edgespec {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Block size of the scans. Reductions keep W independent accumulators: without -ffast-math the
// compiler may not reorder one accumulator, but it does vectorise W independent lanes.
constexpr int64_t W = 16;

// Above this top_k a heap scan costs more than one nth_element over the whole row.
constexpr int64_t kHeapTopK = 512;

// Below this fraction of the vocabulary, the kept set is written token by token; above it,
// one masked pass over the row is cheaper.
constexpr int64_t kSparseDenominator = 8;

struct Cand {
    float logit;
    int32_t id;
};

// The sampler's order: larger logit first, ties to the lower id, so every platform keeps the same set.
inline bool better(const Cand& a, const Cand& b) {
    return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

// ---------------------------------------------------------------------------------------------------
// Vector kernels. gcc does not auto-vectorise the exp loop (its default -ftrapping-math keeps the float
// selects as branches), so the kernels are written with GCC/Clang vector extensions, once, as
// templates over the vector type: 4 lanes for the baseline (SSE2, NEON), 8 for AVX2. AVX-512 is
// spelled with intrinsics: with 64-byte generic vectors gcc lowers the mask logic inside the
// baseline-ISA helpers and scalarises it. Other compilers get scalar loops. Same formula everywhere.

#if defined(__GNUC__)
#define EDGESPEC_VECTORS 1
#if !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"  // 32-byte vectors only cross always-inline boundaries
#endif
#define EDGESPEC_INLINE inline __attribute__((always_inline))
typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
#else
#define EDGESPEC_INLINE inline
#endif

template <typename F>
struct IntOf {
    using type = int32_t;
};
EDGESPEC_INLINE float select(bool m, float a, float b) { return m ? a : b; }
EDGESPEC_INLINE int32_t to_int(float x) { return static_cast<int32_t>(x); }
EDGESPEC_INLINE float from_bits(int32_t b) {
    float f;
    std::memcpy(&f, &b, sizeof f);
    return f;
}

#ifdef EDGESPEC_VECTORS
#define EDGESPEC_VECTOR_OPS(VF, VI)                                                                  \
    template <>                                                                                      \
    struct IntOf<VF> {                                                                               \
        using type = VI;                                                                             \
    };                                                                                               \
    EDGESPEC_INLINE VF select(const VI& m, const VF& a, const VF& b) {                               \
        return (VF)(((VI)a & m) | ((VI)b & ~m));                                                     \
    }                                                                                                \
    EDGESPEC_INLINE VI to_int(const VF& x) { return __builtin_convertvector(x, VI); }                \
    EDGESPEC_INLINE VF from_bits(const VI& b) { return (VF)b; }
EDGESPEC_VECTOR_OPS(v4f, v4i)
EDGESPEC_VECTOR_OPS(v8f, v8i)
#undef EDGESPEC_VECTOR_OPS
#endif

// exp(x) for x <= 0 in float (Cephes expf, ~2 ulp). Exactly 0 below the normal float range, so
// masked (-inf) logits get probability 0.
template <typename F>
EDGESPEC_INLINE F exp_nonpos(const F& x) {
    using I = typename IntOf<F>::type;
    const F lo = F{} + -87.33654f;  // log(FLT_MIN)
    const auto under = x < lo;
    const F xc = select(under, lo, x);
    const F fn = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
    F r = xc - fn * 0.693359375f;  // Cody-Waite: ln2 split in a part exact in float ...
    r = r + fn * 2.12194440e-4f;   // ... and the rest
    F p = F{} + 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const F y = p * r * r + r + 1.0f;
    return select(under, F{}, y * from_bits(static_cast<I>((to_int(fn) + 127) << 23)));
}

// out[j] = exp((l[j] - lmax) * inv_t) for the tokens no worse than (lc, ic) in the sampler's order,
// 0 for the others. Every filter keeps a prefix of that order, so this expresses any kept set.
template <typename VF>
EDGESPEC_INLINE void exp_masked_body(const float* l, float* out, int64_t n, float lmax, float inv_t, float lc,
                                     int32_t ic) {
    int64_t j = 0;
    if constexpr (!std::is_same<VF, float>::value) {
        using VI = typename IntOf<VF>::type;
        constexpr int L = sizeof(VF) / sizeof(float);
        VI lane;
        for (int t = 0; t < L; ++t) lane[t] = t;
        for (; j + L <= n; j += L) {
            VF x;
            std::memcpy(&x, l + j, sizeof x);
            const VI id = lane + static_cast<int32_t>(j);
            const VI keep = (x > lc) | ((x == lc) & (id <= ic));
            const VF e = select(keep, exp_nonpos((x - lmax) * inv_t), VF{});
            std::memcpy(out + j, &e, sizeof e);
        }
    }
    for (; j < n; ++j) {  // the tail, or everything without vector extensions
        const float x = l[j];
        const bool keep = x > lc || (x == lc && j <= ic);
        out[j] = keep ? exp_nonpos((x - lmax) * inv_t) : 0.0f;
    }
}

// Largest value, ignoring NaN.
template <typename VF>
EDGESPEC_INLINE float max_body(const float* x, int64_t n) {
    float m = kNegInf;
    int64_t j = 0;
    if constexpr (!std::is_same<VF, float>::value) {
        constexpr int L = sizeof(VF) / sizeof(float);
        VF mv = VF{} + kNegInf;
        for (; j + L <= n; j += L) {
            VF v;
            std::memcpy(&v, x + j, sizeof v);
            mv = select(v > mv, v, mv);
        }
        for (int t = 0; t < L; ++t) m = mv[t] > m ? mv[t] : m;
    }
    for (; j < n; ++j) m = x[j] > m ? x[j] : m;
    return m;
}

// Sum in double (the compiler vectorises this as written).
double sum_of(const float* x, int64_t n) {
    double acc[W] = {};
    int64_t j = 0;
    for (; j + W <= n; j += W)
        for (int64_t t = 0; t < W; ++t) acc[t] += x[j + t];
    double s = 0.0;
    for (int64_t t = 0; t < W; ++t) s += acc[t];
    for (; j < n; ++j) s += x[j];
    return s;
}

#ifdef EDGESPEC_VECTORS
using BaseVec = v4f;
#else
using BaseVec = float;
#endif

// Each exp_masked_* variant returns the sum of what it wrote.
double exp_masked_base(const float* l, float* out, int64_t n, float lmax, float inv_t, float lc, int32_t ic) {
    exp_masked_body<BaseVec>(l, out, n, lmax, inv_t, lc, ic);
    return sum_of(out, n);
}
float max_base(const float* x, int64_t n) { return max_body<BaseVec>(x, n); }

#ifdef EDGESPEC_X86_DISPATCH
__attribute__((target("avx2,fma"))) double exp_masked_avx2(const float* l, float* out, int64_t n, float lmax,
                                                           float inv_t, float lc, int32_t ic) {
    exp_masked_body<v8f>(l, out, n, lmax, inv_t, lc, ic);
    return sum_of(out, n);
}
__attribute__((target("avx2,fma"))) float max_avx2(const float* x, int64_t n) { return max_body<v8f>(x, n); }

#if !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // false positive in gcc 12's avx512fintrin.h
#endif
__attribute__((target("avx512f"))) double exp_masked_avx512(const float* l, float* out, int64_t n, float lmax,
                                                            float inv_t, float lc, int32_t ic) {
    const __m512 vlmax = _mm512_set1_ps(lmax), vinv_t = _mm512_set1_ps(inv_t), vlc = _mm512_set1_ps(lc);
    const __m512i vic = _mm512_set1_epi32(ic);
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512 lo = _mm512_set1_ps(-87.33654f), magic = _mm512_set1_ps(12582912.0f);
    __m512d sum_lo = _mm512_setzero_pd(), sum_hi = _mm512_setzero_pd();  // the sum, fused, in double
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        const __m512 x = _mm512_loadu_ps(l + j);
        const __m512i id = _mm512_add_epi32(lane, _mm512_set1_epi32(static_cast<int32_t>(j)));
        const __mmask16 keep = _mm512_cmp_ps_mask(x, vlc, _CMP_GT_OQ) |
                               (_mm512_cmp_ps_mask(x, vlc, _CMP_EQ_OQ) & _mm512_cmple_epi32_mask(id, vic));
        const __m512 z = _mm512_mul_ps(_mm512_sub_ps(x, vlmax), vinv_t);
        const __mmask16 nonzero = keep & _mm512_cmp_ps_mask(z, lo, _CMP_GE_OQ);
        const __m512 xc = _mm512_max_ps(z, lo);
        const __m512 fn = _mm512_sub_ps(_mm512_fmadd_ps(xc, _mm512_set1_ps(1.44269504088896341f), magic), magic);
        __m512 r = _mm512_fnmadd_ps(fn, _mm512_set1_ps(0.693359375f), xc);
        r = _mm512_fmadd_ps(fn, _mm512_set1_ps(2.12194440e-4f), r);
        __m512 p = _mm512_set1_ps(1.9875691500e-4f);
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
        const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
        const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(fn), _mm512_set1_epi32(127)), 23);
        const __m512 e = _mm512_maskz_mul_ps(nonzero, y, _mm512_castsi512_ps(bits));
        _mm512_storeu_ps(out + j, e);
        sum_lo = _mm512_add_pd(sum_lo, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        sum_hi = _mm512_add_pd(sum_hi, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
    }
    // The tail goes through the portable loop (ids relative to j).
    exp_masked_body<float>(l + j, out + j, n - j, lmax, inv_t, lc, ic - static_cast<int32_t>(j));
    double lanes[8];
    _mm512_storeu_pd(lanes, _mm512_add_pd(sum_lo, sum_hi));
    return sum_of(out + j, n - j) + (((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) +
                                     ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7])));
}

__attribute__((target("avx512f"))) float max_avx512(const float* x, int64_t n) {
    __m512 mv = _mm512_set1_ps(kNegInf);
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) mv = _mm512_max_ps(_mm512_loadu_ps(x + j), mv);  // NaN in x: keeps mv
    float lanes[16];
    _mm512_storeu_ps(lanes, mv);
    return std::max(max_body<float>(lanes, 16), max_body<float>(x + j, n - j));
}
#if !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif  // EDGESPEC_X86_DISPATCH

struct Kernels {
    const char* name;
    double (*exp_masked)(const float*, float*, int64_t, float, float, float, int32_t);
    float (*max)(const float*, int64_t);
};

// The widest variant this CPU runs. EDGESPEC_KERNELS=baseline|avx2|avx512 asks for one (tests use
// it to cover every variant); a variant the CPU lacks is skipped.
Kernels pick_kernels() {
    const char* want = std::getenv("EDGESPEC_KERNELS");
    auto wanted = [&](const char* name) { return want == nullptr || *want == 0 || std::strcmp(want, name) == 0; };
    (void)wanted;
#ifdef EDGESPEC_X86_DISPATCH
    __builtin_cpu_init();
    if (wanted("avx512") && __builtin_cpu_supports("avx512f")) return {"avx512", exp_masked_avx512, max_avx512};
    if (wanted("avx2") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return {"avx2", exp_masked_avx2, max_avx2};
#endif
    return {"baseline", exp_masked_base, max_base};
}

const Kernels& kernels() {
    static const Kernels k = pick_kernels();
    return k;
}

// out[j] = exp((l[j] - lmax) * inv_t) for the tokens no worse than `worst`, else 0; returns the sum.
double exp_masked(const float* l, float* out, int64_t n, float lmax, float inv_t, Cand worst) {
    return kernels().exp_masked(l, out, n, lmax, inv_t, worst.logit, worst.id);
}

float max_of(const float* x, int64_t n) { return kernels().max(x, n); }

// ---------------------------------------------------------------------------------------------------
// Plain scans (the compiler vectorises these as written).

// Whether any of x[0..W) is >= t: lets scans skip whole blocks with one vectorised test.
inline bool any_at_least(const float* x, float t) {
#ifdef EDGESPEC_VECTORS
    v4i any = {};
    for (int64_t i = 0; i < W; i += 4) {
        v4f v;
        std::memcpy(&v, x + i, sizeof v);
        any |= v >= t;
    }
    return (any[0] | any[1] | any[2] | any[3]) != 0;
#else
    bool any = false;
    for (int64_t i = 0; i < W; ++i) any |= x[i] >= t;
    return any;
#endif
}

struct MassCount {
    double mass;
    int64_t count;
};

// Sum of w[j], and the number of tokens, over the tokens with l[j] >= t. Two loops, because gcc
// vectorises each alone but not the two fused.
MassCount mass_at_least(const float* l, const float* w, int64_t n, float t) {
    double acc[W] = {};
    int32_t cnt[W] = {};
    const int64_t body = n - n % W;
    for (int64_t j = 0; j < body; j += W) {
        for (int64_t i = 0; i < W; ++i) {
            // A bit mask rather than `cond ? w : 0`, which gcc would not vectorise.
            uint32_t bits;
            std::memcpy(&bits, w + j + i, sizeof bits);
            acc[i] += from_bits(static_cast<int32_t>(bits & (0u - static_cast<uint32_t>(l[j + i] >= t))));
        }
    }
    for (int64_t j = 0; j < body; j += W)
        for (int64_t i = 0; i < W; ++i) cnt[i] += l[j + i] >= t;
    MassCount mc = {0.0, 0};
    for (int64_t i = 0; i < W; ++i) {
        mc.mass += acc[i];
        mc.count += cnt[i];
    }
    for (int64_t j = body; j < n; ++j) {
        if (l[j] >= t) {
            mc.mass += w[j];
            ++mc.count;
        }
    }
    return mc;
}

// The tokens with l[j] >= t into cand.
void collect_at_least(const float* l, int64_t n, float t, std::vector<Cand>& cand) {
    cand.clear();
    auto take = [&](int64_t i) {
        if (l[i] >= t) cand.push_back({l[i], static_cast<int32_t>(i)});
    };
    int64_t j = 0;
    for (; j + W <= n; j += W)
        if (any_at_least(l + j, t))
            for (int64_t i = j; i < j + W; ++i) take(i);
    for (; j < n; ++j) take(j);
}

// Splits the tokens with l >= t_out: those with l >= t_in go to inside, the others to window.
void split_tokens(const float* l, int64_t n, float t_out, float t_in, std::vector<Cand>& inside,
                  std::vector<Cand>& window) {
    inside.clear();
    window.clear();
    auto take = [&](int64_t i) {
        const float x = l[i];
        if (x >= t_out) (x >= t_in ? inside : window).push_back({x, static_cast<int32_t>(i)});
    };
    int64_t j = 0;
    for (; j + W <= n; j += W)
        if (any_at_least(l + j, t_out))
            for (int64_t i = j; i < j + W; ++i) take(i);
    for (; j < n; ++j) take(j);
}

// ---------------------------------------------------------------------------------------------------
// The filters.

// Temperature-1 weight relative to the top token, in double: top_p and min_p decide on these, and the
// numpy reference computes the same expression, so both keep the same set.
inline double weight(float logit, double lmax) { return std::exp(static_cast<double>(logit) - lmax); }

// The top k tokens (in no particular order) into cand.
void select_top_k(const float* l, int64_t n, int64_t k, std::vector<Cand>& cand) {
    cand.clear();
    if (k > kHeapTopK) {
        cand.resize(n);
        for (int64_t j = 0; j < n; ++j) cand[j] = {l[j], static_cast<int32_t>(j)};
        std::nth_element(cand.begin(), cand.begin() + (k - 1), cand.end(), better);
        cand.resize(k);
        return;
    }
    // Heap whose front is the worst kept token. Scanning ids upwards, a later token only enters
    // with a strictly larger logit (an equal one has a higher id, so it loses the tie).
    for (int64_t j = 0; j < k; ++j) cand.push_back({l[j], static_cast<int32_t>(j)});
    std::make_heap(cand.begin(), cand.end(), better);
    float thr = cand.front().logit;
    auto consider = [&](int64_t j) {
        if (l[j] > thr) {
            std::pop_heap(cand.begin(), cand.end(), better);
            cand.back() = {l[j], static_cast<int32_t>(j)};
            std::push_heap(cand.begin(), cand.end(), better);
            thr = cand.front().logit;
        }
    };
    int64_t j = k;
    for (; j < n && j % W != 0; ++j) consider(j);
    for (; j + W <= n; j += W)  // almost every block is skipped once the heap is warm
        if (any_at_least(l + j, thr))
            for (int64_t t = 0; t < W; ++t) consider(j + t);
    for (; j < n; ++j) consider(j);
}

// cum[i] = start + the temperature-1 weights of the sorted cand[0..i].
void cumulate(const std::vector<Cand>& cand, double lmax, double start, std::vector<double>& cum) {
    cum.resize(cand.size());
    double c = start;
    for (size_t i = 0; i < cand.size(); ++i) cum[i] = c += weight(cand[i].logit, lmax);
}

size_t first_at_least(const std::vector<double>& cum, double thr) {
    return std::lower_bound(cum.begin(), cum.end(), thr) - cum.begin();
}

// Keeps the smallest prefix of the sorted cand whose temperature-1 mass reaches top_p of the total.
void truncate_top_p(std::vector<Cand>& cand, double lmax, double top_p, std::vector<double>& cum) {
    cumulate(cand, lmax, 0.0, cum);
    cand.resize(std::min(first_at_least(cum, top_p * cum.back()) + 1, cand.size()));
}

// top_p over the whole vocabulary without sorting it. Float weights (vectorised, in buf: n floats of
// scratch) give every mass to within kRelErr. Threshold passes over them bracket the cut between an
// "inside" logit (everything at or above it is surely kept) and an "outside" one (the cut is surely
// above it), narrowed by bisection until few tokens lie between. Only those are sorted and walked,
// in double, starting from the exact mass of the inside tokens. Returns the nucleus, unsorted, in cand.
void top_p_dense(const float* l, float* buf, int64_t n, float lmax, double top_p, std::vector<Cand>& cand,
                 std::vector<Cand>& window, std::vector<double>& cum) {
    // Bound on the float weights' relative error: ~2 ulp from exp plus the rounding of l - lmax
    // (half an ulp of up to 87.3, i.e. 4e-6).
    constexpr double kRelErr = 1e-5;
    constexpr int64_t kWindow = 512;  // tokens worth sorting at the boundary
    constexpr float kInf = std::numeric_limits<float>::infinity();
    const double total_f = exp_masked(l, buf, n, lmax, 1.0f, {kNegInf, static_cast<int32_t>(n - 1)});
    const double surely_short = top_p * total_f * (1.0 - 3 * kRelErr);
    const double surely_enough = top_p * total_f * (1.0 + 3 * kRelErr);

    float t_in = std::nextafter(lmax, kInf), t_out = kNegInf;  // nothing is at or above t_in yet
    int64_t c_in = 0, c_out = n;
    double mass_out = total_f;  // float mass at or above t_out
    auto probe = [&](float t) {  // false when t falls in the band that float masses cannot classify
        const MassCount mc = mass_at_least(l, buf, n, t);
        if (mc.mass < surely_short) {
            t_in = t, c_in = mc.count;
        } else if (mc.mass >= surely_enough) {
            t_out = t, c_out = mc.count, mass_out = mc.mass;
        } else {
            return false;
        }
        return true;
    };
    for (float depth = 0.0f; depth <= 128.0f && t_out == kNegInf; depth = std::max(1.0f, 2.0f * depth))
        probe(lmax - depth);
    while (c_out - c_in > kWindow && t_out != kNegInf) {
        const float mid = t_out + 0.5f * (t_in - t_out);
        if (!(mid > t_out && mid < t_in) || !probe(mid)) break;  // out of float resolution, or in the band
    }

    // Inside tokens first: their exact mass starts the walk through the sorted window below them.
    split_tokens(l, n, t_out, t_in, cand, window);
    double inside = 0.0;
    for (const Cand& c : cand) inside += weight(c.logit, lmax);
    std::sort(window.begin(), window.end(), better);
    cumulate(window, lmax, inside, cum);

    // The cut with a total known to within err, if that decides it: first the float total, then the
    // exact mass down to t_out plus the float mass below it, last an exact pass over every token.
    size_t cut = 0;
    auto decide = [&](double total, double err) {
        cut = first_at_least(cum, top_p * (total + err));
        return cut < window.size() && cut == first_at_least(cum, top_p * (total - err)) &&
               inside < top_p * (total - err);
    };
    const double below_f = std::max(0.0, total_f - mass_out);
    const double down_to_out = cum.empty() ? inside : cum.back();
    if (!decide(total_f, kRelErr * total_f) && !decide(down_to_out + below_f, kRelErr * below_f + 1e-12 * total_f)) {
        double total = 0.0;
        for (int64_t j = 0; j < n; ++j) total += weight(l[j], lmax);
        if (!decide(total, 0.0)) {
            // The float error bound failed to bracket the cut (never seen): sort everything.
            cand.clear();
            collect_at_least(l, n, kNegInf, window);
            std::sort(window.begin(), window.end(), better);
            cumulate(window, lmax, 0.0, cum);
            cut = first_at_least(cum, top_p * total);
        }
    }
    cand.insert(cand.end(), window.begin(), window.begin() + std::min(cut + 1, window.size()));
}

struct Workspace {
    std::vector<Cand> cand, window;
    std::vector<double> cum;
};

}  // namespace

void check_params(const SamplingParams& p) {
    if (!(p.temperature > 0.0))
        throw std::invalid_argument("temperature must be > 0 (use greedy_accept for greedy decoding)");
    if (std::isnan(p.top_p) || std::isnan(p.min_p)) throw std::invalid_argument("top_p/min_p is NaN");
}

double weights_from_logits_row(const float* l, float* out, int64_t n, const SamplingParams& p) {
    thread_local Workspace ws;
    std::vector<Cand>& cand = ws.cand;
    bool dense = true;  // every token survives so far; otherwise cand holds the survivors
    float lmax;
    if (p.top_k > 0 && p.top_k < n) {
        select_top_k(l, n, p.top_k, cand);
        std::sort(cand.begin(), cand.end(), better);
        lmax = cand.front().logit;
        dense = false;
    } else {
        lmax = max_of(l, n);
    }
    if (!std::isfinite(lmax)) throw std::invalid_argument("a row of logits has no finite maximum");

    if (p.top_p < 1.0) {
        if (dense)
            top_p_dense(l, out, n, lmax, p.top_p, cand, ws.window, ws.cum);  // out doubles as scratch
        else
            truncate_top_p(cand, lmax, p.top_p, ws.cum);
        dense = false;
    }
    if (p.min_p > 0.0) {
        // The top token always has weight 1, so clamping keeps at least one token.
        const double thr = std::min(p.min_p, 1.0);
        auto dropped = [&](const Cand& c) { return weight(c.logit, lmax) < thr; };
        if (dense) {
            // A cheap logit bound first (with slack for exp/log rounding), the exact weight test second.
            const double bound = lmax + std::log(thr) - 1e-9;
            float bound_f = static_cast<float>(bound);
            if (bound_f > bound) bound_f = std::nextafter(bound_f, kNegInf);
            collect_at_least(l, n, bound_f, cand);
            dense = false;
        }
        cand.erase(std::remove_if(cand.begin(), cand.end(), dropped), cand.end());
    }

    const float inv_t = static_cast<float>(1.0 / p.temperature);
    if (!dense && static_cast<int64_t>(cand.size()) * kSparseDenominator < n) {
        std::memset(out, 0, sizeof(float) * n);
        double z = 0.0;
        for (const Cand& c : cand) z += out[c.id] = exp_nonpos((c.logit - lmax) * inv_t);
        return z;
    }
    Cand worst = {kNegInf, static_cast<int32_t>(n - 1)};
    if (!dense)
        worst = *std::min_element(cand.begin(), cand.end(), [](const Cand& a, const Cand& b) { return better(b, a); });
    return exp_masked(l, out, n, lmax, inv_t, worst);
}

void probs_from_logits_row(const float* l, float* out, int64_t n, const SamplingParams& p) {
    const double inv = 1.0 / weights_from_logits_row(l, out, n, p);
    for (int64_t j = 0; j < n; ++j) out[j] = static_cast<float>(out[j] * inv);
}

int32_t sample_token(const float* probs, int64_t n, double u) {
    // Block sums first (one vectorised pass), then a sequential walk only inside the block where
    // the cumulative sum crosses u * total.
    constexpr int64_t B = 256;
    thread_local std::vector<double> block;
    const int64_t nb = (n + B - 1) / B;
    block.resize(nb);
    double total = 0.0;
    for (int64_t b = 0; b < nb; ++b) total += block[b] = sum_of(probs + b * B, std::min(B, n - b * B));
    if (!(total > 0.0)) throw std::invalid_argument("cannot sample: the probabilities sum to 0");
    const double target = u * total;
    double cum = 0.0;
    for (int64_t b = 0; b < nb; ++b) {
        if (cum + block[b] > target) {
            // Block sums round differently from the walk: if the walk does not cross, go on from it.
            const int64_t end = std::min(n, (b + 1) * B);
            for (int64_t j = b * B; j < end; ++j)
                if ((cum += probs[j]) > target) return static_cast<int32_t>(j);
        } else {
            cum += block[b];
        }
    }
    for (int64_t j = n - 1; j >= 0; --j)  // rounding ran past the end
        if (probs[j] > 0.0f) return static_cast<int32_t>(j);
    return static_cast<int32_t>(n - 1);  // unreachable: total > 0 means some entry is > 0
}

int32_t argmax(const float* x, int64_t n) {
    const float m = max_of(x, n);
    int64_t j = 0;
    while (j + W <= n && !any_at_least(x + j, m)) j += W;
    for (; j < n; ++j)
        if (x[j] == m) return static_cast<int32_t>(j);
    return 0;  // only for rows without any comparable value (all NaN)
}

const char* kernel_variant() { return kernels().name; }

}  // namespace edgespec
