// qcompile's CPU integer GEMM: C[m,n] = rs[m] * cs[n] * sum_k A[m,k] * B[k,n], with A and B int8
// codes (any strides), exact int32 accumulation and the scale epilogue in float64 (one rounding to
// float32). Compiled at first use by Inductor's own C++ code cache (its compiler and flags).
//
// Why a kernel of our own: on x86 CPUs without VNNI (AVX2 only, e.g. AMD Zen 3) aten._int_mm has
// no fast path (measured 20-50x slower than the float32 mm), and oneDNN's u8s8 linear pays a weight
// prepack and primitive set-up per call. This kernel is the classic pre-VNNI int8 GEMM: A is
// shifted to unsigned (a + off, compensated with off * column sums of B), `vpmaddubsw` multiplies
// 32 u8 x s8 pairs per instruction into int16 pair sums, which are accumulated in int16 for S
// k-steps (S chosen by the caller so that no int16 sum can saturate for the codes' bounds) and then
// widened to int32 with `vpmaddwd` by ones. B is packed in 16-column panels of 4-byte k-groups.
#include <cstdint>
#include <cstring>
#include <algorithm>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t NR = 16;  // columns per B panel (two 8-lane int32 registers)

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Bp: [N/16 panels][Kp/4][16 cols][4 k] int8; colsum: [Np] int32 (sum over k of B[k, n]).
// Loop order k-group -> column -> k: the writes are sequential, and both layouts read well: a
// column-major B (a transposed weight, sbk == 1) gives 4 contiguous bytes per column, a row-major
// B (sbn == 1) 16 contiguous bytes per k whose cache lines serve the next columns.
void pack_b(const int8_t* B, int64_t K, int64_t N, int64_t sbk, int64_t sbn, int8_t* Bp, int32_t* colsum) {
  const int64_t Kp = round_up(K, 4), Np = round_up(N, NR), panels = Np / NR;
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < panels; ++p) {
    int8_t* dst = Bp + p * Kp * NR;
    int32_t sum[NR] = {0};
#if defined(__AVX2__)
    // Column sums of the fast paths: vpmaddubsw by ones adds each column's 4 bytes pairwise,
    // vpmaddwd by ones finishes the 4-sum (8 columns per register).
    const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
    __m256i vsum0 = _mm256_setzero_si256(), vsum1 = _mm256_setzero_si256();
    auto add_sums = [&](const int8_t* d) {
      const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(d));
      const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(d + 32));
      vsum0 = _mm256_add_epi32(vsum0, _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, lo), ones16));
      vsum1 = _mm256_add_epi32(vsum1, _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, hi), ones16));
    };
#endif
    const int64_t cols = std::min<int64_t>(NR, N - p * NR);
    for (int64_t k4 = 0; k4 < Kp; k4 += 4) {
      int8_t* d = dst + k4 * NR;
#if defined(__AVX2__)
      if (cols == NR && k4 + 4 <= K && sbk == 1) {  // column-major B: 4 contiguous bytes a column
        for (int64_t j = 0; j < NR; ++j) std::memcpy(d + j * 4, B + (p * NR + j) * sbn + k4, 4);
        add_sums(d);
        continue;
      }
#endif
#if defined(__AVX2__)
      if (cols == NR && k4 + 4 <= K && sbn == 1) {  // row-major B: a 4x16 byte transpose in registers
        const int8_t* src = B + k4 * sbk + p * NR;
        const __m128i r0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
        const __m128i r1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + sbk));
        const __m128i r2 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * sbk));
        const __m128i r3 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 3 * sbk));
        const __m128i t0 = _mm_unpacklo_epi8(r0, r1), t1 = _mm_unpackhi_epi8(r0, r1);
        const __m128i t2 = _mm_unpacklo_epi8(r2, r3), t3 = _mm_unpackhi_epi8(r2, r3);
        const __m128i o[4] = {_mm_unpacklo_epi16(t0, t2), _mm_unpackhi_epi16(t0, t2), _mm_unpacklo_epi16(t1, t3),
                              _mm_unpackhi_epi16(t1, t3)};
        for (int q = 0; q < 4; ++q) _mm_storeu_si128(reinterpret_cast<__m128i*>(d + q * 16), o[q]);
        add_sums(d);
        continue;
      }
#endif
      for (int64_t j = 0; j < NR; ++j) {
        for (int64_t kk = 0; kk < 4; ++kk) {
          const int64_t k = k4 + kk;
          const int8_t v = (j < cols && k < K) ? B[k * sbk + (p * NR + j) * sbn] : 0;
          d[j * 4 + kk] = v;
          sum[j] += v;
        }
      }
    }
#if defined(__AVX2__)
    int32_t vs[NR];
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(vs), vsum0);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(vs + 8), vsum1);
    for (int64_t j = 0; j < NR; ++j) sum[j] += vs[j];
#endif
    for (int64_t j = 0; j < NR; ++j) colsum[p * NR + j] = sum[j];
  }
}

// Ap: [M][Kp] uint8 = A + off (padding: off; its B rows are zero). A transposed A (sak != 1, the
// wgrad's dY^T) is copied in 64-wide k tiles, so each cache line of A read serves 64 rows.
void pack_a(const int8_t* A, int64_t M, int64_t K, int64_t sam, int64_t sak, int32_t off, uint8_t* Ap) {
  const int64_t Kp = round_up(K, 4);
  if (sak == 1) {
#pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < M; ++m) {
      uint8_t* dst = Ap + m * Kp;
      const int8_t* src = A + m * sam;
      for (int64_t k = 0; k < K; ++k) dst[k] = static_cast<uint8_t>(src[k] + off);
      for (int64_t k = K; k < Kp; ++k) dst[k] = static_cast<uint8_t>(off);
    }
    return;
  }
  constexpr int64_t KT = 64, MT = 256;
  const int64_t mtiles = (M + MT - 1) / MT;
#pragma omp parallel for schedule(static)
  for (int64_t mt = 0; mt < mtiles; ++mt) {
    const int64_t m_end = std::min(M, (mt + 1) * MT);
    for (int64_t k0 = 0; k0 < Kp; k0 += KT) {
      const int64_t k_end = std::min(K, k0 + KT);
      for (int64_t m = mt * MT; m < m_end; ++m) {
        uint8_t* dst = Ap + m * Kp;
        const int8_t* src = A + m * sam;
        for (int64_t k = k0; k < k_end; ++k) dst[k] = static_cast<uint8_t>(src[k * sak] + off);
        for (int64_t k = std::max(k0, K); k < std::min(Kp, k0 + KT); ++k) dst[k] = static_cast<uint8_t>(off);
      }
    }
  }
}

// C[m, n0:n0+16] = (acc - off * colsum) * rs[m] * cs[n], in float64 (exact sums, products
// rounded as the reference's `acc.double() * rs * cs`), then rounded once to float32.
inline void epilogue(const int32_t* acc, int64_t m, int64_t n0, int64_t M, int64_t N, const int32_t* colsum,
                     int32_t off, const float* rs, const float* cs, float* C) {
  if (m >= M) return;
  const double r = rs[m];
  float* out = C + m * N + n0;
#if defined(__AVX2__)
  if (n0 + NR <= N) {
    const __m256d rv = _mm256_set1_pd(r);
    const __m128i offv = _mm_set1_epi32(off);
    for (int64_t j = 0; j < NR; j += 4) {
      const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(acc + j));
      const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(colsum + n0 + j));
      const __m128i exact = _mm_sub_epi32(a, _mm_mullo_epi32(offv, c));
      __m256d v = _mm256_mul_pd(_mm256_cvtepi32_pd(exact), rv);
      v = _mm256_mul_pd(v, _mm256_cvtps_pd(_mm_loadu_ps(cs + n0 + j)));
      _mm_storeu_ps(out + j, _mm256_cvtpd_ps(v));
    }
    return;
  }
#endif
  for (int64_t j = 0; j < NR && n0 + j < N; ++j) {
    const int32_t exact = acc[j] - off * colsum[n0 + j];
    out[j] = static_cast<float>(static_cast<double>(exact) * r * static_cast<double>(cs[n0 + j]));
  }
}

#if defined(__AVX2__)
template <int MR>
void micro(const uint8_t* Ap, int64_t Kp, const int8_t* panel, int64_t S, int32_t acc_out[MR][NR]) {
  const int64_t k4s = Kp / 4;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc32[MR][2];
  for (int r = 0; r < MR; ++r) acc32[r][0] = acc32[r][1] = _mm256_setzero_si256();
  for (int64_t k0 = 0; k0 < k4s; k0 += S) {
    const int64_t k1 = std::min(k4s, k0 + S);
    __m256i acc16[MR][2];
    for (int r = 0; r < MR; ++r) acc16[r][0] = acc16[r][1] = _mm256_setzero_si256();
#pragma GCC unroll 4
    for (int64_t k = k0; k < k1; ++k) {
      const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(panel + k * NR * 4));
      const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(panel + k * NR * 4 + 32));
      for (int r = 0; r < MR; ++r) {
        int32_t a4;
        std::memcpy(&a4, Ap + r * Kp + k * 4, 4);
        const __m256i a = _mm256_set1_epi32(a4);
        acc16[r][0] = _mm256_add_epi16(acc16[r][0], _mm256_maddubs_epi16(a, b0));
        acc16[r][1] = _mm256_add_epi16(acc16[r][1], _mm256_maddubs_epi16(a, b1));
      }
    }
    for (int r = 0; r < MR; ++r) {
      acc32[r][0] = _mm256_add_epi32(acc32[r][0], _mm256_madd_epi16(acc16[r][0], ones));
      acc32[r][1] = _mm256_add_epi32(acc32[r][1], _mm256_madd_epi16(acc16[r][1], ones));
    }
  }
  for (int r = 0; r < MR; ++r) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc_out[r]), acc32[r][0]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc_out[r] + 8), acc32[r][1]);
  }
}
#else
template <int MR>
void micro(const uint8_t* Ap, int64_t Kp, const int8_t* panel, int64_t S, int32_t acc_out[MR][NR]) {
  (void)S;
  for (int r = 0; r < MR; ++r)
    for (int64_t j = 0; j < NR; ++j) {
      int32_t s = 0;
      for (int64_t k = 0; k < Kp; ++k) s += int32_t(Ap[r * Kp + k]) * int32_t(panel[(k / 4) * NR * 4 + j * 4 + k % 4]);
      acc_out[r][j] = s;
    }
}
#endif

template <int MR>
void block(const uint8_t* Ap, int64_t m0, int64_t Kp, const int8_t* panel, int64_t n0, int64_t M, int64_t N,
           const int32_t* colsum, int32_t off, int64_t S, const float* rs, const float* cs, float* C) {
  int32_t acc[MR][NR];
  micro<MR>(Ap + m0 * Kp, Kp, panel, S, acc);
  for (int r = 0; r < MR; ++r) epilogue(acc[r], m0 + r, n0, M, N, colsum, off, rs, cs, C);
}

}  // namespace

extern "C" {

int qc_int8_mm_has_avx2() {
#if defined(__AVX2__)
  return 1;
#else
  return 0;
#endif
}

// Workspaces (caller-allocated): Bp of round_up(N,16)*round_up(K,4) bytes, colsum of
// round_up(N,16) int32, Ap of M*round_up(K,4) bytes.
void qc_int8_mm(const int8_t* A, int64_t M, int64_t K, int64_t sam, int64_t sak, const int8_t* B, int64_t N,
                int64_t sbk, int64_t sbn, const float* rs, const float* cs, float* C, int32_t off, int64_t S,
                int8_t* Bp, int32_t* colsum, uint8_t* Ap) {
  const int64_t Kp = round_up(K, 4), Np = round_up(N, NR), panels = Np / NR;
  pack_b(B, K, N, sbk, sbn, Bp, colsum);
  pack_a(A, M, K, sam, sak, off, Ap);
  constexpr int MR = 4;
  constexpr int64_t MC = 64;  // rows per task: their packed A (MC*Kp bytes) stays in L2
  const int64_t chunks = (M + MC - 1) / MC;
  // Tasks are (row chunk, B panel) pairs; inside one, the panel (Kp*16 bytes) stays in L1 while
  // the chunk's row blocks stream by.
#pragma omp parallel for schedule(static) collapse(2)
  for (int64_t c = 0; c < chunks; ++c) {
    for (int64_t p = 0; p < panels; ++p) {
      const int8_t* panel = Bp + p * Kp * NR;
      const int64_t m_end = std::min(M, (c + 1) * MC);
      for (int64_t m0 = c * MC; m0 < m_end; m0 += MR) {
        switch (std::min<int64_t>(MR, m_end - m0)) {
          case 4: block<4>(Ap, m0, Kp, panel, p * NR, M, N, colsum, off, S, rs, cs, C); break;
          case 3: block<3>(Ap, m0, Kp, panel, p * NR, M, N, colsum, off, S, rs, cs, C); break;
          case 2: block<2>(Ap, m0, Kp, panel, p * NR, M, N, colsum, off, S, rs, cs, C); break;
          default: block<1>(Ap, m0, Kp, panel, p * NR, M, N, colsum, off, S, rs, cs, C); break;
        }
      }
    }
  }
}

}  // extern "C"
