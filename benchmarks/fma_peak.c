/* FMA throughput of one core with 256-bit (AVX2) and 512-bit (AVX-512F) vectors: independent
 * chains, so the FMA units, not the latency, bound it. Used to decide whether AVX-512 kernels
 * can pay on a machine (benchmarks/RESULTS.md, eighth session).
 *   cc -O3 -march=x86-64-v4 benchmarks/fma_peak.c -o /tmp/fma_peak && /tmp/fma_peak */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(void) {
  enum { CHAINS = 12 };
  const long n = 20000000;
  __m256 a[CHAINS];
  __m512 z[CHAINS];
  for (int i = 0; i < CHAINS; ++i) a[i] = _mm256_set1_ps((float)i), z[i] = _mm512_set1_ps((float)i);
  const __m256 b = _mm256_set1_ps(1.0001f), c = _mm256_set1_ps(0.999f);
  const __m512 bz = _mm512_set1_ps(1.0001f), cz = _mm512_set1_ps(0.999f);
  double t0 = now();
  for (long i = 0; i < n; ++i) {
    for (int j = 0; j < CHAINS; ++j) a[j] = _mm256_fmadd_ps(a[j], b, c);
    __asm__ volatile("" ::"x"(a[0]));
  }
  const double t256 = now() - t0;
  t0 = now();
  for (long i = 0; i < n; ++i) {
    for (int j = 0; j < CHAINS; ++j) z[j] = _mm512_fmadd_ps(z[j], bz, cz);
    __asm__ volatile("" ::"v"(z[0]));
  }
  const double t512 = now() - t0;
  float s = 0;
  for (int i = 0; i < CHAINS; ++i) s += a[i][0] + z[i][0];
  printf("256-bit FMA: %.1f GFLOPS   512-bit FMA: %.1f GFLOPS   (checksum %g)\n", n * CHAINS * 16.0 / t256 / 1e9,
         n * CHAINS * 32.0 / t512 / 1e9, s);
  return 0;
}
