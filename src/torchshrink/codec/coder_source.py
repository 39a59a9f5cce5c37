"""C source of the compiled entropy coders (`codec.native`): the same rANS and Huffman
streams `codec.ans` and `codec.huffman` write and read with NumPy, one symbol at a time.

Each coder's state is sequential per lane or chunk, so NumPy has to advance all lanes with one
array operation per step (tens of thousands of Python-level steps on a large tensor); in C the
same loop runs at a few nanoseconds a symbol. Symbols come in and go out as 1-, 2- or 8-byte
integers (`sw`/`ow`), so no tensor-sized int64 copy is needed. Every function returns a
negative code on bad input instead of reading or writing out of bounds.
"""

SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>

static inline int64_t get_sym(const void *p, int w, int64_t i) {
    return w == 1 ? ((const uint8_t *)p)[i] : w == 2 ? ((const uint16_t *)p)[i] : ((const int64_t *)p)[i];
}

static inline void put_sym(void *p, int w, int64_t i, int64_t v) {
    if (w == 1) ((uint8_t *)p)[i] = (uint8_t)v;
    else if (w == 2) ((uint16_t *)p)[i] = (uint16_t)v;
    else ((int64_t *)p)[i] = v;
}

/* Interleaved rANS, 16-bit frequencies, 32-bit states in [2^16, 2^32), 16-bit words.
   Symbol i belongs to lane i % lanes at step i / lanes. Steps are coded last to first, lanes
   high to low, and the words reversed at the end, so the decoder reads them step by step,
   lanes low to high. Returns the number of words, -1 if `cap` is too small, -2 on a symbol
   outside the table or with zero frequency. */
int64_t ts_rans_encode(const void *sym, int sw, int64_t n, const uint32_t *freq,
                       const uint32_t *cum, int64_t a, int64_t lanes, uint32_t *states,
                       uint16_t *words, int64_t cap) {
    int64_t steps = (n + lanes - 1) / lanes, k = 0;
    for (int64_t j = 0; j < lanes; j++) states[j] = 1u << 16;
    for (int64_t t = steps - 1; t >= 0; t--) {
        int64_t r = t == steps - 1 ? n - t * lanes : lanes;
        for (int64_t j = r - 1; j >= 0; j--) {
            int64_t s = get_sym(sym, sw, t * lanes + j);
            if (s < 0 || s >= a || freq[s] == 0) return -2;
            uint32_t f = freq[s], x = states[j];
            if ((uint64_t)x >= ((uint64_t)f << 16)) {
                if (k >= cap) return -1;
                words[k++] = (uint16_t)(x & 0xFFFF);
                x >>= 16;
            }
            states[j] = ((x / f) << 16) + (x % f) + cum[s];
        }
    }
    for (int64_t i = 0, e = k - 1; i < e; i++, e--) {
        uint16_t tmp = words[i];
        words[i] = words[e];
        words[e] = tmp;
    }
    return k;
}

/* Inverse of ts_rans_encode, for steps [t0, t1) (a caller may decode a long stream in
   parts); `lut` maps each of the 2^16 slots to its symbol. `states` carries the lanes from one
   part to the next, *ptr the words read so far; `words` is read bytewise (little-endian), so
   it may sit at any address. Returns 0, -1 on a truncated stream, -3 on a bad state. */
int64_t ts_rans_decode(uint32_t *states, int64_t lanes, const uint8_t *words, int64_t nw,
                       const uint32_t *freq, const uint32_t *cum, const uint16_t *lut,
                       int64_t n, void *out, int ow, int64_t t0, int64_t t1, int64_t *ptr_io) {
    int64_t steps = (n + lanes - 1) / lanes, ptr = *ptr_io;
    if (t1 > steps) t1 = steps;
    if (t0 == 0)
        for (int64_t j = 0; j < lanes; j++)
            if (states[j] < (1u << 16)) return -3;
    for (int64_t t = t0; t < t1; t++) {
        int64_t r = t == steps - 1 ? n - t * lanes : lanes;
        for (int64_t j = 0; j < r; j++) {
            uint32_t x = states[j], slot = x & 0xFFFF;
            uint32_t s = lut[slot];
            put_sym(out, ow, t * lanes + j, s);
            uint64_t y = (uint64_t)freq[s] * (x >> 16) + slot - cum[s];
            if (y < (1u << 16)) {
                if (ptr >= nw) return -1;
                y = (y << 16) | (uint32_t)words[2 * ptr] | ((uint32_t)words[2 * ptr + 1] << 8);
                ptr++;
            }
            if (y >> 32) return -3;
            states[j] = (uint32_t)y;
        }
    }
    *ptr_io = ptr;
    return 0;
}

/* Canonical Huffman, MSB-first bits (np.packbits order), last byte zero-padded. The symbols
   are cut into chunks of `per`; chunk_bits[c] receives the bit length of chunk c (all but
   the last). Returns the number of bytes written, -1 if `cap` is too small, -2 on a symbol
   without a code. */
int64_t ts_huff_encode(const void *sym, int sw, int64_t n, const uint8_t *len, const uint32_t *code,
                       int64_t a, int64_t per, int64_t *chunk_bits, uint8_t *out, int64_t cap) {
    uint64_t acc = 0;
    int nbits = 0;
    int64_t pos = 0, total = 0, mark = 0;
    for (int64_t i = 0; i < n; i++) {
        if (per > 0 && i > 0 && i % per == 0) {
            chunk_bits[i / per - 1] = total - mark;
            mark = total;
        }
        int64_t s = get_sym(sym, sw, i);
        if (s < 0 || s >= a || len[s] == 0) return -2;
        int l = len[s];
        acc = (acc << l) | code[s];
        nbits += l;
        total += l;
        while (nbits >= 8) {
            if (pos >= cap) return -1;
            out[pos++] = (uint8_t)(acc >> (nbits - 8));
            nbits -= 8;
        }
        acc &= (nbits ? ((1ull << nbits) - 1) : 0);
    }
    if (nbits) {
        if (pos >= cap) return -1;
        out[pos++] = (uint8_t)(acc << (8 - nbits));
    }
    return pos;
}

/* Inverse of ts_huff_encode, for chunks [c0, c1): chunk c starts at bit starts[c] and holds
   min(per, n - c*per) symbols. lut_sym/lut_len index every ml-bit window (ml <= 17); lut_sym < 0 marks an
   invalid code. Returns 0, -1 on a truncated stream, -3 on an invalid code. */
int64_t ts_huff_decode(const uint8_t *data, int64_t nbytes, const int32_t *lut_sym,
                       const uint8_t *lut_len, int ml, int64_t n, int64_t chunks, int64_t per,
                       const int64_t *starts, void *out, int ow, int64_t c0, int64_t c1) {
    int64_t nbits = nbytes * 8;
    uint32_t mask = (1u << ml) - 1;
    if (c1 > chunks) c1 = chunks;
    for (int64_t c = c0; c < c1; c++) {
        int64_t pos = starts[c], first = c * per, count = n - first < per ? n - first : per;
        for (int64_t k = 0; k < count; k++) {
            if (pos < 0 || pos + 1 > nbits) return -1;
            int64_t b = pos >> 3;
            uint32_t word = (uint32_t)data[b] << 16;
            if (b + 1 < nbytes) word |= (uint32_t)data[b + 1] << 8;
            if (b + 2 < nbytes) word |= data[b + 2];
            uint32_t win = (word >> (24 - (pos & 7) - ml)) & mask;
            int32_t s = lut_sym[win];
            if (s < 0) return -3;
            put_sym(out, ow, first + k, s);
            pos += lut_len[win];
        }
        if (pos > nbits) return -1;
    }
    return 0;
}
"""
