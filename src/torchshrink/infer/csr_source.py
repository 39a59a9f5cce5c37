"""The C source of the compact CSR kernel (`infer.kernels` compiles and loads it).

Layout: y (B, n_out) = x (B, n_in) W^T + bias, with W as CSR rows whose column indices are
uint16 and whose values are fp32 (`ts_csr_f32`) or uint8 indices into a float table
(`ts_csr_code`). `rowptr` holds n_blocks consecutive row-pointer arrays, one per column block,
so the slice of x a block gathers from stays in L1 cache; block 0 adds the bias, later blocks
accumulate. At batch 1 `xt` is x itself; at batch > 1 it is x transposed (n_in, B), so one
nonzero's B inputs are contiguous.

Why it is fast at batch 1: the layer is bound by reading the weights, and the rest is the
gather `x[cols[j]]`. Scalar code needs three loads per nonzero (column, value, input) and
tops out near one nonzero per cycle; an AVX-512 gather fetches 16 inputs at once, and the
16-entry codebook of Deep Compression's 4-bit sharing is a register lookup (vpermps), so the
loop runs at memory speed on 6 (fp32) or 3 (codebook) bytes per nonzero. The same loop is
written for AVX2 (8 lanes, gathers) and in plain C for other CPUs; which one is compiled is
decided by the compiler's target macros (the library is built with -march=native).

Rows are split between `n_threads` POSIX threads (balanced by nonzeros) when the work is
large enough to pay for starting them.

Summation order differs from a dense matmul (lane-wise partial sums, then a tree), so
results match dense fp32 to float rounding, not bit for bit.
"""

SOURCE = r"""
#include <stdint.h>
#include <pthread.h>
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define TS_AVX512 1
#include <immintrin.h>
#elif defined(__AVX2__) && defined(__FMA__)
#define TS_AVX2 1
#include <immintrin.h>
#endif

#define TS_INLINE static inline __attribute__((always_inline))

/* value kinds: fp32 values, or a codebook looked up in registers (<= 16 or <= 32 entries) or
   from memory (any size up to 256). Passed as compile-time constants so each caller gets its
   own specialised loop. */
enum { K_F32 = 0, K_TAB16 = 1, K_TAB32 = 2, K_TAB = 3 };

typedef struct {
  int64_t n_out, n_blocks, B, r0, r1, n_table; /* n_table 0: fp32 values */
  const int32_t *rowptr;
  const uint16_t *cols;
  const float *vals;
  const uint8_t *codes;
  const float *table;
  const float *xt;
  const float *bias;
  float *y;
} ts_job;

TS_INLINE float value_at(const int kind, const ts_job *jb, int32_t j) {
  return kind == K_F32 ? jb->vals[j] : jb->table[jb->codes[j]];
}

/* The hardware prefetchers lose the stream between rows, so the loops ask for the indices
   and values PREFETCH nonzeros ahead themselves (measured 10-40% faster at batch 1); one
   call per n = 16 or 32 nonzeros, one prefetch per cache line (redundant ones measured slower). */
#define PREFETCH 512
TS_INLINE void prefetch_ahead(const int kind, const ts_job *jb, int32_t j, const int n) {
  __builtin_prefetch(jb->cols + j + PREFETCH);
  if (kind == K_F32) {
    __builtin_prefetch(jb->vals + j + PREFETCH);
    if (n == 32) __builtin_prefetch(jb->vals + j + PREFETCH + 16);
  } else {
    __builtin_prefetch(jb->codes + j + PREFETCH);
  }
}

#if TS_AVX512
TS_INLINE __m512 w16(const int kind, const ts_job *jb, int32_t j, __m512 lo, __m512 hi) {
  if (kind == K_F32) return _mm512_loadu_ps(jb->vals + j);
  __m512i k = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(jb->codes + j)));
  if (kind == K_TAB16) return _mm512_permutexvar_ps(k, lo);
  if (kind == K_TAB32) return _mm512_permutex2var_ps(lo, k, hi);
  return _mm512_i32gather_ps(k, jb->table, 4);
}

TS_INLINE __m512 w16_masked(const int kind, const ts_job *jb, int32_t j, __mmask16 m, __m512 lo, __m512 hi) {
  if (kind == K_F32) return _mm512_maskz_loadu_ps(m, jb->vals + j);
  __m512i k = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, jb->codes + j));
  if (kind == K_TAB16) return _mm512_maskz_permutexvar_ps(m, k, lo);
  if (kind == K_TAB32) return _mm512_maskz_permutex2var_ps(m, lo, k, hi);
  return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, k, jb->table, 4);
}

TS_INLINE __m512i cols16(const uint16_t *c) {
  return _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)c));
}

/* one row's dot product with x at batch 1: two 16-lane accumulators, a masked tail */
TS_INLINE float dot1(const int kind, const ts_job *jb, int32_t s, int32_t e, __m512 lo, __m512 hi) {
  const float *x = jb->xt;
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  int32_t j = s;
  if (kind == K_F32) {
    /* peel up to 15 nonzeros so the 64-byte value loads are aligned: unaligned, every one of
       them splits across two cache lines (measured up to 25% slower) */
    int32_t head = (int32_t)(((0u - (uintptr_t)(jb->vals + j)) & 63u) >> 2);
    if (head > e - j) head = e - j;
    if (head) {
      const __mmask16 m = (__mmask16)((1u << head) - 1u);
      const __m512i c = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, jb->cols + j));
      a1 = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, jb->vals + j), _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, c, x, 4));
      j += head;
    }
  }
  for (; j + 32 <= e; j += 32) {
    prefetch_ahead(kind, jb, j, 32);
    __m512 x0 = _mm512_i32gather_ps(cols16(jb->cols + j), x, 4);
    __m512 x1 = _mm512_i32gather_ps(cols16(jb->cols + j + 16), x, 4);
    a0 = _mm512_fmadd_ps(w16(kind, jb, j, lo, hi), x0, a0);
    a1 = _mm512_fmadd_ps(w16(kind, jb, j + 16, lo, hi), x1, a1);
  }
  for (; j < e; j += 16) {
    int32_t rem = e - j;
    __mmask16 m = rem >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << rem) - 1u);
    __m512i c = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, jb->cols + j));
    __m512 xv = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, c, x, 4);
    a0 = _mm512_fmadd_ps(w16_masked(kind, jb, j, m, lo, hi), xv, a0);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

/* one row at batch > 1: batch columns [b0, b0 + nb), nb <= LANES, summed into acc; four
   accumulators break the FMA dependency chain */
#define LANES 16
TS_INLINE void dotb(const int kind, const ts_job *jb, int32_t s, int32_t e, int64_t b0, int64_t nb, float *acc) {
  const int64_t B = jb->B;
  const __mmask16 bm = (__mmask16)((1u << nb) - 1u);
  const float *xb = jb->xt + b0;
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
  int32_t j = s;
  for (; j + 4 <= e; j += 4) {
    a0 = _mm512_fmadd_ps(_mm512_set1_ps(value_at(kind, jb, j)), _mm512_maskz_loadu_ps(bm, xb + (int64_t)jb->cols[j] * B), a0);
    a1 = _mm512_fmadd_ps(_mm512_set1_ps(value_at(kind, jb, j + 1)), _mm512_maskz_loadu_ps(bm, xb + (int64_t)jb->cols[j + 1] * B), a1);
    a2 = _mm512_fmadd_ps(_mm512_set1_ps(value_at(kind, jb, j + 2)), _mm512_maskz_loadu_ps(bm, xb + (int64_t)jb->cols[j + 2] * B), a2);
    a3 = _mm512_fmadd_ps(_mm512_set1_ps(value_at(kind, jb, j + 3)), _mm512_maskz_loadu_ps(bm, xb + (int64_t)jb->cols[j + 3] * B), a3);
  }
  for (; j < e; ++j)
    a0 = _mm512_fmadd_ps(_mm512_set1_ps(value_at(kind, jb, j)), _mm512_maskz_loadu_ps(bm, xb + (int64_t)jb->cols[j] * B), a0);
  _mm512_storeu_ps(acc, _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}
#elif TS_AVX2
TS_INLINE float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

/* 8 values: fp32 loaded, or codes looked up. A table of <= 16 entries sits in two registers
   (entries 0-7 and 8-15): two in-register permutes and a blend on the code's bit 3 replace a
   gather from memory, which AMD's Zen cores run slowly (measured 3.0x -> see the README). */
TS_INLINE __m256 w8(const int kind, const ts_job *jb, int32_t j, __m256 lo, __m256 hi) {
  if (kind == K_F32) return _mm256_loadu_ps(jb->vals + j);
  __m256i k = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(jb->codes + j)));
  if (kind == K_TAB16)
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, k), _mm256_permutevar8x32_ps(hi, k),
                            _mm256_castsi256_ps(_mm256_slli_epi32(k, 28)));
  return _mm256_i32gather_ps(jb->table, k, 4);
}

TS_INLINE float dot1(const int kind, const ts_job *jb, int32_t s, int32_t e, __m256 lo, __m256 hi) {
  const float *x = jb->xt;
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int32_t j = s;
  for (; j + 16 <= e; j += 16) {
    prefetch_ahead(kind, jb, j, 16);
    __m256i c0 = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(jb->cols + j)));
    __m256i c1 = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(jb->cols + j + 8)));
    a0 = _mm256_fmadd_ps(w8(kind, jb, j, lo, hi), _mm256_i32gather_ps(x, c0, 4), a0);
    a1 = _mm256_fmadd_ps(w8(kind, jb, j + 8, lo, hi), _mm256_i32gather_ps(x, c1, 4), a1);
  }
  float t = hsum8(_mm256_add_ps(a0, a1));
  for (; j < e; ++j) t += value_at(kind, jb, j) * x[jb->cols[j]];
  return t;
}

#define LANES 8
TS_INLINE void dotb(const int kind, const ts_job *jb, int32_t s, int32_t e, int64_t b0, int64_t nb, float *acc) {
  const int64_t B = jb->B;
  const __m256i bm = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)nb), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  const float *xb = jb->xt + b0;
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
  int32_t j = s;
  for (; j + 4 <= e; j += 4) {
    a0 = _mm256_fmadd_ps(_mm256_set1_ps(value_at(kind, jb, j)), _mm256_maskload_ps(xb + (int64_t)jb->cols[j] * B, bm), a0);
    a1 = _mm256_fmadd_ps(_mm256_set1_ps(value_at(kind, jb, j + 1)), _mm256_maskload_ps(xb + (int64_t)jb->cols[j + 1] * B, bm), a1);
    a2 = _mm256_fmadd_ps(_mm256_set1_ps(value_at(kind, jb, j + 2)), _mm256_maskload_ps(xb + (int64_t)jb->cols[j + 2] * B, bm), a2);
    a3 = _mm256_fmadd_ps(_mm256_set1_ps(value_at(kind, jb, j + 3)), _mm256_maskload_ps(xb + (int64_t)jb->cols[j + 3] * B, bm), a3);
  }
  for (; j < e; ++j)
    a0 = _mm256_fmadd_ps(_mm256_set1_ps(value_at(kind, jb, j)), _mm256_maskload_ps(xb + (int64_t)jb->cols[j] * B, bm), a0);
  _mm256_storeu_ps(acc, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
}
#else
TS_INLINE float dot1(const int kind, const ts_job *jb, int32_t s, int32_t e, int unused0, int unused1) {
  (void)unused0; (void)unused1;
  const float *x = jb->xt;
  float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
  int32_t j = s;
  for (; j + 4 <= e; j += 4) {
    a0 += value_at(kind, jb, j) * x[jb->cols[j]];
    a1 += value_at(kind, jb, j + 1) * x[jb->cols[j + 1]];
    a2 += value_at(kind, jb, j + 2) * x[jb->cols[j + 2]];
    a3 += value_at(kind, jb, j + 3) * x[jb->cols[j + 3]];
  }
  for (; j < e; ++j) a0 += value_at(kind, jb, j) * x[jb->cols[j]];
  return (a0 + a1) + (a2 + a3);
}

#define LANES 8
/* eight named accumulators: an array indexed in a loop was kept in memory by gcc, a
   load-add-store chain per nonzero (measured 10x slower than this) */
TS_INLINE void dotb(const int kind, const ts_job *jb, int32_t s, int32_t e, int64_t b0, int64_t nb, float *acc) {
  const int64_t B = jb->B;
  float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f, a4 = 0.f, a5 = 0.f, a6 = 0.f, a7 = 0.f;
  if (nb == LANES) {
    for (int32_t j = s; j < e; ++j) {
      const float v = value_at(kind, jb, j);
      const float *xr = jb->xt + (int64_t)jb->cols[j] * B + b0;
      a0 += v * xr[0]; a1 += v * xr[1]; a2 += v * xr[2]; a3 += v * xr[3];
      a4 += v * xr[4]; a5 += v * xr[5]; a6 += v * xr[6]; a7 += v * xr[7];
    }
    acc[0] = a0; acc[1] = a1; acc[2] = a2; acc[3] = a3; acc[4] = a4; acc[5] = a5; acc[6] = a6; acc[7] = a7;
    return;
  }
  for (int64_t b = 0; b < nb; ++b) {
    float t0 = 0.f, t1 = 0.f;
    int32_t j = s;
    for (; j + 2 <= e; j += 2) {
      t0 += value_at(kind, jb, j) * jb->xt[(int64_t)jb->cols[j] * B + b0 + b];
      t1 += value_at(kind, jb, j + 1) * jb->xt[(int64_t)jb->cols[j + 1] * B + b0 + b];
    }
    if (j < e) t0 += value_at(kind, jb, j) * jb->xt[(int64_t)jb->cols[j] * B + b0 + b];
    acc[b] = t0 + t1;
  }
}
#endif

TS_INLINE void rows(const int kind, const ts_job *jb) {
  const int64_t n_out = jb->n_out, B = jb->B;
#if TS_AVX512
  __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
  if (kind == K_TAB16 || kind == K_TAB32) {
    int64_t n_lo = jb->n_table < 16 ? jb->n_table : 16;
    lo = _mm512_maskz_loadu_ps((__mmask16)((1u << n_lo) - 1u), jb->table);
    if (jb->n_table > 16) hi = _mm512_maskz_loadu_ps((__mmask16)((1u << (jb->n_table - 16)) - 1u), jb->table + 16);
  }
#elif TS_AVX2
  __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
  if (kind == K_TAB16) {
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    lo = _mm256_maskload_ps(jb->table, _mm256_cmpgt_epi32(_mm256_set1_epi32((int)jb->n_table), iota));
    if (jb->n_table > 8)
      hi = _mm256_maskload_ps(jb->table + 8, _mm256_cmpgt_epi32(_mm256_set1_epi32((int)jb->n_table - 8), iota));
  }
#else
  const int lo = 0, hi = 0;
#endif
  for (int64_t blk = 0; blk < jb->n_blocks; ++blk) {
    const int32_t *rp = jb->rowptr + blk * (n_out + 1);
    for (int64_t r = jb->r0; r < jb->r1; ++r) {
      const int32_t s = rp[r], e = rp[r + 1];
      const float base = blk ? 0.f : (jb->bias ? jb->bias[r] : 0.f);
      if (B == 1) {
        const float t = dot1(kind, jb, s, e, lo, hi);
        jb->y[r] = blk ? jb->y[r] + t : t + base;
        continue;
      }
      for (int64_t b0 = 0; b0 < B; b0 += LANES) {
        const int64_t nb = B - b0 < LANES ? B - b0 : LANES;
        float acc[LANES];
        dotb(kind, jb, s, e, b0, nb, acc);
        for (int64_t b = 0; b < nb; ++b) {
          float *yo = jb->y + (b0 + b) * n_out + r;
          *yo = blk ? *yo + acc[b] : acc[b] + base;
        }
      }
    }
  }
}

static void *run_job(void *arg) {
  const ts_job *jb = (const ts_job *)arg;
  if (jb->n_table == 0) rows(K_F32, jb);
#if TS_AVX512
  else if (jb->n_table <= 16) rows(K_TAB16, jb);
  else if (jb->n_table <= 32) rows(K_TAB32, jb);
#elif TS_AVX2
  else if (jb->n_table <= 16) rows(K_TAB16, jb);
#endif
  else rows(K_TAB, jb);
  return 0;
}

/* nonzeros in rows [0, r) over all column blocks: monotone in r, so threads can split rows by
   work with a binary search */
static int64_t nnz_before(const ts_job *jb, int64_t r) {
  int64_t t = 0;
  for (int64_t blk = 0; blk < jb->n_blocks; ++blk) {
    const int32_t *rp = jb->rowptr + blk * (jb->n_out + 1);
    t += rp[r] - rp[0];
  }
  return t;
}

#define TS_MAX_THREADS 64
#define TS_WORK_PER_THREAD 131072 /* nonzeros x batch: below this a thread costs more than it saves */

/* Every job runs through this pointer, on the calling thread too: a direct call lets the
   compiler inline or clone run_job for that call site and reassociate its sums differently
   (-fassociative-math), so a row's bits would depend on the thread count (measured). */
static void *(*volatile job_entry)(void *) = run_job;

static void run(ts_job *jb, int64_t n_threads) {
  const int64_t total = nnz_before(jb, jb->n_out);
  const int64_t worth = total * jb->B / TS_WORK_PER_THREAD;
  if (n_threads > worth) n_threads = worth;
  if (n_threads > TS_MAX_THREADS) n_threads = TS_MAX_THREADS;
  if (n_threads > jb->n_out) n_threads = jb->n_out;
  if (n_threads <= 1) {
    job_entry(jb);
    return;
  }
  ts_job jobs[TS_MAX_THREADS];
  pthread_t tid[TS_MAX_THREADS];
  int started[TS_MAX_THREADS];
  int64_t r0 = 0;
  for (int64_t t = 0; t < n_threads; ++t) {
    int64_t r1 = jb->n_out;
    if (t + 1 < n_threads) {
      const int64_t want = total * (t + 1) / n_threads;
      int64_t lo = r0, hi = jb->n_out;
      while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (nnz_before(jb, mid) < want) lo = mid + 1; else hi = mid;
      }
      r1 = lo;
    }
    jobs[t] = *jb;
    jobs[t].r0 = r0;
    jobs[t].r1 = r1;
    r0 = r1;
  }
  for (int64_t t = 1; t < n_threads; ++t)
    started[t] = pthread_create(&tid[t], 0, job_entry, &jobs[t]) == 0;
  job_entry(&jobs[0]);
  for (int64_t t = 1; t < n_threads; ++t) {
    if (started[t]) pthread_join(tid[t], 0);
    else job_entry(&jobs[t]); /* no thread to be had: do its rows here */
  }
}

int ts_csr_isa(void) {
#if TS_AVX512
  return 512;
#elif TS_AVX2
  return 256;
#else
  return 0;
#endif
}

void ts_csr_f32(int64_t n_out, int64_t n_blocks, int64_t B, const int32_t *rowptr, const uint16_t *cols,
                const float *vals, const float *xt, const float *bias, float *y, int64_t n_threads) {
  ts_job jb = {n_out, n_blocks, B, 0, n_out, 0, rowptr, cols, vals, 0, 0, xt, bias, y};
  run(&jb, n_threads);
}

void ts_csr_code(int64_t n_out, int64_t n_blocks, int64_t B, const int32_t *rowptr, const uint16_t *cols,
                 const uint8_t *codes, const float *table, int64_t n_table, const float *xt, const float *bias,
                 float *y, int64_t n_threads) {
  ts_job jb = {n_out, n_blocks, B, 0, n_out, n_table, rowptr, cols, 0, codes, table, xt, bias, y};
  run(&jb, n_threads);
}
"""
