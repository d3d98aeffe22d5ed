/* Arithmetic peak of one core, measured (benchmarks/flops.py compiles and runs this).

   12 independent accumulator chains per instruction kind keep both FMA pipes busy past the
   instruction latency; the time is this thread's CPU time, so other processes sharing the core
   do not lower the figure. Prints GFLOP/s per CPU-second:
     fp32 fma512: vfmadd231ps zmm, 16 lanes x 2 FLOP = 32 FLOP per instruction
     fp32 fma256: vfmadd231ps ymm (what AVX2 code gets), 16 FLOP per instruction
     bf16 dp512:  vdpbf16ps zmm (AVX512_BF16), 32 bf16 products summed pairwise into 16 fp32
                  lanes, 64 FLOP per instruction */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

#define N 12
#define ITERS 20000000L

static double cpu_now(void) {
  struct timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

static void fma512(void) {
  __m512 a[N], b = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
  for (int i = 0; i < N; i++) a[i] = _mm512_set1_ps((float)i);
  double t0 = cpu_now();
  for (long k = 0; k < ITERS; k++) {
#pragma GCC unroll 12
    for (int i = 0; i < N; i++) a[i] = _mm512_fmadd_ps(a[i], b, c);
  }
  double t = cpu_now() - t0;
  float s = 0;
  for (int i = 0; i < N; i++) s += _mm512_reduce_add_ps(a[i]);
  printf("fp32 fma512 %.1f GFLOP/s (checksum %g)\n", ITERS * N * 32.0 / t / 1e9, s);
}

static void fma256(void) {
  __m256 a[N], b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
  for (int i = 0; i < N; i++) a[i] = _mm256_set1_ps((float)i);
  double t0 = cpu_now();
  for (long k = 0; k < ITERS; k++) {
#pragma GCC unroll 12
    for (int i = 0; i < N; i++) a[i] = _mm256_fmadd_ps(a[i], b, c);
  }
  double t = cpu_now() - t0;
  float s = 0, out[8];
  for (int i = 0; i < N; i++) {
    _mm256_storeu_ps(out, a[i]);
    for (int j = 0; j < 8; j++) s += out[j];
  }
  printf("fp32 fma256 %.1f GFLOP/s (checksum %g)\n", ITERS * N * 16.0 / t / 1e9, s);
}

static void dpbf16(void) {
  __m512 a[N];
  __m512bh x = (__m512bh)_mm512_set1_epi16(0x3f80), y = (__m512bh)_mm512_set1_epi16(0x3f80);
  for (int i = 0; i < N; i++) a[i] = _mm512_setzero_ps();
  double t0 = cpu_now();
  for (long k = 0; k < ITERS; k++) {
#pragma GCC unroll 12
    for (int i = 0; i < N; i++) a[i] = _mm512_dpbf16_ps(a[i], x, y);
  }
  double t = cpu_now() - t0;
  float s = 0;
  for (int i = 0; i < N; i++) s += _mm512_reduce_add_ps(a[i]);
  printf("bf16 dp512 %.1f GFLOP/s (checksum %g)\n", ITERS * N * 64.0 / t / 1e9, s);
}

int main(void) {
  fma512();
  fma256();
  dpbf16();
  return 0;
}
