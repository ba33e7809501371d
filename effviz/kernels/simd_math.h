// exp and SiLU for 8 floats in AVX2 registers, shared by the C kernels (included, so they inline:
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
#endif  // __AVX2__ && __FMA__
#endif
