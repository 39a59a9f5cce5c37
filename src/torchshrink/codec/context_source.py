"""C source of the context-adaptive sparse coder (`codec.context`), compiled once by
`torchshrink.native`: the same model and range coder as the Python reference, byte for byte."""

SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>

#define PROB_BITS 11
#define ONE (1u << PROB_BITS)
#define MOVE 5
#define TOP (1u << 24)

static const int64_t DENSITY[6] = {1, 3, 6, 10, 20, 35};

static int bucket(int64_t count, int64_t row) {
    int64_t left = (2 * count + 1) * 100, right = 2 * (row + 1);
    int b = 0;
    for (int t = 0; t < 6; t++) b += left >= DENSITY[t] * right;
    return b;
}

static int depth_of(int64_t nv) {
    int d = 0;
    for (int64_t v = nv - 1; v > 0; v >>= 1) d++;
    return d < 1 ? 1 : d;
}

/* The adaptive state both directions start from: every probability at one half. */
typedef struct { int depth; uint16_t sig[56]; uint16_t *tree; int64_t *count; uint8_t *above; } Model;

static void model_free(Model *m) { free(m->tree); free(m->count); free(m->above); }

static int model_init(Model *m, int64_t cols, int64_t nv) {
    m->depth = depth_of(nv);
    int64_t tree_n = (2 * nv + 2) << m->depth;
    m->tree = malloc(sizeof(uint16_t) * tree_n);
    m->count = calloc(cols ? cols : 1, sizeof(int64_t));
    m->above = calloc(cols ? cols : 1, 1);
    if (!m->tree || !m->count || !m->above) { model_free(m); return -1; }
    for (int i = 0; i < 56; i++) m->sig[i] = ONE / 2;
    for (int64_t i = 0; i < tree_n; i++) m->tree[i] = ONE / 2;
    return 0;
}

typedef struct { uint64_t low; uint32_t range; uint8_t cache; uint64_t pending; uint8_t *out; int64_t k, cap; } Enc;

static void shift_low(Enc *e) {
    if ((uint32_t)e->low < 0xFF000000u || (e->low >> 32) != 0) {
        uint8_t carry = (uint8_t)(e->low >> 32), byte = e->cache;
        do {
            if (e->k < e->cap) e->out[e->k] = (uint8_t)(byte + carry);
            e->k++;
            byte = 0xFF;
        } while (--e->pending != 0);
        e->cache = (uint8_t)((e->low >> 24) & 0xFF);
    }
    e->pending++;
    e->low = (e->low & 0x00FFFFFFu) << 8;
}

static void enc_bit(Enc *e, uint16_t *p, int b) {
    uint32_t bound = (e->range >> PROB_BITS) * *p;
    if (b) { e->low += bound; e->range -= bound; *p -= *p >> MOVE; }
    else { e->range = bound; *p += (ONE - *p) >> MOVE; }
    while (e->range < TOP) { e->range <<= 8; shift_low(e); }
}

/* mask: rows x cols of 0/1; vals: the kept values in scan order. Returns the bytes written,
   or -1 when `cap` is too small, -2 when out of memory. */
int64_t ts_ctx_encode(const uint8_t *mask, const int64_t *vals, int64_t rows, int64_t cols, int64_t nv,
                      uint8_t *out, int64_t cap) {
    Model md;
    if (model_init(&md, cols, nv)) return -2;
    Enc e = {0, 0xFFFFFFFFu, 0, 1, out, 0, cap};
    int64_t prev = nv, k = 0;
    for (int64_t i = 0; i < rows; i++) {
        int l1 = 0, l2 = 0;
        const uint8_t *row = mask + i * cols;
        for (int64_t j = 0; j < cols; j++) {
            int s = row[j] != 0;
            int ctx = ((l1 * 2 + l2) * 2 + md.above[j]) * 7 + bucket(md.count[j], i);
            enc_bit(&e, &md.sig[ctx], s);
            if (s) {
                int64_t v = vals[k++], base = (prev * 2 + l1) << md.depth, node = 1;
                for (int d = md.depth - 1; d >= 0; d--) {
                    int b = (int)((v >> d) & 1);
                    enc_bit(&e, &md.tree[base + node], b);
                    node = node * 2 + b;
                }
                prev = v;
                md.count[j]++;
            }
            md.above[j] = (uint8_t)s;
            l2 = l1; l1 = s;
        }
    }
    for (int i = 0; i < 5; i++) shift_low(&e);
    model_free(&md);
    return e.k > cap ? -1 : e.k;
}

/* Returns the number of kept elements written to pos/vals; -1 a value out of range, -2 out of
   memory, -3 more kept elements than `cap`. */
int64_t ts_ctx_decode(const uint8_t *data, int64_t n, int64_t rows, int64_t cols, int64_t nv,
                      int64_t *pos, int64_t *vals, int64_t cap) {
    Model md;
    if (model_init(&md, cols, nv)) return -2;
    uint32_t range = 0xFFFFFFFFu, code = 0;
    for (int i = 1; i < 5; i++) code = (code << 8) | data[i];
    int64_t at = 5, prev = nv, k = 0, rc = 0;
    for (int64_t i = 0; i < rows && rc == 0; i++) {
        int l1 = 0, l2 = 0;
        for (int64_t j = 0; j < cols; j++) {
            int ctx = ((l1 * 2 + l2) * 2 + md.above[j]) * 7 + bucket(md.count[j], i);
            int s;
            /* one adaptive bit, as enc_bit coded it */
            #define DEC_BIT(P, OUT) do { \
                uint16_t *pp = (P); uint32_t bound = (range >> PROB_BITS) * *pp; \
                if (code < bound) { range = bound; *pp += (ONE - *pp) >> MOVE; OUT = 0; } \
                else { code -= bound; range -= bound; *pp -= *pp >> MOVE; OUT = 1; } \
                while (range < TOP) { range <<= 8; code = (code << 8) | (at < n ? data[at] : 0); at++; } \
            } while (0)
            DEC_BIT(&md.sig[ctx], s);
            if (s) {
                int64_t base = (prev * 2 + l1) << md.depth, node = 1;
                for (int d = 0; d < md.depth; d++) { int b; DEC_BIT(&md.tree[base + node], b); node = node * 2 + b; }
                int64_t v = node - ((int64_t)1 << md.depth);
                if (v >= nv) { rc = -1; break; }
                if (k >= cap) { rc = -3; break; }
                pos[k] = i * cols + j; vals[k] = v; k++;
                prev = v;
                md.count[j]++;
            }
            md.above[j] = (uint8_t)s;
            l2 = l1; l1 = s;
        }
    }
    model_free(&md);
    return rc ? rc : k;
}
"""
