// exp, SiLU, softplus and row helpers for 8 floats in AVX2 registers, shared by the C kernels (included, so they inline:
// a call inside a recurrence would spill its state registers, every ymm register being
// caller-saved; and glibc's vector expf costs several times this).
#ifndef EFFVIZ_SIMD_MATH_H
#define EFFVIZ_SIMD_MATH_H

// SILU_EXP_CAP bounds e^-x in silu(x) = x / (1 + e^-x): -ffast-math lets gcc divide by a
// reciprocal estimate refined by a Newton step, which makes 0 * inf = NaN of divisors near
// FLT_MAX. At x = -80, silu(x) is -1e-33 anyway.
#define SILU_EXP_CAP 80.0f

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#include <stdint.h>

// 2^t for 8 floats. t = n + f with n an integer and |f| <= 1/2: adding 1.5 * 2^23 rounds t to n
// in the low mantissa bits (cheaper than a round and a convert, and on the add pipes while the
// fma pipes do the polynomial), 2^f is a degree-5 minimax polynomial (relative error 7.5e-8,
// ~2.4e-7 evaluated in fp32), 2^n goes straight into the exponent bits. t is clamped to
// [-126, 127]: below, 2^t would be subnormal (slow, and ~0 anyway), above it would overflow.
static inline __m256 exp2_8(__m256 t) {
    t = _mm256_min_ps(_mm256_max_ps(t, _mm256_set1_ps(-126.0f)), _mm256_set1_ps(127.0f));
    const __m256 magic = _mm256_set1_ps(12582912.0f);
    __m256 shifted = _mm256_add_ps(t, magic);
    // -ffast-math would fold (t + magic) - magic back into t, or compute t - n as (t - shifted) +
    // magic, which rounds f away: the empty asm statements hide both values from the optimiser.
    __asm__("" : "+x"(shifted));
    __m256 n = _mm256_sub_ps(shifted, magic);
    __asm__("" : "+x"(n));
    const __m256 f = _mm256_sub_ps(t, n);
    __m256 p = _mm256_set1_ps(1.3276446843519807e-3f);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.6755335107445717e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.5507130920886993e-2f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.4022120237350464e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.9314694404602051e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0000001192092896f));
    // The low 9 bits of shifted's integer view hold n (two's complement); + 127 and << 23 leave
    // exactly the biased exponent n + 127 in bits 23-30.
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_castps_si256(shifted), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

static inline __m256 exp8(__m256 x) { return exp2_8(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f))); }

// x * sigmoid(x) = x / (1 + e^-x).
static inline __m256 silu8(__m256 x) {
    const __m256 e = exp8(_mm256_min_ps(_mm256_sub_ps(_mm256_setzero_ps(), x), _mm256_set1_ps(SILU_EXP_CAP)));
    return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

// softplus(x) = max(x, 0) + log1p(e^-|x|), with log1p(w) = 2 atanh(s), s = w / (2 + w) <= 1/3,
// by its odd series to s^13 (truncation < 2e-8 relative). glibc's vector logf and expf cost a
// quarter of the whole selective scan.
static inline __m256 softplus8(__m256 x) {
    const __m256 w = exp8(_mm256_or_ps(x, _mm256_set1_ps(-0.0f)));  // e^-|x|: set the sign bit
    const __m256 s = _mm256_div_ps(w, _mm256_add_ps(w, _mm256_set1_ps(2.0f))), s2 = _mm256_mul_ps(s, s);
    __m256 q = _mm256_set1_ps(2.0f / 13);
    q = _mm256_fmadd_ps(q, s2, _mm256_set1_ps(2.0f / 11));
    q = _mm256_fmadd_ps(q, s2, _mm256_set1_ps(2.0f / 9));
    q = _mm256_fmadd_ps(q, s2, _mm256_set1_ps(2.0f / 7));
    q = _mm256_fmadd_ps(q, s2, _mm256_set1_ps(2.0f / 5));
    q = _mm256_fmadd_ps(q, s2, _mm256_set1_ps(2.0f / 3));
    q = _mm256_fmadd_ps(q, s2, _mm256_set1_ps(2.0f));
    return _mm256_fmadd_ps(q, s, _mm256_max_ps(x, _mm256_setzero_ps()));
}

// 8 floats from p, or its first n < 8 and zeros (at a block's ragged end).
static inline __m256 load8(const float *p, int64_t n) {
    if (n >= 8) return _mm256_loadu_ps(p);
    float tmp[8] = {0};
    for (int64_t j = 0; j < n; j++) tmp[j] = p[j];
    return _mm256_loadu_ps(tmp);
}

// v to p, or its first n < 8 lanes.
static inline void store8(float *p, __m256 v, int64_t n) {
    if (n >= 8) return _mm256_storeu_ps(p, v);
    float tmp[8];
    _mm256_storeu_ps(tmp, v);
    for (int64_t j = 0; j < n; j++) p[j] = tmp[j];
}

// Lane j = the sum of row j, for 8 consecutive rows of 8 floats (a transpose by horizontal adds).
static inline __m256 sum_rows8(const float *rows) {
    __m256 r[8];
    for (int j = 0; j < 8; j++) r[j] = _mm256_load_ps(rows + j * 8);
    // a: rows 0-3, the sums of their low halves then of their high halves; b: rows 4-7.
    const __m256 a = _mm256_hadd_ps(_mm256_hadd_ps(r[0], r[1]), _mm256_hadd_ps(r[2], r[3]));
    const __m256 b = _mm256_hadd_ps(_mm256_hadd_ps(r[4], r[5]), _mm256_hadd_ps(r[6], r[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
}
#endif  // __AVX2__ && __FMA__
#endif
