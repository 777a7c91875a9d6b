/*
 * ocpptool._speedups: the JSON-lines reader's inner loop in C (optional; ocpptool works without it).
 *
 * split_jsonl(chunk, keys, first_line) reads a chunk of whole lines, each a JSON object, and splits every
 * line it fully understands into columns, without the GIL:
 *
 *   - the line is validated as JSON (RFC 8259, strict UTF-8) and the wanted keys' string values are
 *     unescaped;
 *   - the frame (the message key's string) is split in its usual layout, [2,"id","Action",{...}],
 *     [3,"id",{...}] or [6,"id","Action",{...}], and its payload validated as exactly one JSON object;
 *   - the observed time is read when it is strict ISO 8601 with a zone (else handed over as text).
 *
 * Any line it is not sure about (a broken line, escapes in a key, a non-string value, another frame
 * layout, numbers that overflow a double, lone surrogates, deep nesting ...) is returned as "slow": the
 * caller reads those lines with the general (Polars and Python) path, which is the reference. So this code
 * only has to be right when it accepts a line, never complete.
 *
 * Columns come back through the Arrow C data interface (PyCapsules "arrow_schema"/"arrow_array"), which
 * Polars imports without copying the strings.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* ------------------------------------------------------------------ Arrow C data interface (spec'd ABI) */

#define ARROW_FLAG_NULLABLE 2

struct ArrowSchema {
    const char *format;
    const char *name;
    const char *metadata;
    int64_t flags;
    int64_t n_children;
    struct ArrowSchema **children;
    struct ArrowSchema *dictionary;
    void (*release)(struct ArrowSchema *);
    void *private_data;
};

struct ArrowArray {
    int64_t length;
    int64_t null_count;
    int64_t offset;
    int64_t n_buffers;
    int64_t n_children;
    const void **buffers;
    struct ArrowArray **children;
    struct ArrowArray *dictionary;
    void (*release)(struct ArrowArray *);
    void *private_data;
};

/* ------------------------------------------------------------------------------------ growable columns */

/* K_F64: doubles stored in the i64 buffer. K_VIEW: Arrow string views ("vu", what Polars holds strings as:
 * no conversion on import): a 16-byte view per row, strings up to 12 bytes inside it, longer ones in data
 * buffers of at most VIEW_BUF_MAX bytes each (a view holds a 32-bit offset), where repeated long strings are
 * stored once (a small cache of recent ones). */
enum { K_UTF8, K_I64, K_I8, K_F64, K_VIEW };

#define VIEW_CACHE 256
#ifndef VIEW_BUF_MAX /* (a test build sets it small, to exercise the change of buffer) */
#define VIEW_BUF_MAX ((int64_t)1 << 30)
#endif

typedef struct {
    uint64_t h;
    int32_t off, len;
} ViewSeen;

typedef struct {
    int kind;
    int64_t n, cap;  /* rows */
    int64_t *offs;   /* utf8: n + 1 offsets */
    char *data;      /* utf8 bytes; view: the long strings */
    int64_t dlen, dcap;
    int64_t *i64;
    int8_t *i8;
    uint8_t *views;  /* view: 16 bytes a row */
    ViewSeen *seen;  /* view: VIEW_CACHE recent long strings (in the current buffer, data) */
    char **full;     /* view: the data buffers filled before the current one, and their lengths */
    int64_t *full_len;
    int nfull;
    uint8_t *valid;  /* validity bitmap, LSB first */
    int64_t nulls;
} Col;

static int col_init(Col *c, int kind, int64_t rows, int64_t bytes) {
    memset(c, 0, sizeof(*c));
    c->kind = kind;
    c->cap = rows < 16 ? 16 : rows;
    c->valid = calloc((size_t)(c->cap / 8 + 1), 1);
    if (!c->valid) return 0;
    if (kind == K_UTF8) {
        c->offs = malloc(sizeof(int64_t) * (size_t)(c->cap + 1));
        c->dcap = bytes < 64 ? 64 : bytes;
        c->data = malloc((size_t)c->dcap);
        if (!c->offs || !c->data) return 0;
        c->offs[0] = 0;
    } else if (kind == K_VIEW) {
        c->views = malloc(16 * (size_t)c->cap);
        c->dcap = bytes < 64 ? 64 : bytes;
        c->data = malloc((size_t)c->dcap);
        c->seen = calloc(VIEW_CACHE, sizeof(ViewSeen));
        if (!c->views || !c->data || !c->seen) return 0;
    } else if (kind == K_I64 || kind == K_F64) {
        c->i64 = malloc(sizeof(int64_t) * (size_t)c->cap);
        if (!c->i64) return 0;
    } else {
        c->i8 = malloc((size_t)c->cap);
        if (!c->i8) return 0;
    }
    return 1;
}

static void col_free(Col *c) {
    free(c->offs);
    free(c->data);
    free(c->i64);
    free(c->i8);
    free(c->views);
    free(c->seen);
    for (int i = 0; i < c->nfull; i++) free(c->full[i]);
    free(c->full);
    free(c->full_len);
    free(c->valid);
    memset(c, 0, sizeof(*c));
}

/* Room for one more row. */
static int col_row(Col *c) {
    if (c->n < c->cap) return 1;
    int64_t cap = c->cap * 2;
    uint8_t *v = realloc(c->valid, (size_t)(cap / 8 + 1));
    if (!v) return 0;
    memset(v + c->cap / 8 + 1, 0, (size_t)(cap / 8 - c->cap / 8));
    c->valid = v;
    if (c->kind == K_UTF8) {
        int64_t *o = realloc(c->offs, sizeof(int64_t) * (size_t)(cap + 1));
        if (!o) return 0;
        c->offs = o;
    } else if (c->kind == K_VIEW) {
        uint8_t *o = realloc(c->views, 16 * (size_t)cap);
        if (!o) return 0;
        c->views = o;
    } else if (c->kind == K_I64 || c->kind == K_F64) {
        int64_t *o = realloc(c->i64, sizeof(int64_t) * (size_t)cap);
        if (!o) return 0;
        c->i64 = o;
    } else {
        int8_t *o = realloc(c->i8, (size_t)cap);
        if (!o) return 0;
        c->i8 = o;
    }
    c->cap = cap;
    return 1;
}

static int col_reserve(Col *c, int64_t more) {
    if (c->dlen + more <= c->dcap) return 1;
    int64_t cap = c->dcap * 2;
    while (cap < c->dlen + more) cap *= 2;
    char *d = realloc(c->data, (size_t)cap);
    if (!d) return 0;
    c->data = d;
    c->dcap = cap;
    return 1;
}

static inline void set_valid(Col *c) { c->valid[c->n >> 3] |= (uint8_t)(1u << (c->n & 7)); }

static int col_null(Col *c) {
    if (!col_row(c)) return 0;
    if (c->kind == K_UTF8) c->offs[c->n + 1] = c->dlen;
    else if (c->kind == K_VIEW) memset(c->views + 16 * c->n, 0, 16);
    else if (c->kind == K_I64 || c->kind == K_F64) c->i64[c->n] = 0;
    else c->i8[c->n] = 0;
    c->nulls++;
    c->n++;
    return 1;
}

static int view_str(Col *c, const char *s, int64_t len) {
    if (!col_row(c)) return 0;
    uint8_t *v = c->views + 16 * c->n;
    int32_t n32 = (int32_t)len;
    memset(v, 0, 16);
    memcpy(v, &n32, 4);
    if (len <= 12) { /* fixed-size (overlapping) copies: no call for a few bytes */
        if (len >= 8) {
            memcpy(v + 4, s, 8);
            memcpy(v + 4 + len - 8, s + len - 8, 8);
        } else if (len >= 4) {
            memcpy(v + 4, s, 4);
            memcpy(v + 4 + len - 4, s + len - 4, 4);
        } else {
            for (int64_t i = 0; i < len; i++) v[4 + i] = (uint8_t)s[i];
        }
    } else {
        uint64_t h = (uint64_t)len * 0x9E3779B97F4A7C15ull;
        uint64_t a, b;
        memcpy(&a, s, 8);
        memcpy(&b, s + len - 8, 8);
        h ^= a * 0xC2B2AE3D27D4EB4Full;
        h ^= b * 0x165667B19E3779F9ull;
        h ^= h >> 29;
        ViewSeen *e = &c->seen[h & (VIEW_CACHE - 1)];
        int32_t off;
        if (e->h == h && e->len == n32 && memcmp(c->data + e->off, s, (size_t)len) == 0) {
            off = e->off;
        } else {
            if (c->dlen + len > VIEW_BUF_MAX) { /* the buffer is full: a new one */
                char **f = realloc(c->full, sizeof(char *) * (size_t)(c->nfull + 1));
                if (f) c->full = f;
                int64_t *fl = f ? realloc(c->full_len, sizeof(int64_t) * (size_t)(c->nfull + 1)) : NULL;
                if (fl) c->full_len = fl;
                char *d = fl ? malloc((size_t)(len > 1 << 20 ? len : 1 << 20)) : NULL;
                if (!d) return 0;
                c->full[c->nfull] = c->data;
                c->full_len[c->nfull] = c->dlen;
                c->nfull++;
                c->data = d;
                c->dlen = 0;
                c->dcap = len > 1 << 20 ? len : 1 << 20;
                memset(c->seen, 0, VIEW_CACHE * sizeof(ViewSeen));
                e = &c->seen[h & (VIEW_CACHE - 1)];
            }
            if (!col_reserve(c, len)) return 0;
            off = (int32_t)c->dlen;
            memcpy(c->data + c->dlen, s, (size_t)len);
            c->dlen += len;
            e->h = h;
            e->off = off;
            e->len = n32;
        }
        int32_t buf = c->nfull;
        memcpy(v + 4, s, 4);
        memcpy(v + 8, &buf, 4);
        memcpy(v + 12, &off, 4);
    }
    set_valid(c);
    c->n++;
    return 1;
}

static int col_str(Col *c, const char *s, int64_t len) {
    if (c->kind == K_VIEW) return view_str(c, s, len);
    if (!col_row(c) || !col_reserve(c, len)) return 0;
    memcpy(c->data + c->dlen, s, (size_t)len);
    c->dlen += len;
    set_valid(c);
    c->offs[c->n + 1] = c->dlen;
    c->n++;
    return 1;
}

static int col_i64(Col *c, int64_t v) {
    if (!col_row(c)) return 0;
    c->i64[c->n] = v;
    set_valid(c);
    c->n++;
    return 1;
}

static int col_f64(Col *c, double v) {
    if (!col_row(c)) return 0;
    memcpy(&c->i64[c->n], &v, sizeof(v));
    set_valid(c);
    c->n++;
    return 1;
}

static int col_i8(Col *c, int8_t v) {
    if (!col_row(c)) return 0;
    c->i8[c->n] = v;
    set_valid(c);
    c->n++;
    return 1;
}

/* ----------------------------------------------------------------------------------- JSON validation */

typedef const unsigned char *cp_t;

/* 0: plain string byte; 1: '"'; 2: '\\'; 3: control (invalid in a string); 4: non-ASCII */
static unsigned char STR_CLASS[256];
static signed char HEX[256];

static void init_tables(void) {
    for (int i = 0; i < 256; i++) {
        STR_CLASS[i] = i < 0x20 ? 3 : i >= 0x80 ? 4 : 0;
        HEX[i] = -1;
    }
    STR_CLASS['"'] = 1;
    STR_CLASS['\\'] = 2;
    for (int i = 0; i < 10; i++) HEX['0' + i] = (signed char)i;
    for (int i = 0; i < 6; i++) {
        HEX['a' + i] = (signed char)(10 + i);
        HEX['A' + i] = (signed char)(10 + i);
    }
}

static inline cp_t skip_ws(cp_t p, cp_t e) {
    if (p < e && *p > ' ') return p; /* the usual case: no whitespace at all */
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

static inline cp_t skip_sp(cp_t p, cp_t e) {
    while (p < e && *p == ' ') p++;
    return p;
}

static inline int hex4(cp_t p, unsigned *out) {
    int a = HEX[p[0]], b = HEX[p[1]], c = HEX[p[2]], d = HEX[p[3]];
    if ((a | b | c | d) < 0) return 0;
    *out = (unsigned)((a << 12) | (b << 8) | (c << 4) | d);
    return 1;
}

/* Length of one valid UTF-8 sequence at p (no overlongs, no surrogates, <= U+10FFFF), 0 if invalid. */
static inline int utf8_len(cp_t p, cp_t e) {
    unsigned c = p[0];
    ptrdiff_t left = e - p;
    if (c >= 0xC2 && c <= 0xDF) return (left >= 2 && (p[1] & 0xC0) == 0x80) ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        if (left < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80) return 0;
        if (c == 0xE0 && p[1] < 0xA0) return 0;
        if (c == 0xED && p[1] >= 0xA0) return 0;
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (left < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80) return 0;
        if (c == 0xF0 && p[1] < 0x90) return 0;
        if (c == 0xF4 && p[1] >= 0x90) return 0;
        return 4;
    }
    return 0;
}

/* A \\u escape at p (p at the backslash): its code point (a surrogate pair read as one) and the bytes it
 * takes (6 or 12); 0 if it is invalid or a lone surrogate (left to the reference decoder). */
static inline int u_escape(cp_t p, cp_t e, unsigned *cp) {
    unsigned u, v;
    if (e - p < 6 || !hex4(p + 2, &u)) return 0;
    if (u >= 0xD800 && u <= 0xDBFF) {
        if (e - p < 12 || p[6] != '\\' || p[7] != 'u' || !hex4(p + 8, &v) || v < 0xDC00 || v > 0xDFFF) return 0;
        *cp = 0x10000 + ((u - 0xD800) << 10) + (v - 0xDC00);
        return 12;
    }
    if (u >= 0xDC00 && u <= 0xDFFF) return 0;
    *cp = u;
    return 6;
}

/* A code point as UTF-8 at o; returns the end. */
static inline char *put_utf8(char *o, unsigned u) {
    if (u < 0x80) {
        *o++ = (char)u;
    } else if (u < 0x800) {
        *o++ = (char)(0xC0 | (u >> 6));
        *o++ = (char)(0x80 | (u & 0x3F));
    } else if (u < 0x10000) {
        *o++ = (char)(0xE0 | (u >> 12));
        *o++ = (char)(0x80 | ((u >> 6) & 0x3F));
        *o++ = (char)(0x80 | (u & 0x3F));
    } else {
        *o++ = (char)(0xF0 | (u >> 18));
        *o++ = (char)(0x80 | ((u >> 12) & 0x3F));
        *o++ = (char)(0x80 | ((u >> 6) & 0x3F));
        *o++ = (char)(0x80 | (u & 0x3F));
    }
    return o;
}

/* The first byte at or after p that is not a plain string byte ('"', '\\', a control or a non-ASCII byte). */
static inline cp_t plain_run(cp_t p, cp_t e) {
#ifdef __SSE2__
    const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\'), space = _mm_set1_epi8(0x20);
    while (e - p >= 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)p);
        /* signed compare: bytes >= 0x80 are negative, so "< 0x20" catches them too */
        __m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, bslash)),
                                   _mm_cmplt_epi8(v, space));
        int mask = _mm_movemask_epi8(hit);
        if (mask) return p + __builtin_ctz((unsigned)mask);
        p += 16;
    }
#endif
    while (p < e && STR_CLASS[*p] == 0) p++;
    return p;
}

/* p at the opening quote. Returns the byte after the closing quote, or NULL (invalid or unsupported:
 * lone surrogates). *esc is set when the string holds escapes. */
static cp_t skip_string(cp_t p, cp_t e, int *esc) {
    p++;
    for (;;) {
        p = plain_run(p, e);
        if (p >= e) return NULL;
        switch (STR_CLASS[*p]) {
        case 1:
            return p + 1;
        case 2: {
            *esc = 1;
            if (e - p < 2) return NULL;
            unsigned char c = p[1];
            if (c == 'u') {
                unsigned u;
                int k = u_escape(p, e, &u);
                if (!k) return NULL;
                p += k;
            } else if (c == '"' || c == '\\' || c == '/' || c == 'b' || c == 'f' || c == 'n' || c == 'r' || c == 't') {
                p += 2;
            } else {
                return NULL;
            }
            break;
        }
        case 3:
            return NULL;
        default: {
            int n = utf8_len(p, e);
            if (!n) return NULL;
            p += n;
        }
        }
    }
}

/* skip_string where the string is plain ASCII up to its closing quote (keys, enum values, numbers as text:
 * most of a payload): one SSE2 scan, inline; anything else goes through skip_string from the start. */
static inline cp_t quick_string(cp_t p, cp_t e, int *esc) {
    cp_t q = plain_run(p + 1, e);
    if (q < e && *q == '"') return q + 1;
    return skip_string(p, e, esc);
}

/* Validate and unescape one JSON string in a single pass: p after the opening quote; the text goes to out
 * (room for e - p + 16 bytes: whole 16-byte blocks are stored before they are looked at). Returns the byte
 * after the closing quote and the length written, or NULL where skip_string would. */
static cp_t copy_string(cp_t p, cp_t e, char *out, int64_t *n) {
    char *o = out;
    for (;;) {
#ifdef __SSE2__
        const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\'), space = _mm_set1_epi8(0x20);
        for (;;) {
            if (e - p < 16) {
                while (p < e && STR_CLASS[*p] == 0) *o++ = (char)*p++;
                break;
            }
            __m128i v = _mm_loadu_si128((const __m128i *)p);
            _mm_storeu_si128((__m128i *)o, v);
            __m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, bslash)),
                                       _mm_cmplt_epi8(v, space));
            int mask = _mm_movemask_epi8(hit);
            if (mask) {
                int k = __builtin_ctz((unsigned)mask);
                p += k;
                o += k;
                break;
            }
            p += 16;
            o += 16;
        }
#else
        while (p < e && STR_CLASS[*p] == 0) *o++ = (char)*p++;
#endif
        if (p >= e) return NULL;
        switch (STR_CLASS[*p]) {
        case 1:
            *n = o - out;
            return p + 1;
        case 2: {
            if (e - p < 2) return NULL;
            unsigned char c = p[1];
            switch (c) {
            case '"': case '\\': case '/': *o++ = (char)c; p += 2; break;
            case 'b': *o++ = '\b'; p += 2; break;
            case 'f': *o++ = '\f'; p += 2; break;
            case 'n': *o++ = '\n'; p += 2; break;
            case 'r': *o++ = '\r'; p += 2; break;
            case 't': *o++ = '\t'; p += 2; break;
            case 'u': {
                unsigned u;
                int k = u_escape(p, e, &u);
                if (!k) return NULL;
                o = put_utf8(o, u);
                p += k;
                break;
            }
            default:
                return NULL;
            }
            break;
        }
        case 3:
            return NULL;
        default: {
            int k = utf8_len(p, e);
            if (!k) return NULL;
            memcpy(o, p, (size_t)k);
            o += k;
            p += k;
        }
        }
    }
}

static inline int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

/* A JSON number. Numbers that could overflow a double (or need more care than that) are refused: the
 * reference decoder rejects an infinite value, and the slow path will say so. */
static cp_t skip_number(cp_t p, cp_t e) {
    cp_t start = p;
    if (p < e && *p == '-') p++;
    if (p >= e) return NULL;
    cp_t int_start = p;
    if (*p == '0') {
        p++;
    } else if (*p >= '1' && *p <= '9') {
        while (p < e && is_digit(*p)) p++;
    } else {
        return NULL;
    }
    int64_t int_digits = p - int_start;
    if (p < e && *p == '.') {
        p++;
        if (p >= e || !is_digit(*p)) return NULL;
        while (p < e && is_digit(*p)) p++;
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < e && (*p == '+' || *p == '-')) p++;
        if (p >= e || !is_digit(*p)) return NULL;
        int64_t x = 0;
        while (p < e && is_digit(*p)) {
            if (x < 100000) x = x * 10 + (*p - '0');
            p++;
        }
        if (x + int_digits > 290) return NULL;
    }
    if (int_digits > 290 || p - start > 400) return NULL;
    return p;
}

#define MAX_DEPTH 64

/* The JSON literal `word` (n bytes: true, false, null) at p: the byte after it, or NULL. */
static inline cp_t literal(cp_t p, cp_t e, const char *word, int n) {
    return e - p >= n && memcmp(p, word, (size_t)n) == 0 ? p + n : NULL;
}

static cp_t skip_value(cp_t p, cp_t e, int depth) {
    if (p >= e) return NULL;
    int esc = 0;
    switch (*p) {
    case '"':
        return skip_string(p, e, &esc);
    case '{':
        if (depth >= MAX_DEPTH) return NULL;
        p = skip_ws(p + 1, e);
        if (p < e && *p == '}') return p + 1;
        for (;;) {
            if (p >= e || *p != '"') return NULL;
            p = skip_string(p, e, &esc);
            if (!p) return NULL;
            p = skip_ws(p, e);
            if (p >= e || *p != ':') return NULL;
            p = skip_value(skip_ws(p + 1, e), e, depth + 1);
            if (!p) return NULL;
            p = skip_ws(p, e);
            if (p >= e) return NULL;
            if (*p == '}') return p + 1;
            if (*p != ',') return NULL;
            p = skip_ws(p + 1, e);
        }
    case '[':
        if (depth >= MAX_DEPTH) return NULL;
        p = skip_ws(p + 1, e);
        if (p < e && *p == ']') return p + 1;
        for (;;) {
            p = skip_value(p, e, depth + 1);
            if (!p) return NULL;
            p = skip_ws(p, e);
            if (p >= e) return NULL;
            if (*p == ']') return p + 1;
            if (*p != ',') return NULL;
            p = skip_ws(p + 1, e);
        }
    case 't':
        return literal(p, e, "true", 4);
    case 'f':
        return literal(p, e, "false", 5);
    case 'n':
        return literal(p, e, "null", 4);
    default:
        return skip_number(p, e);
    }
}

/* ------------------------------------------------------------------------------------------- times */

static int digits(cp_t p, int n, int *out) {
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!is_digit(p[i])) return 0;
        v = v * 10 + (p[i] - '0');
    }
    *out = v;
    return 1;
}

static int64_t days_from_civil(int64_t y, int m, int d) {
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* "YYYY-MM-DDTHH:MM:SS[.f{1,6}](Z|+HH:MM|-HH:MM)" to microseconds since the epoch (UTC); 0 if not so.
 * naive: the zone may be left out (the time is then read as UTC, as OCPP prescribes for payloads). */
static int iso_us_zone(cp_t p, int64_t len, int64_t *out, int naive) {
    cp_t e = p + len;
    int y, mo, d, h, mi, s;
    if (len < 19 || (len < 20 && !naive) || p[4] != '-' || p[7] != '-' || p[10] != 'T' || p[13] != ':' || p[16] != ':') return 0;
    if (!digits(p, 4, &y) || !digits(p + 5, 2, &mo) || !digits(p + 8, 2, &d) || !digits(p + 11, 2, &h) ||
        !digits(p + 14, 2, &mi) || !digits(p + 17, 2, &s))
        return 0;
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (y < 1900 || mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] || h > 23 || mi > 59 || s > 59) return 0;
    if (mo == 2 && d == 29 && !((y % 4 == 0 && y % 100 != 0) || y % 400 == 0)) return 0;
    cp_t q = p + 19;
    int64_t frac = 0;
    if (q < e && *q == '.') {
        q++;
        int n = 0;
        while (q < e && is_digit(*q)) {
            if (n == 6) return 0; /* finer than microseconds: leave it to the general parser */
            frac = frac * 10 + (*q - '0');
            n++;
            q++;
        }
        if (n == 0) return 0;
        for (; n < 6; n++) frac *= 10;
    }
    int64_t off = 0;
    if (q < e && *q == 'Z') {
        q++;
    } else if (q < e && (*q == '+' || *q == '-')) {
        int oh, om;
        if (e - q < 6 || q[3] != ':' || !digits(q + 1, 2, &oh) || !digits(q + 4, 2, &om) || oh > 23 || om > 59)
            return 0;
        off = (int64_t)(oh * 60 + om) * 60;
        if (*q == '-') off = -off;
        q += 6;
    } else if (!(naive && q == e)) {
        return 0;
    }
    if (q != e) return 0;
    int64_t secs = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s - off;
    *out = secs * 1000000 + frac;
    return 1;
}

static int iso_us(cp_t p, int64_t len, int64_t *out) { return iso_us_zone(p, len, out, 0); }

/* ------------------------------------------------------------------------------------------- lines */

enum { KEY_TS, KEY_CP, KEY_DIR, KEY_MSG, KEY_SUB, KEY_CONN, N_KEYS };
enum { C_LINE, C_TS, C_TS_TEXT, C_CP, C_DIR, C_SUB, C_CONN, C_MTYPE, C_MID, C_ACTION, C_PAYLOAD, C_ECODE, C_EDESC,
       N_COLS };

static const char *COL_NAMES[N_COLS] = {"line", "ts", "ts_text", "charge_point_id", "direction", "subprotocol",
                                        "conn", "message_type", "message_id", "action", "payload", "error_code",
                                        "error_description"};

typedef struct {
    cp_t s;
    int64_t len;
    int esc, present, null;
} Span;

typedef struct {
    const char *key[N_KEYS];
    Py_ssize_t klen[N_KEYS];
    const char *path[N_KEYS]; /* a dotted key ("meta.ocpptool.conn"): the part after the first dot */
    Py_ssize_t plen[N_KEYS];
    Col cols[N_COLS];
    char *scratch;
    int64_t scap;
    /* slow lines: (line number, start, end) */
    int64_t *slow;
    int64_t nslow, slowcap;
    int oom;
} Ctx;

static int add_slow(Ctx *x, int64_t line, int64_t start, int64_t end) {
    if (x->nslow == x->slowcap) {
        int64_t cap = x->slowcap ? x->slowcap * 2 : 64;
        int64_t *s = realloc(x->slow, sizeof(int64_t) * 3 * (size_t)cap);
        if (!s) return 0;
        x->slow = s;
        x->slowcap = cap;
    }
    x->slow[3 * x->nslow] = line;
    x->slow[3 * x->nslow + 1] = start;
    x->slow[3 * x->nslow + 2] = end;
    x->nslow++;
    return 1;
}

/* The value of a wanted key into a string column (null when absent or JSON null). */
static int put_span(Col *c, const Span *v) {
    if (!v->present || v->null) return col_null(c);
    if (!v->esc) return col_str(c, (const char *)v->s, v->len);
    /* validated already; copy_string unescapes it (up to and past the closing quote at s + len) */
    int64_t n = 0;
    if (!col_row(c) || !col_reserve(c, v->len + 16)) return 0;
    if (!copy_string(v->s, v->s + v->len + 1, c->data + c->dlen, &n)) return 0;
    c->dlen += n;
    set_valid(c);
    c->offs[c->n + 1] = c->dlen;
    c->n++;
    return 1;
}

/* A quoted id or action inside the frame: no escapes, no control characters (else the slow path). */
static cp_t frame_token(cp_t p, cp_t e, cp_t *s, int64_t *len) {
    if (p >= e || *p != '"') return NULL;
    cp_t q = ++p;
    while (q < e && *q != '"') {
        if (*q == '\\' || *q < 0x20) return NULL;
        q++;
    }
    if (q >= e) return NULL;
    *s = p;
    *len = q - p;
    return q + 1;
}

/* The string (or null) at a dotted path inside the value at p, as JSONPath "$.a.b" reads it: the end of the
 * value, with *out set when the path leads to a string or null (left unset when a key is missing); NULL
 * (slow) for anything else: a non-object on the way, a number or container at the end, escaped or
 * repeated keys. */
static cp_t find_path(cp_t p, cp_t e, const char *path, Py_ssize_t plen, Span *out, int depth) {
    if (p >= e) return NULL;
    if (plen == 0) {
        if (*p == '"') {
            int esc = 0;
            cp_t q = skip_string(p, e, &esc);
            if (!q) return NULL;
            out->s = p + 1;
            out->len = q - 1 - (p + 1);
            out->esc = esc;
            out->present = 1;
            return q;
        }
        if (literal(p, e, "null", 4)) {
            out->present = out->null = 1;
            return p + 4;
        }
        return NULL;
    }
    if (*p != '{' || depth >= MAX_DEPTH) return NULL;
    const char *dot = memchr(path, '.', (size_t)plen);
    Py_ssize_t seglen = dot ? dot - path : plen;
    const char *next = dot ? dot + 1 : path + plen;
    Py_ssize_t nlen = dot ? plen - seglen - 1 : 0;
    int found = 0;
    p = skip_ws(p + 1, e);
    if (p < e && *p == '}') return p + 1;
    for (;;) {
        if (p >= e || *p != '"') return NULL;
        int esc = 0;
        cp_t ks = p + 1;
        cp_t q = skip_string(p, e, &esc);
        if (!q || esc) return NULL;
        int match = (q - 1 - ks) == seglen && memcmp(ks, path, (size_t)seglen) == 0;
        p = skip_ws(q, e);
        if (p >= e || *p != ':') return NULL;
        p = skip_ws(p + 1, e);
        if (match) {
            if (found) return NULL;
            found = 1;
            p = find_path(p, e, next, nlen, out, depth + 1);
        } else {
            p = skip_value(p, e, depth + 1);
        }
        if (!p) return NULL;
        p = skip_ws(p, e);
        if (p >= e) return NULL;
        if (*p == '}') return p + 1;
        if (*p != ',') return NULL;
        p = skip_ws(p + 1, e);
    }
}

/* 1: the line went into the columns; 0: slow; -1: out of memory. */
static int one_line(Ctx *x, cp_t ls, cp_t le, int64_t line_no) {
    Span v[N_KEYS];
    memset(v, 0, sizeof(v));
    int seen = 0;
    cp_t p = skip_ws(ls, le);
    if (p >= le || *p != '{') return 0;
    p = skip_ws(p + 1, le);
    if (p >= le || *p != '"') return 0;
    for (;;) {
        if (p >= le || *p != '"') return 0;
        int esc = 0;
        cp_t ks = p + 1;
        cp_t q = skip_string(p, le, &esc);
        if (!q || esc) return 0;
        Py_ssize_t kl = (Py_ssize_t)(q - 1 - ks);
        int k = -1;
        for (int i = 0; i < N_KEYS; i++) {
            if (x->key[i] && x->klen[i] == kl && memcmp(x->key[i], ks, (size_t)kl) == 0) {
                k = i;
                break;
            }
        }
        p = skip_ws(q, le);
        if (p >= le || *p != ':') return 0;
        p = skip_ws(p + 1, le);
        if (p >= le) return 0;
        if (k >= 0) {
            if (seen & (1 << k)) return 0; /* a key given twice: which one wins is the reference's call */
            seen |= 1 << k;
            if (x->path[k]) {
                p = find_path(p, le, x->path[k], x->plen[k], &v[k], 1);
                if (!p) return 0;
            } else if (*p == '[' && k == KEY_MSG) { /* the frame as a JSON array: its text as written */
                q = skip_value(p, le, 1);
                if (!q) return 0;
                v[k].s = p;
                v[k].len = q - p;
                v[k].present = 1;
                p = q;
            } else if (*p == '"' && k == KEY_MSG) { /* the frame: validated and unescaped in one pass */
                if (x->scap < le - p + 16) {
                    int64_t cap = (le - p) * 2 + 256;
                    char *sc = realloc(x->scratch, (size_t)cap);
                    if (!sc) return -1;
                    x->scratch = sc;
                    x->scap = cap;
                }
                int64_t n;
                q = copy_string(p + 1, le, x->scratch, &n);
                if (!q) return 0;
                v[k].s = (cp_t)x->scratch;
                v[k].len = n;
                v[k].present = 1;
                p = q;
            } else if (*p == '"') {
                int e2 = 0;
                q = skip_string(p, le, &e2);
                if (!q) return 0;
                v[k].s = p + 1;
                v[k].len = q - 1 - (p + 1);
                v[k].esc = e2;
                v[k].present = 1;
                p = q;
            } else if (literal(p, le, "null", 4)) {
                v[k].present = v[k].null = 1;
                p += 4;
            } else {
                return 0; /* a number, object ... where text was expected */
            }
        } else {
            p = skip_value(p, le, 1);
            if (!p) return 0;
        }
        p = skip_ws(p, le);
        if (p >= le) return 0;
        if (*p == '}') {
            p++;
            break;
        }
        if (*p != ',') return 0;
        p = skip_ws(p + 1, le);
    }
    if (skip_ws(p, le) != le) return 0;

    /* the frame */
    Span *m = &v[KEY_MSG];
    if (!m->present || m->null) return 0;
    cp_t f = m->s, fe = m->s + m->len; /* unescaped already */
    if (f >= fe || *f != '[') return 0;
    f = skip_sp(f + 1, fe);
    if (f >= fe) return 0;
    int mtype = *f - '0';
    if (mtype < 2 || mtype > 6) return 0;
    f = skip_sp(f + 1, fe);
    if (f >= fe || *f != ',') return 0;
    cp_t id_s, act_s = NULL, code_s = NULL, desc_s = NULL, ps = NULL, pe = NULL;
    int64_t id_len, act_len = 0, code_len = 0, desc_len = 0;
    f = frame_token(skip_sp(f + 1, fe), fe, &id_s, &id_len);
    if (!f) return 0;
    f = skip_sp(f, fe);
    if (f >= fe || *f != ',') return 0;
    f = skip_sp(f + 1, fe);
    if (mtype == 4 || mtype == 5) {
        /* [4,"id","code","description",{}]: details other than {} are re-serialised by the reference
         * decoder, so they take the slow path */
        f = frame_token(f, fe, &code_s, &code_len);
        if (!f) return 0;
        f = skip_sp(f, fe);
        if (f >= fe || *f != ',') return 0;
        f = frame_token(skip_sp(f + 1, fe), fe, &desc_s, &desc_len);
        if (!f) return 0;
        f = skip_sp(f, fe);
        if (f >= fe || *f != ',') return 0;
        f = skip_sp(f + 1, fe);
        if (f >= fe || *f != '{') return 0;
        f = skip_sp(f + 1, fe);
        if (f >= fe || *f != '}') return 0;
        f++;
    } else {
        if (mtype != 3) {
            f = frame_token(f, fe, &act_s, &act_len);
            if (!f) return 0;
            f = skip_sp(f, fe);
            if (f >= fe || *f != ',') return 0;
            f = skip_sp(f + 1, fe);
        }
        if (f >= fe || *f != '{') return 0;
        ps = f;
        f = skip_value(f, fe, 1);
        if (!f) return 0;
        pe = f;
    }
    f = skip_sp(f, fe);
    if (f >= fe || *f != ']' || f + 1 != fe) return 0;

    /* accepted: every column gets its row */
    Col *c = x->cols;
    int64_t us;
    int ok = col_i64(&c[C_LINE], line_no);
    Span *t = &v[KEY_TS];
    if (t->present && !t->null && !t->esc && iso_us(t->s, t->len, &us)) {
        ok = ok && col_i64(&c[C_TS], us) && col_null(&c[C_TS_TEXT]);
    } else {
        ok = ok && col_null(&c[C_TS]) && put_span(&c[C_TS_TEXT], t);
    }
    ok = ok && put_span(&c[C_CP], &v[KEY_CP]) && put_span(&c[C_DIR], &v[KEY_DIR]) &&
         put_span(&c[C_SUB], &v[KEY_SUB]) && put_span(&c[C_CONN], &v[KEY_CONN]) &&
         col_i8(&c[C_MTYPE], (int8_t)mtype) && col_str(&c[C_MID], (const char *)id_s, id_len) &&
         (act_s ? col_str(&c[C_ACTION], (const char *)act_s, act_len) : col_null(&c[C_ACTION])) &&
         (ps ? col_str(&c[C_PAYLOAD], (const char *)ps, pe - ps) : col_null(&c[C_PAYLOAD])) &&
         (code_s ? col_str(&c[C_ECODE], (const char *)code_s, code_len) : col_null(&c[C_ECODE])) &&
         (desc_s ? col_str(&c[C_EDESC], (const char *)desc_s, desc_len) : col_null(&c[C_EDESC]));
    return ok ? 1 : -1;
}

#define GIVE_UP_AFTER 256

static void run(Ctx *x, cp_t buf, int64_t n, int64_t first_line, int64_t *lines_seen) {
    cp_t p = buf, e = buf + n;
    int64_t line = first_line;
    while (p < e) {
        cp_t nl = memchr(p, '\n', (size_t)(e - p));
        cp_t le = nl ? nl : e;
        cp_t s = skip_ws(p, le);
        if (s < le) { /* blank lines give no row, as in the general reader */
            int r = one_line(x, p, le, line);
            if (r < 0 || (r == 0 && !add_slow(x, line, p - buf, le - buf))) {
                x->oom = 1;
                return;
            }
            /* a log in a layout this reader never takes (frames as JSON arrays, say): leave the whole chunk
             * to the general reader rather than split nothing line by line */
            if (x->nslow == GIVE_UP_AFTER && x->cols[C_LINE].n == 0) {
                *lines_seen = -1;
                return;
            }
        }
        line++;
        if (!nl) break;
        p = nl + 1;
    }
    *lines_seen = line - first_line;
}

/* --------------------------------------------------------------------------------- export to Python */

typedef struct {
    int n;
    void **bufs;
    const void **ptrs;
} ArrPriv;

static void release_array(struct ArrowArray *a) {
    ArrPriv *pv = a->private_data;
    for (int i = 0; i < pv->n; i++) free(pv->bufs[i]);
    free(pv->bufs);
    free(pv->ptrs);
    free(pv);
    a->release = NULL;
}

static void release_schema(struct ArrowSchema *s) { s->release = NULL; }

static void schema_capsule_free(PyObject *cap) {
    struct ArrowSchema *s = PyCapsule_GetPointer(cap, "arrow_schema");
    if (s) {
        if (s->release) s->release(s);
        free(s);
    }
}

static void array_capsule_free(PyObject *cap) {
    struct ArrowArray *a = PyCapsule_GetPointer(cap, "arrow_array");
    if (a) {
        if (a->release) a->release(a);
        free(a);
    }
}

/* Hands the column's buffers over to an Arrow array in a pair of capsules; the column is left empty. */
static PyObject *export_col(Col *c, const char *name) {
    struct ArrowSchema *s = calloc(1, sizeof(*s));
    struct ArrowArray *a = calloc(1, sizeof(*a));
    ArrPriv *pv = calloc(1, sizeof(*pv));
    int nb = c->kind == K_VIEW ? 4 + c->nfull : 3; /* validity, values (or offsets, or views), data ... */
    int64_t *sizes = c->kind == K_VIEW ? malloc(sizeof(int64_t) * (size_t)(c->nfull + 1)) : NULL;
    if (pv) {
        pv->n = nb;
        pv->bufs = calloc((size_t)nb, sizeof(void *));
        pv->ptrs = calloc((size_t)nb, sizeof(void *));
    }
    if (!s || !a || !pv || !pv->bufs || !pv->ptrs || (c->kind == K_VIEW && !sizes)) {
        free(s);
        free(a);
        if (pv) {
            free(pv->bufs);
            free(pv->ptrs);
        }
        free(pv);
        free(sizes);
        return PyErr_NoMemory();
    }
    s->format = c->kind == K_UTF8 ? "U" : c->kind == K_VIEW ? "vu" : c->kind == K_I64 ? "l" : c->kind == K_F64 ? "g" : "c";
    s->name = name;
    s->flags = ARROW_FLAG_NULLABLE;
    s->release = release_schema;
    a->length = c->n;
    a->null_count = c->nulls;
    if (c->nulls) {
        pv->bufs[0] = c->valid;
    } else {
        free(c->valid);
    }
    pv->ptrs[0] = c->nulls ? c->valid : NULL;
    if (c->kind == K_UTF8) {
        pv->bufs[1] = c->offs;
        pv->bufs[2] = c->data;
        pv->ptrs[1] = c->offs;
        pv->ptrs[2] = c->data;
        a->n_buffers = 3;
    } else if (c->kind == K_VIEW) {
        /* validity, views, the data buffers in order, their lengths */
        free(c->seen);
        pv->bufs[1] = c->views;
        for (int i = 0; i < c->nfull; i++) {
            pv->bufs[2 + i] = c->full[i];
            sizes[i] = c->full_len[i];
        }
        pv->bufs[2 + c->nfull] = c->data;
        sizes[c->nfull] = c->dlen;
        pv->bufs[3 + c->nfull] = sizes;
        for (int i = 1; i < nb; i++) pv->ptrs[i] = pv->bufs[i];
        free(c->full);
        free(c->full_len);
        a->n_buffers = nb;
    } else {
        void *vals = c->kind == K_I8 ? (void *)c->i8 : (void *)c->i64;
        pv->bufs[1] = vals;
        pv->ptrs[1] = vals;
        a->n_buffers = 2;
    }
    a->buffers = pv->ptrs;
    a->private_data = pv;
    a->release = release_array;
    memset(c, 0, sizeof(*c)); /* the buffers belong to the array now */
    PyObject *sc = PyCapsule_New(s, "arrow_schema", schema_capsule_free);
    if (!sc) {
        a->release(a);
        free(a);
        free(s);
        return NULL;
    }
    PyObject *ac = PyCapsule_New(a, "arrow_array", array_capsule_free);
    if (!ac) {
        Py_DECREF(sc);
        a->release(a);
        free(a);
        return NULL;
    }
    PyObject *pair = PyTuple_Pack(2, sc, ac);
    Py_DECREF(sc);
    Py_DECREF(ac);
    return pair;
}

static PyObject *split_jsonl(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer buf;
    PyObject *keys;
    long long first_line;
    if (!PyArg_ParseTuple(args, "y*O!L", &buf, &PyTuple_Type, &keys, &first_line)) return NULL;
    if (PyTuple_GET_SIZE(keys) != N_KEYS) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, "keys: a tuple of 6 (ts, cp, direction, message, subprotocol, conn)");
        return NULL;
    }
    Ctx x;
    memset(&x, 0, sizeof(x));
    for (int i = 0; i < N_KEYS; i++) {
        PyObject *k = PyTuple_GET_ITEM(keys, i);
        if (k == Py_None) continue;
        if (!PyBytes_Check(k)) {
            PyBuffer_Release(&buf);
            PyErr_SetString(PyExc_TypeError, "keys: bytes or None");
            return NULL;
        }
        x.key[i] = PyBytes_AS_STRING(k);
        x.klen[i] = PyBytes_GET_SIZE(k);
        const char *dot = memchr(x.key[i], '.', (size_t)x.klen[i]);
        if (dot) {
            x.path[i] = dot + 1;
            x.plen[i] = x.klen[i] - (dot + 1 - x.key[i]);
            x.klen[i] = dot - x.key[i];
        }
    }
    int64_t n = buf.len;
    int64_t rows = n / 256 + 16;
    int ok = 1;
    for (int i = 0; i < N_COLS && ok; i++) {
        int kind = i == C_LINE || i == C_TS ? K_I64 : i == C_MTYPE ? K_I8 : K_UTF8;
        int64_t bytes = i == C_PAYLOAD ? n / 2 : i == C_MID ? rows * 40 : rows * 16;
        ok = col_init(&x.cols[i], kind, rows, bytes);
    }
    int64_t lines_seen = 0;
    if (ok) {
        Py_BEGIN_ALLOW_THREADS
        run(&x, (cp_t)buf.buf, n, (int64_t)first_line, &lines_seen);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&buf);
    free(x.scratch);
    PyObject *out = NULL, *cols = NULL, *slow = NULL;
    if (!ok || x.oom) {
        PyErr_NoMemory();
        goto done;
    }
    cols = PyDict_New();
    if (!cols) goto done;
    for (int i = 0; i < N_COLS; i++) {
        PyObject *pair = export_col(&x.cols[i], COL_NAMES[i]);
        if (!pair || PyDict_SetItemString(cols, COL_NAMES[i], pair) < 0) {
            Py_XDECREF(pair);
            goto done;
        }
        Py_DECREF(pair);
    }
    slow = PyList_New(x.nslow);
    if (!slow) goto done;
    for (int64_t i = 0; i < x.nslow; i++) {
        PyObject *t = Py_BuildValue("(LLL)", (long long)x.slow[3 * i], (long long)x.slow[3 * i + 1],
                                    (long long)x.slow[3 * i + 2]);
        if (!t) goto done;
        PyList_SET_ITEM(slow, i, t);
    }
    out = Py_BuildValue("(OOL)", cols, slow, (long long)lines_seen);
done:
    Py_XDECREF(cols);
    Py_XDECREF(slow);
    for (int i = 0; i < N_COLS; i++) col_free(&x.cols[i]);
    free(x.slow);
    return out;
}

static PyObject *count_lines(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer buf;
    if (!PyArg_ParseTuple(args, "y*", &buf)) return NULL;
    int64_t n = 0;
    Py_BEGIN_ALLOW_THREADS
    const char *p = buf.buf, *e = p + buf.len;
    while (p < e && (p = memchr(p, '\n', (size_t)(e - p))) != NULL) {
        n++;
        p++;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&buf);
    return PyLong_FromLongLong((long long)n);
}

static inline uint64_t w_mix(uint64_t h, uint64_t v) {
    h ^= v;
    h *= 0x9E3779B97F4A7C15ull;
    h ^= h >> 32;
    return h;
}

/* -------------------------------------------------------------------------- schema classes (analysis) */
/*
 * class_keys(stream, enums) gives, for each payload of a string column (null for a null), a 64-bit key for
 * the schema check, its class: the payload's shape as a schema sees it: its structure and member names
 * exactly, every string that is one of `enums` (the schemas' enum values) exactly, every other string and every
 * number with its ASCII letters and digits blurred alike (length, signs, points and other characters kept),
 * true/false/null exactly; whitespace is not part of it. A payload with an escape, a number in exponent form
 * or invalid JSON is a class of its own (a hash of its bytes, tagged). No key of the bytes of every payload:
 * the caller hashes the payloads of the few classes it must split.
 *
 * Payloads of one class get the same verdict from a schema unless the schema looks into blurred content
 * (patterns, lengths of escaped text, number ranges ...); the caller finds those classes and validates their
 * payloads one by one (see ocpptool/analysis/schemas.py).
 */

typedef struct {
    const char *s;
    Py_ssize_t n;
} EnumStr;

typedef struct {
    EnumStr *slot; /* open addressing, power of two */
    uint32_t *id;
    int64_t mask;
    unsigned char first[256]; /* a byte some enum value starts with (a quick no for the rest) */
    uint64_t lens;            /* bit n: some enum value is n bytes long (bit 63: 63 or longer) */
    unsigned char blur[256];
    char *buf;
    int64_t cap, len;
    int oom;
} Cls;

static uint64_t hash_bytes(const char *s, int64_t n, uint64_t seed) {
    uint64_t h = seed ^ ((uint64_t)n * 0x9E3779B97F4A7C15ull);
    int64_t i = 0;
    if (n >= 32) { /* four lanes (independent multiplies), then one */
        uint64_t a = h, b = h ^ 0x243F6A8885A308D3ull, c = h ^ 0x13198A2E03707344ull, d = h ^ 0xA4093822299F31D0ull;
        for (; i + 32 <= n; i += 32) {
            uint64_t v[4];
            memcpy(v, s + i, 32);
            a = w_mix(a, v[0]);
            b = w_mix(b, v[1]);
            c = w_mix(c, v[2]);
            d = w_mix(d, v[3]);
        }
        h = w_mix(w_mix(w_mix(a, b), c), d);
    }
    for (; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, s + i, 8);
        h = w_mix(h, v);
    }
    uint64_t tail = 0;
    int64_t r = n - i;
    if (r && n >= 8) { /* the last 8 bytes, the r not read yet shifted down (no call for a short copy) */
        memcpy(&tail, s + n - 8, 8);
        tail >>= 8 * (8 - r);
    } else if (r) {
        memcpy(&tail, s + i, (size_t)r);
    }
    h = w_mix(h, tail ^ ((uint64_t)r << 56));
    return w_mix(h, (uint64_t)n);
}

static int cls_enum(const Cls *c, cp_t s, int64_t n) {
    if (!((c->lens >> (n < 63 ? n : 63)) & 1) || (n && !c->first[s[0]])) return -1;
    uint64_t h = hash_bytes((const char *)s, n, 7);
    for (int64_t i = (int64_t)(h & (uint64_t)c->mask);; i = (i + 1) & c->mask) {
        if (!c->slot[i].s) return -1;
        if (c->slot[i].n == n && memcmp(c->slot[i].s, s, (size_t)n) == 0) return (int)c->id[i];
    }
}

/* Room for a payload of n bytes: its class text is at most 3n + 16 bytes (a one-digit number becomes tag,
 * digit, end), so the puts below need no check of their own. */
static int cls_reserve(Cls *c, int64_t n) {
    int64_t need = 3 * n + 16;
    if (need <= c->cap) return 1;
    int64_t cap = c->cap ? c->cap : 4096;
    while (cap < need) cap *= 2;
    char *b = realloc(c->buf, (size_t)cap);
    if (!b) {
        c->oom = 1;
        return 0;
    }
    c->buf = b;
    c->cap = cap;
    return 1;
}

static inline void cls_byte(Cls *c, char b) { c->buf[c->len++] = b; }

static inline void cls_put(Cls *c, const void *s, int64_t n) {
    memcpy(c->buf + c->len, s, (size_t)n);
    c->len += n;
}

/* A member name (s, n) of a payload ending at e: short names are copied as one fixed 16-byte move (no call;
 * the bytes past the name land in the room reserved and are overwritten next). */
static inline void cls_name(Cls *c, cp_t s, int64_t n, cp_t e) {
    if (n <= 16 && e - s >= 16) {
        memcpy(c->buf + c->len, s, 16);
        c->len += n;
    } else {
        cls_put(c, s, n);
    }
}

/* tag, the text with its letters and digits blurred, an end byte */
static void cls_blurred(Cls *c, char tag, cp_t s, int64_t n) {
    char *o = c->buf + c->len;
    *o++ = tag;
    for (int64_t i = 0; i < n; i++) o[i] = (char)c->blur[s[i]];
    o[n] = 0;
    c->len += n + 2;
}

/* The enum table and blur map from a tuple of bytes (the schemas' enum values; `enums` stays referenced by
 * the caller while c is used). 0 with an exception set; call cls_free either way. */
static int cls_init(Cls *c, PyObject *enums) {
    memset(c, 0, sizeof(*c));
    Py_ssize_t ne = PyTuple_GET_SIZE(enums);
    if (ne >= 0xFFFF) {
        PyErr_SetString(PyExc_ValueError, "enums: fewer than 65535");
        return 0;
    }
    int64_t size = 16;
    while (size < ne * 2) size *= 2;
    c->slot = calloc((size_t)size, sizeof(EnumStr));
    c->id = calloc((size_t)size, sizeof(uint32_t));
    if (!c->slot || !c->id) {
        PyErr_NoMemory();
        return 0;
    }
    c->mask = size - 1;
    for (Py_ssize_t i = 0; i < ne; i++) {
        PyObject *v = PyTuple_GET_ITEM(enums, i);
        if (!PyBytes_Check(v)) {
            PyErr_SetString(PyExc_TypeError, "enums: bytes");
            return 0;
        }
        const char *s = PyBytes_AS_STRING(v);
        Py_ssize_t n = PyBytes_GET_SIZE(v);
        if (n) c->first[(unsigned char)s[0]] = 1;
        c->lens |= 1ull << (n < 63 ? n : 63);
        if (cls_enum(c, (cp_t)s, n) >= 0) continue;
        uint64_t h = hash_bytes(s, n, 7);
        int64_t j = (int64_t)(h & (uint64_t)c->mask);
        while (c->slot[j].s) j = (j + 1) & c->mask;
        c->slot[j].s = s;
        c->slot[j].n = n;
        c->id[j] = (uint32_t)i;
    }
    for (int i = 0; i < 256; i++) c->blur[i] = (unsigned char)i;
    for (int i = '0'; i <= '9'; i++) c->blur[i] = 'a';
    for (int i = 'a'; i <= 'z'; i++) c->blur[i] = 'a';
    for (int i = 'A'; i <= 'Z'; i++) c->blur[i] = 'a';
    return 1;
}

static void cls_free(Cls *c) {
    free(c->slot);
    free(c->id);
    free(c->buf);
    memset(c, 0, sizeof(*c));
}

/* A string's class text (its content s, n: escape-free): the enum value's id, or the text blurred. */
static inline void cls_text(Cls *c, cp_t s, int64_t n) {
    int id = cls_enum(c, s, n);
    if (id >= 0) {
        unsigned char t[3] = {'E', (unsigned char)(id & 0xFF), (unsigned char)(id >> 8)};
        cls_put(c, t, 3);
    } else {
        cls_blurred(c, 'S', s, n);
    }
}

static inline uint64_t cls_exact(cp_t s, int64_t n) { return hash_bytes((const char *)s, n, 0x243F6A8885A308D3ull); }

/* The class of a payload (s, n) from its class text (ok) or, when it is a class of its own, from its bytes (the
 * only payloads whose bytes are hashed: the caller hashes the few payloads of the classes it must split). */
static inline int64_t cls_key(const Cls *c, int ok, cp_t s, int64_t n) {
    return ok ? (int64_t)hash_bytes(c->buf, c->len, 0x13198A2E03707344ull)
              : (int64_t)w_mix(cls_exact(s, n), 0xA4093822299F31D0ull);
}

/* ------------------------------------------------------------------------------ payload walker (analysis) */
/*
 * walk_payloads(stream, kinds, configs, energy_only=False, enums=None) reads a column of OCPP payloads (an Arrow string
 * or string-view stream, as Polars exports a Series) without the GIL, each as the configuration of its kind
 * says (kinds: one
 * byte per payload, or None for all the first; a configuration: (meter_key, paths, anywhere)),
 * and gives, per payload:
 *
 *   - sure: 1 when this code fully understood the payload (2: and it holds sampled values), else 0: the
 *     caller reads that payload with the Polars reference (json_path_match, json_decode behind a textual
 *     shape guard). Like the splitter, this code only has to be right when it says sure;
 *   - the text of each path ("a" or "a.b") of its kind's configuration, as json_path_match gives it for what
 *     is read here: an escape-free string, a plain integer, null or missing (anything else: not sure).
 *     anywhere=1 reads single keys as a regex's first match in the whole text would (the key may then occur
 *     only once, at the top level). A configuration's columns hold a row for each payload of its kind only
 *     (in order), not one for every payload: null rows of the other kinds would be most of their memory;
 *   - with meter_key (MeterValues "meterValue", StopTransaction "transactionData", TransactionEvent
 *     "meterValue"): every sampledValue under the top-level array of that name, as json_decode into the
 *     meter-value struct gives it (numbers as Polars prints them, true/false as text), with the meterValue's
 *     timestamp in microseconds (strict ISO 8601; a zone-less time is UTC); with energy_only, only those of
 *     the energy register (measurand "Energy.Active.Import.Register", null or omitted);
 *   - always: the first "timestamp" string anywhere (as the time detectors' regex finds it) and that time in
 *     microseconds, and whether a key "offline" holds true anywhere;
 *   - with enums (the schema check's enum values): the payload's class key exactly as class_keys
 *     gives it (null when not sure). The class text is written as the payload is read, each scalar by the
 *     loop that holds it (wc_scalar), so the payloads that are most of a capture's bytes are read once.
 *
 * Samples come out in payload order (document order within one), so payloads of several kinds walked
 * together in message order need no sort.
 *
 * Not sure (the whole payload goes to the reference): invalid JSON, any escape, repeated keys on the way,
 * numbers it cannot print as Polars does (exponents, > 15 significant digits, negative zero), timestamps
 * outside the strict form, a sampled value's text that is not a plain decimal number, and every shape the reference's textual guard would refuse or could misjudge: a
 * meter field holding a container, sampledValue not an array of objects, unitOfMeasure not an object, an
 * array going on with a non-object after an object.
 */

#define W_MAX_PATHS 10
enum { S_ROW, S_TS, S_MEASURAND, S_PHASE, S_UNIT, S_MULT, S_CONTEXT, S_LOCATION, S_VALUE, S_NUM, S_DEC, N_SCOLS };
static const char *SCOL_NAMES[N_SCOLS] = {"row", "sample_ts", "measurand", "phase", "unit", "multiplier",
                                          "context", "location", "value", "number", "decimals"};

/* object keys the walker knows; K_OTHER for the rest */
enum { WK_OTHER, WK_TIMESTAMP, WK_VALUE, WK_CONTEXT, WK_FORMAT, WK_MEASURAND, WK_PHASE, WK_LOCATION, WK_UNIT,
       WK_MULTIPLIER, WK_SAMPLED, WK_UOM };

typedef struct {
    int type; /* 0 missing, 1 null, 2 text (s, len: printed form) */
    const char *s;
    int64_t len;
} WScalar;

#define W_MAX_CFG 4

typedef struct {
    unsigned set; /* bit k: f[k] was read (a field not read is missing) */
    WScalar f[WK_UOM + 1];
} WSample; /* scratch for one meterValue / sampledValue */

/* Sampled-value templates. A fleet sends the same few sampled-value objects over and over, with only the
 * value changing: {"value":"2596341","context":"Sample.Periodic",...,"unit":"Wh"}. When one begins with
 * {"value": and its bytes after the value equal those of an object read before (at the same place in its
 * array, for the same configuration and depth), what the walker reads from it equals what it read then but
 * for the value: its other fields and the class text of its other members are copied from the template, and
 * only the value is read. A template is kept only when nothing the walker reads from the object depends on
 * where it stands: no "timestamp" or "offline" key, no number in exponent form, its fields strings, nulls or
 * numbers (see sv_store). */
#define SVT_SLOTS 8 /* by position in the sampledValue array (modulo) */
#define SVT_WAYS 4  /* templates kept per position (chargers of several makes interleave) */
#define SVT_MAX 256 /* the longest object tail kept */
#define SVT_HEAD "{\"value\":"
#define SVT_HEAD_LEN 9
#define SVT_CLS_HEAD "{Kvalue" /* the class text of the head, with its zero: 8 bytes */
#define SVT_CLS_HEAD_LEN 8

/* How one kind of payload is read (a row's kind picks its configuration). */
typedef struct {
    const char *mkey;
    Py_ssize_t mklen;
    int anywhere, npaths;
    const char *path[W_MAX_PATHS];
    Py_ssize_t plen[W_MAX_PATHS];
    Py_ssize_t seg0len[W_MAX_PATHS]; /* the length of the first segment */
    const char *leaf[W_MAX_PATHS]; /* last segment (anywhere) */
    Py_ssize_t leaflen[W_MAX_PATHS];
    uint64_t leafmask; /* bit n: a leaf n bytes long (n < 64), a cheap test before the comparisons */
} WCfg;

typedef struct {
    const WCfg *cfg; /* the configuration it was read with; NULL: empty */
    int depth;
    int64_t slen, clen;
    unsigned char tail[SVT_MAX]; /* the object's bytes after its value, to its closing brace */
    char cls[3 * SVT_MAX + 16];  /* the class text of the tail */
    char num[64];                /* the printed numbers among its fields */
    WSample sample;              /* its fields but the value (strings point into tail or num) */
} SvTemplate;

typedef struct {
    WCfg cfg[W_MAX_CFG];
    int ncfg;
    const WCfg *c; /* the current payload's */
    /* per payload */
    WScalar field[W_MAX_PATHS];
    int leaf_seen[W_MAX_PATHS];
    cp_t stamp;    /* the first "timestamp" string (content), as the time detectors' regex finds it */
    int64_t stamp_len;
    int offline;   /* a key "offline" holding true, anywhere */
    int64_t nsampled; /* sampled values read (every measurand) */
    char numbuf[64 * 16];
    int numused;
    /* output */
    Col sure, fields[W_MAX_CFG][W_MAX_PATHS], scol[N_SCOLS], stamp_text, stamp_us, offline_col;
    int64_t scap;
    int oom;
    int64_t row;
    int energy_only; /* rows only for the samples of the energy register (a measurand omitted is it) */
    /* the schema check's keys of the payloads it is sure of (see class_keys), when asked: the class text is
     * written as the payload is read (scalars by the loop that holds them), so the payload is read once */
    Cls *cls;
    int cls_own; /* a number in exponent form: the payload is a class of its own */
    Col cls_key_col;
    SvTemplate svt[SVT_SLOTS][SVT_WAYS];
    unsigned svt_next[SVT_SLOTS]; /* the way a new template of that position replaces (round robin) */
} Walk;

static inline void wc_byte(Walk *w, char b) {
    if (w->cls) cls_byte(w->cls, b);
}

static inline void wc_name(Walk *w, cp_t s, int64_t n, cp_t e) {
    if (w->cls) {
        cls_byte(w->cls, 'K');
        cls_name(w->cls, s, n, e);
        cls_byte(w->cls, 0);
    }
}

/* The class text of the scalar read at [v, q): an escape-free string, a number, true, false or null. */
static inline void wc_scalar(Walk *w, cp_t v, cp_t q) {
    if (!w->cls) return;
    switch (*v) {
    case '"':
        cls_text(w->cls, v + 1, q - 1 - (v + 1));
        return;
    case 't':
        cls_byte(w->cls, 'T');
        return;
    case 'f':
        cls_byte(w->cls, 'F');
        return;
    case 'n':
        cls_byte(w->cls, 'Z');
        return;
    default:
        for (cp_t r = v; r < q; r++)
            if (*r == 'e' || *r == 'E') w->cls_own = 1;
        cls_blurred(w->cls, 'N', v, q - v);
    }
}

static int wk_key(cp_t s, int64_t n) {
    switch (n) {
    case 4: return memcmp(s, "unit", 4) == 0 ? WK_UNIT : WK_OTHER;
    case 5:
        if (memcmp(s, "value", 5) == 0) return WK_VALUE;
        if (memcmp(s, "phase", 5) == 0) return WK_PHASE;
        return WK_OTHER;
    case 6: return memcmp(s, "format", 6) == 0 ? WK_FORMAT : WK_OTHER;
    case 7: return memcmp(s, "context", 7) == 0 ? WK_CONTEXT : WK_OTHER;
    case 8: return memcmp(s, "location", 8) == 0 ? WK_LOCATION : WK_OTHER;
    case 9: return memcmp(s, "timestamp", 9) == 0 ? WK_TIMESTAMP : memcmp(s, "measurand", 9) == 0 ? WK_MEASURAND : WK_OTHER;
    case 10: return memcmp(s, "multiplier", 10) == 0 ? WK_MULTIPLIER : WK_OTHER;
    case 12: return memcmp(s, "sampledValue", 12) == 0 ? WK_SAMPLED : WK_OTHER;
    case 13: return memcmp(s, "unitOfMeasure", 13) == 0 ? WK_UOM : WK_OTHER;
    default: return WK_OTHER;
    }
}

static inline int wk_scalar_key(int k) { return k >= WK_TIMESTAMP && k <= WK_MULTIPLIER; }

/* A key at p (the opening quote), escape-free: its text; NULL if escaped or invalid. */
static cp_t w_key(cp_t p, cp_t e, cp_t *ks, int64_t *kl) {
    int esc = 0;
    cp_t q = quick_string(p, e, &esc);
    if (!q || esc) return NULL;
    *ks = p + 1;
    *kl = q - 1 - (p + 1);
    return q;
}

/* A number as json_decode prints it into a string field; NULL when not sure (see the section comment).
 * The printed form goes to w->numbuf. */
static cp_t w_number_decoded(Walk *w, cp_t p, cp_t e, WScalar *out) {
    cp_t start = p, q = skip_number(p, e);
    if (!q) return NULL;
    int neg = *p == '-';
    cp_t d = p + neg, dot = NULL, last_nz = NULL;
    int sig = 0, lead = 1;
    for (cp_t r = d; r < q; r++) {
        if (*r == 'e' || *r == 'E') return NULL;
        if (*r == '.') {
            dot = r;
            continue;
        }
        if (*r != '0') {
            lead = 0;
            last_nz = r;
        }
        if (!lead) sig++;
    }
    if (!last_nz && neg) return NULL; /* negative zero: printed "0" or "-0" */
    int64_t len;
    if (!dot) {
        if (q - d > 18) return NULL;
        len = q - start;
    } else {
        if (sig > 15) return NULL;
        /* strip the fraction's trailing zeros (and the point when nothing is left) */
        cp_t end = (last_nz && last_nz > dot) ? last_nz + 1 : dot;
        len = end - start;
    }
    if (w->numused + len > (int64_t)sizeof(w->numbuf)) return NULL;
    char *o = w->numbuf + w->numused;
    memcpy(o, start, (size_t)len);
    w->numused += (int)len;
    out->type = 2;
    out->s = o;
    out->len = len;
    return q;
}

/* A scalar as json_path_match gives it, for what is read here: escape-free string, plain integer, null. */
static cp_t w_scalar_path(cp_t p, cp_t e, WScalar *out) {
    if (p >= e) return NULL;
    if (*p == '"') {
        int esc = 0;
        cp_t q = quick_string(p, e, &esc);
        if (!q || esc) return NULL;
        out->type = 2;
        out->s = (const char *)p + 1;
        out->len = q - 1 - (p + 1);
        return q;
    }
    if (*p == 'n') {
        out->type = 1;
        return literal(p, e, "null", 4);
    }
    if (*p == '-' || is_digit(*p)) {
        cp_t q = skip_number(p, e);
        if (!q) return NULL;
        cp_t d = p + (*p == '-');
        for (cp_t r = d; r < q; r++)
            if (!is_digit(*r)) return NULL;
        if (q - d > 18 || (*p == '-' && q - d == 1 && *d == '0')) return NULL;
        out->type = 2;
        out->s = (const char *)p;
        out->len = q - p;
        return q;
    }
    return NULL;
}

/* A scalar as json_decode prints it into a string field: strings and null as json_path_match gives them,
 * true/false as text, numbers as Polars prints them. */
static cp_t w_scalar_decoded(Walk *w, cp_t p, cp_t e, WScalar *out) {
    if (p >= e) return NULL;
    switch (*p) {
    case '"':
    case 'n':
        return w_scalar_path(p, e, out);
    case 't':
        out->type = 2;
        out->s = "true";
        out->len = 4;
        return literal(p, e, "true", 4);
    case 'f':
        out->type = 2;
        out->s = "false";
        out->len = 5;
        return literal(p, e, "false", 5);
    case '{':
    case '[':
        return NULL;
    default:
        return w_number_decoded(w, p, e, out);
    }
}

/* A sampled value's text as a number, exactly as a correctly rounded parse reads it: "-?D+(.D+)?" with at
 * most 15 significant digits (an integer below 2^53 over a power of ten up to 1e22: one IEEE division,
 * correctly rounded), and its count of fraction digits as written. 0 for any other text. */
static int w_value_number(const char *s, int64_t n, double *out, int *decimals) {
    static const double P10[] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
                                 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
    const char *e = s + n, *p = s;
    int neg = p < e && *p == '-';
    p += neg;
    uint64_t m = 0;
    int sig = 0, frac = 0, digits = 0, dot = 0;
    for (; p < e; p++) {
        if (*p == '.') {
            if (dot || digits == 0) return 0;
            dot = 1;
            continue;
        }
        if (*p < '0' || *p > '9') return 0;
        digits++;
        if (dot) frac++;
        if (m || *p != '0') {
            if (++sig > 15) return 0;
            m = m * 10 + (uint64_t)(*p - '0');
        }
    }
    if (digits == 0 || (dot && frac == 0) || frac > 22) return 0;
    double v = (double)m / P10[frac];
    *out = neg ? -v : v;
    *decimals = frac;
    return 1;
}

enum { R_ANY, R_TOP, R_PATH, R_MV_ELEM, R_SV_ELEM, R_UOM };

static inline const WScalar *ws_get(const WSample *s, int k) {
    static const WScalar missing = {0, NULL, 0};
    return (s->set >> k) & 1 ? &s->f[k] : &missing;
}

static inline WScalar *ws_put(WSample *s, int k) {
    s->set |= 1u << k;
    return &s->f[k];
}

static cp_t w_value(Walk *w, cp_t p, cp_t e, int depth, int role, unsigned paths, int seg, WSample *sv);
static cp_t w_sv(Walk *w, cp_t p, cp_t e, int depth, WSample *one, int64_t pos);

/* The value of a key in one of the known places, or a generic value. */
static cp_t w_object(Walk *w, cp_t p, cp_t e, int depth, int role, unsigned paths, int seg, WSample *sv) {
    if (depth >= MAX_DEPTH) return NULL;
    unsigned seen = 0; /* known keys seen in this object (repeats are not sure) */
    unsigned path_seen = 0;
    wc_byte(w, '{');
    p = skip_ws(p + 1, e);
    if (p < e && *p == '}') {
        wc_byte(w, '}');
        return p + 1;
    }
    for (;;) {
        if (p >= e || *p != '"') return NULL;
        cp_t ks;
        int64_t kl;
        cp_t q = w_key(p, e, &ks, &kl);
        if (!q) return NULL;
        wc_name(w, ks, kl, e);
        p = skip_ws(q, e);
        if (p >= e || *p != ':') return NULL;
        p = skip_ws(p + 1, e);
        if (p >= e) return NULL;
        int k = wk_key(ks, kl);
        unsigned char c = *p;
        /* the reference's textual guard, wherever the key is */
        if (wk_scalar_key(k) && (c == '[' || c == '{')) return NULL;
        if (k == WK_SAMPLED && c != '[' && c != 'n') return NULL;
        if (k == WK_UOM && c != '{' && c != 'n') return NULL;
        if (k != WK_OTHER) {
            if (seen & (1u << k)) return NULL;
            seen |= 1u << k;
        }
        if (w->c->anywhere && kl < 64 && (w->c->leafmask >> kl) & 1) {
            for (int i = 0; i < w->c->npaths; i++) {
                if (kl == w->c->leaflen[i] && memcmp(ks, w->c->leaf[i], (size_t)kl) == 0) {
                    if (role != R_TOP || w->leaf_seen[i]) return NULL;
                    w->leaf_seen[i] = 1;
                }
            }
        }
        cp_t v = p;
        /* paths through this object */
        unsigned next = 0;
        int leaf_hit = -1;
        if (role == R_TOP || role == R_PATH) {
            for (int i = 0; i < w->c->npaths; i++) {
                if (!(paths & (1u << i))) continue;
                /* segment seg of path i (the first known already) */
                const char *s = w->c->path[i];
                Py_ssize_t n = w->c->plen[i], sl;
                int more;
                if (seg == 0) {
                    sl = w->c->seg0len[i];
                    more = sl < n;
                } else {
                    for (int j = 0; j < seg; j++) {
                        const char *dot = memchr(s, '.', (size_t)n);
                        n -= dot + 1 - s;
                        s = dot + 1;
                    }
                    const char *dot = memchr(s, '.', (size_t)n);
                    sl = dot ? dot - s : n;
                    more = dot != NULL;
                }
                if (sl != kl || memcmp(s, ks, (size_t)kl) != 0) continue;
                if (path_seen & (1u << i)) return NULL;
                path_seen |= 1u << i;
                if (more) next |= 1u << i;
                else if (leaf_hit >= 0) return NULL; /* two paths ending at one key */
                else leaf_hit = i;
            }
        }
        if (leaf_hit >= 0) {
            if (next) return NULL;
            p = w_scalar_path(p, e, &w->field[leaf_hit]);
        } else if (next) {
            if (c != '{') return NULL; /* a path through a non-object */
            p = w_object(w, p, e, depth + 1, R_PATH, next, seg + 1, NULL);
        } else if (role == R_TOP && w->c->mkey && kl == w->c->mklen && memcmp(ks, w->c->mkey, (size_t)kl) == 0) {
            if (c == 'n') {
                p = literal(p, e, "null", 4);
            } else if (c == '[') {
                /* the meter array: objects only */
                if (depth + 1 >= MAX_DEPTH) return NULL;
                wc_byte(w, '[');
                p = skip_ws(p + 1, e);
                if (p < e && *p == ']') {
                    wc_byte(w, ']');
                    p++;
                } else {
                    for (;;) {
                        if (p >= e || *p != '{') return NULL;
                        WSample mv;
                        mv.set = 0;
                        int64_t first = w->scol[S_ROW].n;
                        p = w_object(w, p, e, depth + 2, R_MV_ELEM, 0, 0, &mv);
                        if (!p) return NULL;
                        /* the meterValue's time, for its samples */
                        const WScalar *t = ws_get(&mv, WK_TIMESTAMP);
                        if (t->type == 2) {
                            int64_t us;
                            if (!iso_us_zone((cp_t)t->s, t->len, &us, 1)) return NULL;
                            for (int64_t r = first; r < w->scol[S_TS].n; r++) w->scol[S_TS].i64[r] = us;
                        } else {
                            Col *tc = &w->scol[S_TS];
                            for (int64_t r = first; r < tc->n; r++) {
                                tc->valid[r >> 3] &= (uint8_t)~(1u << (r & 7));
                                tc->nulls++;
                            }
                        }
                        p = skip_ws(p, e);
                        if (p >= e) return NULL;
                        if (*p == ']') {
                            wc_byte(w, ']');
                            p++;
                            break;
                        }
                        if (*p != ',') return NULL;
                        p = skip_ws(p + 1, e);
                    }
                }
            } else {
                return NULL;
            }
        } else if (role == R_MV_ELEM && k == WK_TIMESTAMP) {
            if (c != '"' && c != 'n') return NULL;
            p = w_scalar_decoded(w, p, e, ws_put(sv, WK_TIMESTAMP));
        } else if (role == R_MV_ELEM && k == WK_SAMPLED) {
            if (c == 'n') {
                p = literal(p, e, "null", 4);
            } else {
                wc_byte(w, '[');
                p = skip_ws(p + 1, e);
                if (p < e && *p == ']') {
                    wc_byte(w, ']');
                    p++;
                } else {
                    for (int64_t pos = 0;; pos++) {
                        if (p >= e || *p != '{') return NULL;
                        WSample one;
                        one.set = 0;
                        p = w_sv(w, p, e, depth + 2, &one, pos);
                        if (!p) return NULL;
                        w->nsampled++;
                        const WScalar *val = ws_get(&one, WK_VALUE), *ms = ws_get(&one, WK_MEASURAND);
                        if (w->energy_only && ms->type == 2 &&
                            !(ms->len == 29 && memcmp(ms->s, "Energy.Active.Import.Register", 29) == 0)) {
                            double num; /* no row, but the value is read alike: the same payloads are sure */
                            int dec;
                            if (val->type == 2 && !w_value_number(val->s, val->len, &num, &dec)) return NULL;
                            goto next_sample;
                        }
                        /* one sample row (its time is set when the meterValue closes) */
                        const WScalar *unit = ws_get(&one, WK_UNIT)->type == 2 ? ws_get(&one, WK_UNIT) : ws_get(&one, WK_UOM);
                        int ok = col_i64(&w->scol[S_ROW], w->row) && col_i64(&w->scol[S_TS], 0);
                        static const int map[][2] = {{S_MEASURAND, WK_MEASURAND}, {S_PHASE, WK_PHASE},
                                                     {S_MULT, WK_MULTIPLIER}, {S_CONTEXT, WK_CONTEXT},
                                                     {S_LOCATION, WK_LOCATION}, {S_VALUE, WK_VALUE}};
                        for (int i = 0; i < 6 && ok; i++) {
                            const WScalar *f = ws_get(&one, map[i][1]);
                            ok = f->type == 2 ? col_str(&w->scol[map[i][0]], f->s, f->len) : col_null(&w->scol[map[i][0]]);
                        }
                        if (ok) ok = unit->type == 2 ? col_str(&w->scol[S_UNIT], unit->s, unit->len) : col_null(&w->scol[S_UNIT]);
                        if (ok && val->type == 2) {
                            double num;
                            int dec;
                            if (!w_value_number(val->s, val->len, &num, &dec)) return NULL; /* text Polars reads */
                            ok = col_f64(&w->scol[S_NUM], num) && col_i8(&w->scol[S_DEC], (int8_t)dec);
                        } else if (ok) {
                            ok = col_null(&w->scol[S_NUM]) && col_i8(&w->scol[S_DEC], 0);
                        }
                        if (!ok) {
                            w->oom = 1;
                            return NULL;
                        }
                    next_sample:
                        p = skip_ws(p, e);
                        if (p >= e) return NULL;
                        if (*p == ']') {
                            wc_byte(w, ']');
                            p++;
                            break;
                        }
                        if (*p != ',') return NULL;
                        p = skip_ws(p + 1, e);
                    }
                }
            }
        } else if (role == R_SV_ELEM && wk_scalar_key(k) && k != WK_TIMESTAMP && k != WK_MULTIPLIER) {
            p = w_scalar_decoded(w, p, e, ws_put(sv, k));
        } else if (role == R_SV_ELEM && k == WK_UOM) {
            if (c == 'n') {
                p = literal(p, e, "null", 4);
            } else {
                WSample u;
                u.set = 0;
                p = w_object(w, p, e, depth + 1, R_UOM, 0, 0, &u);
                /* unitOfMeasure.unit stands in the WK_UOM slot, its multiplier in WK_MULTIPLIER */
                if (p) {
                    *ws_put(sv, WK_UOM) = *ws_get(&u, WK_UNIT);
                    *ws_put(sv, WK_MULTIPLIER) = *ws_get(&u, WK_MULTIPLIER);
                }
            }
        } else if (role == R_UOM && (k == WK_UNIT || k == WK_MULTIPLIER)) {
            p = w_scalar_decoded(w, p, e, ws_put(sv, k));
        } else {
            p = w_value(w, p, e, depth + 1, R_ANY, 0, 0, NULL);
        }
        if (!p) return NULL;
        if (c != '{' && c != '[') wc_scalar(w, v, p);
        if (k == WK_TIMESTAMP && c == '"' && !w->stamp) {
            w->stamp = v + 1;
            w->stamp_len = p - 1 - (v + 1);
        }
        if (c == 't' && kl == 7 && memcmp(ks, "offline", 7) == 0) w->offline = 1;
        p = skip_ws(p, e);
        if (p >= e) return NULL;
        if (*p == '}') {
            wc_byte(w, '}');
            return p + 1;
        }
        if (*p != ',') return NULL;
        p = skip_ws(p + 1, e);
    }
}

/* Any value, checked as the reference's guard would see it. */
static cp_t w_value(Walk *w, cp_t p, cp_t e, int depth, int role, unsigned paths, int seg, WSample *sv) {
    if (p >= e) return NULL;
    switch (*p) {
    case '{':
        return w_object(w, p, e, depth, role, paths, seg, sv);
    case '[': {
        if (depth >= MAX_DEPTH) return NULL;
        int had_object = 0;
        wc_byte(w, '[');
        p = skip_ws(p + 1, e);
        if (p < e && *p == ']') {
            wc_byte(w, ']');
            return p + 1;
        }
        for (;;) {
            if (p >= e) return NULL;
            if (*p == '{') had_object = 1;
            else if (had_object) return NULL; /* an object, then something else: the guard's territory */
            cp_t v = p;
            p = w_value(w, p, e, depth + 1, R_ANY, 0, 0, NULL);
            if (!p) return NULL;
            if (*v != '{' && *v != '[') wc_scalar(w, v, p);
            p = skip_ws(p, e);
            if (p >= e) return NULL;
            if (*p == ']') {
                wc_byte(w, ']');
                return p + 1;
            }
            if (*p != ',') return NULL;
            p = skip_ws(p + 1, e);
        }
    }
    case '"': {
        int esc = 0;
        cp_t q = quick_string(p, e, &esc);
        return (q && !esc) ? q : NULL;
    }
    default:
        return skip_value(p, e, depth);
    }
}

/* The end of the scalar at p (an escape-free string, a number, true, false or null), NULL for anything else. */
static cp_t sv_scalar_end(cp_t p, cp_t e) {
    if (p >= e) return NULL;
    switch (*p) {
    case '"': {
        int esc = 0;
        cp_t q = quick_string(p, e, &esc);
        return esc ? NULL : q;
    }
    case 't': return literal(p, e, "true", 4);
    case 'f': return literal(p, e, "false", 5);
    case 'n': return literal(p, e, "null", 4);
    default: return (*p == '-' || is_digit(*p)) ? skip_number(p, e) : NULL;
    }
}

/* Keep the sampled-value object just read at [p, q) as template t when it qualifies (see SvTemplate).
 * one: what was read from it; c0: the length of the class text before it. */
static void sv_store(Walk *w, SvTemplate *t, cp_t p, cp_t q, int depth, const WSample *one, int64_t c0) {
    t->cfg = NULL;
    if (q - p <= SVT_HEAD_LEN || memcmp(p, SVT_HEAD, SVT_HEAD_LEN) != 0) return;
    cp_t v = p + SVT_HEAD_LEN, qv = sv_scalar_end(v, q);
    if (!qv || q - qv > SVT_MAX) return;
    /* no "timestamp" or "offline" key (what they give depends on the payload), no exponent (a class of its own) */
    cp_t open = NULL;
    for (cp_t r = qv; r < q; r++) {
        if (*r == '"') {
            if (!open) {
                open = r + 1;
                continue;
            }
            int64_t n = r - open;
            if ((n == 9 && memcmp(open, "timestamp", 9) == 0) || (n == 7 && memcmp(open, "offline", 7) == 0)) return;
            open = NULL;
        } else if (!open && (*r == 'e' || *r == 'E') && (is_digit(r[-1]) || r[-1] == '.')) {
            return;
        }
    }
    WSample s = *one;
    s.set &= ~(1u << WK_VALUE);
    int64_t used = 0;
    for (int k = 0; k <= WK_UOM; k++) {
        WScalar *f = &s.f[k];
        if (!((s.set >> k) & 1) || f->type != 2) continue;
        if (f->s >= (const char *)qv && f->s + f->len <= (const char *)q) {
            f->s = (const char *)t->tail + (f->s - (const char *)qv);
        } else if (f->s >= w->numbuf && f->s + f->len <= w->numbuf + sizeof(w->numbuf) &&
                   used + f->len <= (int64_t)sizeof(t->num)) {
            memcpy(t->num + used, f->s, (size_t)f->len);
            f->s = t->num + used;
            used += f->len;
        } else {
            return; /* true or false (a static text) */
        }
    }
    if (w->cls) {
        /* the value's class text: an enum's id (3 bytes); tag, text and end; or one byte */
        int64_t vcl;
        if (*v == '"') vcl = cls_enum(w->cls, v + 1, qv - 1 - (v + 1)) >= 0 ? 3 : (qv - v - 2) + 2;
        else if (*v == '-' || is_digit(*v)) vcl = (qv - v) + 2;
        else vcl = 1;
        int64_t b = c0 + SVT_CLS_HEAD_LEN + vcl, clen = w->cls->len - b;
        if (clen < 0 || clen > (int64_t)sizeof(t->cls) || memcmp(w->cls->buf + c0, SVT_CLS_HEAD, SVT_CLS_HEAD_LEN) != 0)
            return;
        memcpy(t->cls, w->cls->buf + b, (size_t)clen);
        t->clen = clen;
    }
    memcpy(t->tail, qv, (size_t)(q - qv));
    t->slen = q - qv;
    t->sample = s;
    t->depth = depth;
    t->cfg = w->c;
}

/* A sampledValue object at p (the pos-th of its array): through a template of its place when its bytes after
 * the value are the template's, else read in full (and kept as a template of that place). */
static cp_t w_sv(Walk *w, cp_t p, cp_t e, int depth, WSample *one, int64_t pos) {
    int slot = (int)(pos & (SVT_SLOTS - 1));
    if (e - p > SVT_HEAD_LEN && memcmp(p, SVT_HEAD, SVT_HEAD_LEN) == 0) {
        int used = w->numused;
        cp_t v = p + SVT_HEAD_LEN;
        WScalar val;
        cp_t q = w_scalar_decoded(w, v, e, &val);
        for (int k = 0; q && k < SVT_WAYS; k++) {
            const SvTemplate *t = &w->svt[slot][k];
            if (t->cfg != w->c || t->depth != depth || e - q < t->slen ||
                memcmp(q, t->tail, (size_t)t->slen) != 0)
                continue;
            *one = t->sample;
            *ws_put(one, WK_VALUE) = val;
            if (w->cls) {
                cls_put(w->cls, SVT_CLS_HEAD, SVT_CLS_HEAD_LEN);
                wc_scalar(w, v, q);
                cls_put(w->cls, t->cls, t->clen);
            }
            return q + t->slen;
        }
        w->numused = used; /* (the full reading prints the value again) */
    }
    int64_t c0 = w->cls ? w->cls->len : 0;
    cp_t q = w_object(w, p, e, depth, R_SV_ELEM, 0, 0, one);
    if (q) sv_store(w, &w->svt[slot][w->svt_next[slot]++ % SVT_WAYS], p, q, depth, one, c0);
    return q;
}

typedef struct {
    int64_t n, dlen, nulls;
    int nfull;
} ColMark;

static void col_mark(Col *c, ColMark *m) {
    m->n = c->n;
    m->dlen = c->dlen;
    m->nulls = c->nulls;
    m->nfull = c->nfull;
}

/* Drop the rows added since the mark (their validity bits cleared for the rows that come next). */
static void col_back(Col *c, const ColMark *m) {
    for (int64_t r = m->n; r < c->n; r++) c->valid[r >> 3] &= (uint8_t)~(1u << (r & 7));
    if (c->kind == K_VIEW && (c->dlen != m->dlen || c->nfull != m->nfull)) {
        memset(c->seen, 0, VIEW_CACHE * sizeof(ViewSeen));
        if (c->nfull != m->nfull) { /* a buffer was started since the mark: its bytes stay (unreferenced) */
            c->n = m->n;
            c->nulls = m->nulls;
            return;
        }
    }
    c->n = m->n;
    c->dlen = m->dlen;
    c->nulls = m->nulls;
}

/* The row of a payload the walker leaves (not sure, or null): its fields, time and flag null. */
static int w_unsure(Walk *w) {
    Col *fields = w->fields[w->c - w->cfg];
    if (!col_i8(&w->sure, 0)) return 0;
    for (int i = 0; i < w->c->npaths; i++)
        if (!col_null(&fields[i])) return 0;
    if (w->cls && !col_null(&w->cls_key_col)) return 0;
    return col_null(&w->stamp_text) && col_null(&w->stamp_us) && col_i8(&w->offline_col, 0);
}

/* One payload: 1 sure, 0 not sure, -1 out of memory. */
static int w_payload(Walk *w, cp_t s, int64_t len) {
    const WCfg *cf = w->c;
    Col *fields = w->fields[cf - w->cfg];
    ColMark marks[N_SCOLS];
    for (int i = 0; i < N_SCOLS; i++) col_mark(&w->scol[i], &marks[i]);
    for (int i = 0; i < cf->npaths; i++) {
        w->field[i].type = 0;
        w->leaf_seen[i] = 0;
    }
    w->numused = 0;
    w->stamp = NULL;
    w->offline = 0;
    w->nsampled = 0;
    w->cls_own = 0;
    if (w->cls) {
        w->cls->len = 0;
        if (!cls_reserve(w->cls, len)) return -1;
    }
    cp_t e = s + len, p = skip_ws(s, e);
    int ok = p < e && *p == '{';
    if (ok) {
        unsigned all = cf->npaths ? (1u << cf->npaths) - 1 : 0;
        p = w_object(w, p, e, 0, R_TOP, all, 0, NULL);
        ok = p != NULL && skip_ws(p, e) == e;
    }
    int64_t stamp_us = 0;
    if (ok && w->stamp && !iso_us_zone(w->stamp, w->stamp_len, &stamp_us, 1)) ok = 0; /* a time Polars reads */
    if (w->oom) return -1;
    if (!ok) {
        for (int i = 0; i < N_SCOLS; i++) col_back(&w->scol[i], &marks[i]);
        return w_unsure(w) ? 0 : -1;
    }
    if (w->stamp) {
        if (!col_str(&w->stamp_text, (const char *)w->stamp, w->stamp_len) || !col_i64(&w->stamp_us, stamp_us)) return -1;
    } else if (!col_null(&w->stamp_text) || !col_null(&w->stamp_us)) {
        return -1;
    }
    if (!col_i8(&w->offline_col, (int8_t)w->offline)) return -1;
    if (!col_i8(&w->sure, w->nsampled ? 2 : 1)) return -1; /* 2: sure, with samples */
    if (w->cls && !col_i64(&w->cls_key_col, cls_key(w->cls, !w->cls_own, s, len))) return -1;
    for (int i = 0; i < cf->npaths; i++) {
        WScalar *f = &w->field[i];
        if (!(f->type == 2 ? col_str(&fields[i], f->s, f->len) : col_null(&fields[i]))) return -1;
    }
    return 1;
}

struct ArrowArrayStream {
    int (*get_schema)(struct ArrowArrayStream *, struct ArrowSchema *);
    int (*get_next)(struct ArrowArrayStream *, struct ArrowArray *);
    const char *(*get_last_error)(struct ArrowArrayStream *);
    void (*release)(struct ArrowArrayStream *);
    void *private_data;
};

/* A string column taken from an Arrow stream capsule (as Polars exports a Series): its arrays ("vu"
 * string view, "U" large string or "u" string), kept until strings_free. */
typedef struct {
    struct ArrowArray *arrays;
    int64_t n, rows;
    struct ArrowSchema schema;
    char format[3];
} Strings;

static void strings_free(Strings *t) {
    for (int64_t i = 0; i < t->n; i++)
        if (t->arrays[i].release) t->arrays[i].release(&t->arrays[i]);
    free(t->arrays);
    if (t->schema.release) t->schema.release(&t->schema);
    memset(t, 0, sizeof(*t));
}

/* Reads every array of the stream (with the GIL: the stream is Polars' code). 0 with an exception set;
 * `who` names the caller in its messages. Call strings_free either way. */
static int strings_read(PyObject *cap, const char *who, Strings *t) {
    memset(t, 0, sizeof(*t));
    struct ArrowArrayStream *st = PyCapsule_GetPointer(cap, "arrow_array_stream");
    if (!st) return 0;
    if (st->get_schema(st, &t->schema) != 0) {
        PyErr_Format(PyExc_ValueError, "%s: the stream gave no schema", who);
        return 0;
    }
    strncpy(t->format, t->schema.format, 2);
    if (strcmp(t->format, "vu") != 0 && strcmp(t->format, "U") != 0 && strcmp(t->format, "u") != 0) {
        PyErr_Format(PyExc_ValueError, "%s: a string column expected (Arrow format %s)", who, t->schema.format);
        return 0;
    }
    for (;;) {
        struct ArrowArray a;
        memset(&a, 0, sizeof(a));
        if (st->get_next(st, &a) != 0) {
            PyErr_Format(PyExc_ValueError, "%s: the stream failed", who);
            return 0;
        }
        if (!a.release) return 1;
        struct ArrowArray *grown = realloc(t->arrays, sizeof(*t->arrays) * (size_t)(t->n + 1));
        if (!grown) {
            a.release(&a);
            PyErr_NoMemory();
            return 0;
        }
        t->arrays = grown;
        t->arrays[t->n++] = a;
        t->rows += a.length;
    }
}

/* Value i of one of the column's arrays: 0 when null, else 1 with its bytes. */
static inline int string_at(const Strings *t, const struct ArrowArray *a, int64_t i, cp_t *s, int64_t *len) {
    int64_t j = i + a->offset;
    const uint8_t *valid = a->buffers[0];
    if (valid && !((valid[j >> 3] >> (j & 7)) & 1)) return 0;
    if (t->format[0] == 'v') {
        const uint8_t *view = (const uint8_t *)a->buffers[1] + 16 * j;
        int32_t n, bi, off;
        memcpy(&n, view, 4);
        *len = n;
        if (n <= 12) {
            *s = view + 4;
        } else {
            memcpy(&bi, view + 8, 4);
            memcpy(&off, view + 12, 4);
            *s = (const uint8_t *)a->buffers[2 + bi] + off;
        }
    } else if (t->format[0] == 'U') {
        const int64_t *o = a->buffers[1];
        *s = (const uint8_t *)a->buffers[2] + o[j];
        *len = o[j + 1] - o[j];
    } else {
        const int32_t *o = a->buffers[1];
        *s = (const uint8_t *)a->buffers[2] + o[j];
        *len = o[j + 1] - o[j];
    }
    return 1;
}

/* Every payload of the column, each as its kind's configuration says; a null payload is not sure. Returns
 * 0 on out of memory. */
static int w_column(Walk *w, const Strings *t, const uint8_t *kinds) {
    for (int64_t k = 0; k < t->n; k++) {
        const struct ArrowArray *a = &t->arrays[k];
        for (int64_t i = 0; i < a->length; i++) {
            w->c = &w->cfg[kinds ? kinds[w->row] : 0];
            cp_t s;
            int64_t len;
            if (string_at(t, a, i, &s, &len) ? w_payload(w, s, len) < 0 : !w_unsure(w)) return 0;
            w->row++;
        }
    }
    return 1;
}

static void walk_free(Walk *w) {
    col_free(&w->sure);
    col_free(&w->stamp_text);
    col_free(&w->stamp_us);
    col_free(&w->offline_col);
    col_free(&w->cls_key_col);
    for (int k = 0; k < W_MAX_CFG; k++)
        for (int i = 0; i < W_MAX_PATHS; i++) col_free(&w->fields[k][i]);
    for (int i = 0; i < N_SCOLS; i++) col_free(&w->scol[i]);
}

/* One configuration from (meter_key, paths, anywhere). */
static int w_config(WCfg *c, PyObject *t) {
    PyObject *mkey, *paths;
    int anywhere;
    if (!PyTuple_Check(t) || !PyArg_ParseTuple(t, "OO!p", &mkey, &PyTuple_Type, &paths, &anywhere)) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "a configuration: (meter_key, paths, anywhere)");
        return 0;
    }
    if (mkey != Py_None) {
        if (!PyBytes_Check(mkey)) {
            PyErr_SetString(PyExc_TypeError, "meter_key: bytes or None");
            return 0;
        }
        c->mkey = PyBytes_AS_STRING(mkey);
        c->mklen = PyBytes_GET_SIZE(mkey);
    }
    c->npaths = (int)PyTuple_GET_SIZE(paths);
    if (c->npaths > W_MAX_PATHS) {
        PyErr_SetString(PyExc_ValueError, "paths: at most 10");
        return 0;
    }
    for (int i = 0; i < c->npaths; i++) {
        PyObject *p = PyTuple_GET_ITEM(paths, i);
        if (!PyBytes_Check(p) || PyBytes_GET_SIZE(p) == 0) {
            PyErr_SetString(PyExc_TypeError, "paths: non-empty bytes");
            return 0;
        }
        c->path[i] = PyBytes_AS_STRING(p);
        c->plen[i] = PyBytes_GET_SIZE(p);
        const char *dot = NULL;
        c->seg0len[i] = c->plen[i];
        for (const char *q = c->path[i]; q < c->path[i] + c->plen[i]; q++) {
            if (*q != '.') continue;
            if (!dot) c->seg0len[i] = q - c->path[i];
            dot = q;
        }
        c->leaf[i] = dot ? dot + 1 : c->path[i];
        c->leaflen[i] = c->plen[i] - (c->leaf[i] - c->path[i]);
        if (c->leaflen[i] < 64) c->leafmask |= 1ull << c->leaflen[i];
        else c->leafmask = ~0ull;
        if (anywhere && dot) {
            PyErr_SetString(PyExc_ValueError, "anywhere: single keys only");
            return 0;
        }
    }
    c->anywhere = anywhere;
    return 1;
}

static PyObject *walk_payloads(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *stream_cap, *kinds_obj, *configs, *enums = Py_None;
    int energy_only = 0;
    if (!PyArg_ParseTuple(args, "OOO!|pO", &stream_cap, &kinds_obj, &PyTuple_Type, &configs, &energy_only, &enums))
        return NULL;
    if (enums != Py_None && !PyTuple_Check(enums)) {
        PyErr_SetString(PyExc_TypeError, "enums: a tuple of bytes or None");
        return NULL;
    }
    Walk *w = calloc(1, sizeof(Walk));
    if (!w) return PyErr_NoMemory();
    w->energy_only = energy_only;
    Cls cls;
    memset(&cls, 0, sizeof(cls));
    PyObject *out = NULL;
    Strings t;
    memset(&t, 0, sizeof(t));
    Py_buffer kinds;
    int have_kinds = 0, meters = 0;
    w->ncfg = (int)PyTuple_GET_SIZE(configs);
    if (w->ncfg < 1 || w->ncfg > W_MAX_CFG) {
        PyErr_SetString(PyExc_ValueError, "configs: 1 to 4");
        goto done;
    }
    for (int k = 0; k < w->ncfg; k++) {
        if (!w_config(&w->cfg[k], PyTuple_GET_ITEM(configs, k))) goto done;
        meters |= w->cfg[k].mkey != NULL;
    }
    if (kinds_obj != Py_None) {
        if (PyObject_GetBuffer(kinds_obj, &kinds, PyBUF_SIMPLE) < 0) goto done;
        have_kinds = 1;
    }
    if (enums != Py_None) {
        if (!cls_init(&cls, enums)) goto done;
        w->cls = &cls;
    }
    if (!strings_read(stream_cap, "walk_payloads", &t)) goto done;
    int64_t rows = t.rows;
    int64_t of_kind[W_MAX_CFG] = {rows}; /* a configuration's field columns: a row per payload of its kind */
    if (have_kinds) {
        if (kinds.len != rows) {
            PyErr_SetString(PyExc_ValueError, "kinds: one byte per payload");
            goto done;
        }
        of_kind[0] = 0;
        for (int64_t i = 0; i < rows; i++) {
            uint8_t k = ((const uint8_t *)kinds.buf)[i];
            if (k >= w->ncfg) {
                PyErr_SetString(PyExc_ValueError, "kinds: a configuration number");
                goto done;
            }
            of_kind[k]++;
        }
    }
    int ok = col_init(&w->sure, K_I8, rows, 0) && col_init(&w->stamp_text, K_VIEW, rows, rows * 24) &&
             col_init(&w->stamp_us, K_I64, rows, 0) && col_init(&w->offline_col, K_I8, rows, 0);
    if (ok && w->cls) ok = col_init(&w->cls_key_col, K_I64, rows, 0);
    for (int k = 0; k < w->ncfg; k++)
        for (int i = 0; i < w->cfg[k].npaths && ok; i++)
            ok = col_init(&w->fields[k][i], K_VIEW, of_kind[k], of_kind[k] * 8);
    int64_t srows = meters ? rows * 4 : 16;
    for (int i = 0; i < N_SCOLS && ok; i++)
        ok = col_init(&w->scol[i], i == S_ROW || i == S_TS ? K_I64 : i == S_NUM ? K_F64 : i == S_DEC ? K_I8 : K_VIEW,
                      srows, srows * 8);
    if (!ok) {
        PyErr_NoMemory();
        goto done;
    }
    const uint8_t *kp = have_kinds ? (const uint8_t *)kinds.buf : NULL;
    Py_BEGIN_ALLOW_THREADS
    ok = w_column(w, &t, kp);
    Py_END_ALLOW_THREADS
    if (!ok) {
        PyErr_NoMemory();
        goto done;
    }
    PyObject *fields = PyTuple_New(w->ncfg), *samples = NULL, *sure = NULL, *stamps = NULL;
    if (!fields) goto done;
    for (int k = 0; k < w->ncfg; k++) {
        PyObject *group = PyTuple_New(w->cfg[k].npaths);
        if (!group) {
            Py_DECREF(fields);
            goto done;
        }
        PyTuple_SET_ITEM(fields, k, group);
        for (int i = 0; i < w->cfg[k].npaths; i++) {
            PyObject *pair = export_col(&w->fields[k][i], "field");
            if (!pair) {
                Py_DECREF(fields);
                goto done;
            }
            PyTuple_SET_ITEM(group, i, pair);
        }
    }
    sure = export_col(&w->sure, "sure");
    if (meters) {
        samples = PyDict_New();
        for (int i = 0; i < N_SCOLS && samples; i++) {
            PyObject *pair = export_col(&w->scol[i], SCOL_NAMES[i]);
            if (!pair || PyDict_SetItemString(samples, SCOL_NAMES[i], pair) < 0) {
                Py_XDECREF(pair);
                Py_CLEAR(samples);
                break;
            }
            Py_DECREF(pair);
        }
    } else {
        Py_INCREF(Py_None);
        samples = Py_None;
    }
    stamps = PyTuple_New(3);
    if (stamps) {
        PyObject *a = export_col(&w->stamp_text, "stamp_text"), *b = a ? export_col(&w->stamp_us, "stamp") : NULL;
        PyObject *c = b ? export_col(&w->offline_col, "offline") : NULL;
        if (!c) {
            Py_XDECREF(a);
            Py_XDECREF(b);
            Py_CLEAR(stamps);
        } else {
            PyTuple_SET_ITEM(stamps, 0, a);
            PyTuple_SET_ITEM(stamps, 1, b);
            PyTuple_SET_ITEM(stamps, 2, c);
        }
    }
    PyObject *keys = NULL;
    if (!w->cls) {
        Py_INCREF(Py_None);
        keys = Py_None;
    } else {
        keys = export_col(&w->cls_key_col, "key");
    }
    if (sure && samples && stamps && keys) out = PyTuple_Pack(5, sure, fields, samples, stamps, keys);
    Py_XDECREF(keys);
    Py_XDECREF(stamps);
    Py_XDECREF(sure);
    Py_DECREF(fields);
    Py_XDECREF(samples);
done:
    if (have_kinds) PyBuffer_Release(&kinds);
    strings_free(&t);
    walk_free(w);
    free(w);
    cls_free(&cls);
    return out;
}

/* -------------------------------------------------------------------------- schema classes (analysis) */
/* (the class text helpers and the enum table are above the payload walker, which writes class text too) */

/* An escape-free string at p (the quote): its end, or NULL (escaped or invalid: a class of its own). */
static cp_t cls_string(cp_t p, cp_t e) {
    int esc = 0;
    cp_t q = quick_string(p, e, &esc);
    return q && !esc ? q : NULL;
}

/* The value at p, its class text appended (room for it reserved by cls_reserve): its end, or NULL. */
static cp_t cls_value(Cls *c, cp_t p, cp_t e, int depth) {
    p = skip_ws(p, e);
    if (p >= e) return NULL;
    switch (*p) {
    case '{': {
        if (depth >= MAX_DEPTH) return NULL;
        cls_byte(c, '{');
        p = skip_ws(p + 1, e);
        if (p < e && *p == '}') {
            cls_byte(c, '}');
            return p + 1;
        }
        for (;;) {
            if (p >= e || *p != '"') return NULL;
            cp_t q = cls_string(p, e);
            if (!q) return NULL;
            cls_byte(c, 'K');
            cls_name(c, p + 1, q - 1 - (p + 1), e);
            cls_byte(c, 0);
            p = skip_ws(q, e);
            if (p >= e || *p != ':') return NULL;
            p = cls_value(c, p + 1, e, depth + 1);
            if (!p) return NULL;
            p = skip_ws(p, e);
            if (p >= e) return NULL;
            if (*p == '}') {
                cls_byte(c, '}');
                return p + 1;
            }
            if (*p != ',') return NULL;
            p = skip_ws(p + 1, e);
        }
    }
    case '[': {
        if (depth >= MAX_DEPTH) return NULL;
        cls_byte(c, '[');
        p = skip_ws(p + 1, e);
        if (p < e && *p == ']') {
            cls_byte(c, ']');
            return p + 1;
        }
        for (;;) {
            p = cls_value(c, p, e, depth + 1);
            if (!p) return NULL;
            p = skip_ws(p, e);
            if (p >= e) return NULL;
            if (*p == ']') {
                cls_byte(c, ']');
                return p + 1;
            }
            if (*p != ',') return NULL;
            p = skip_ws(p + 1, e);
        }
    }
    case '"': {
        cp_t q = cls_string(p, e);
        if (!q) return NULL;
        cls_text(c, p + 1, q - 1 - (p + 1));
        return q;
    }
    case 't':
        if (!literal(p, e, "true", 4)) return NULL;
        cls_byte(c, 'T');
        return p + 4;
    case 'f':
        if (!literal(p, e, "false", 5)) return NULL;
        cls_byte(c, 'F');
        return p + 5;
    case 'n':
        if (!literal(p, e, "null", 4)) return NULL;
        cls_byte(c, 'Z');
        return p + 4;
    default: {
        cp_t q = skip_number(p, e);
        if (!q) return NULL;
        for (cp_t r = p; r < q; r++)
            if (*r == 'e' || *r == 'E') return NULL; /* 1e5 is a float, 125 an integer: apart */
        cls_blurred(c, 'N', p, q - p);
        return q;
    }
    }
}

static int64_t cls_one(Cls *c, cp_t s, int64_t n) {
    c->len = 0;
    cp_t p = cls_reserve(c, n) ? cls_value(c, s, s + n, 0) : NULL;
    return cls_key(c, p && skip_ws(p, s + n) == s + n, s, n); /* else a class of its own */
}

static PyObject *class_keys(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *stream_cap, *enums;
    if (!PyArg_ParseTuple(args, "OO!", &stream_cap, &PyTuple_Type, &enums)) return NULL;
    Cls c;
    memset(&c, 0, sizeof(c));
    Col cls;
    memset(&cls, 0, sizeof(cls));
    PyObject *out = NULL;
    Strings t;
    memset(&t, 0, sizeof(t));
    if (!cls_init(&c, enums)) goto done;
    if (!strings_read(stream_cap, "class_keys", &t)) goto done;
    if (!col_init(&cls, K_I64, t.rows, 0)) {
        PyErr_NoMemory();
        goto done;
    }
    int ok = 1;
    Py_BEGIN_ALLOW_THREADS
    for (int64_t k = 0; k < t.n && ok; k++) {
        const struct ArrowArray *a = &t.arrays[k];
        for (int64_t i = 0; i < a->length && ok; i++) {
            cp_t s;
            int64_t len;
            if (!string_at(&t, a, i, &s, &len)) {
                ok = col_null(&cls);
                continue;
            }
            int64_t y = cls_one(&c, s, len);
            ok = !c.oom && col_i64(&cls, y);
        }
    }
    Py_END_ALLOW_THREADS
    if (!ok) {
        PyErr_NoMemory();
        goto done;
    }
    out = export_col(&cls, "class");
done:
    strings_free(&t);
    col_free(&cls);
    cls_free(&c);
    return out;
}

static PyMethodDef METHODS[] = {
    {"walk_payloads", walk_payloads, METH_VARARGS,
     "walk_payloads(stream, kinds, configs, energy_only=False, enums=None) -> (sure, fields, samples, stamps, keys)\n\n"
     "Read OCPP payloads (an Arrow string stream capsule) for the analysis; see the C source."},
    {"class_keys", class_keys, METH_VARARGS,
     "class_keys(stream, enums) -> class\n\n"
     "Each payload's schema class key (an int64 column as a capsule pair); see the C source."},
    {"count_lines", count_lines, METH_VARARGS, "count_lines(buffer) -> number of newline bytes"},
    {"split_jsonl", split_jsonl, METH_VARARGS,
     "split_jsonl(chunk, keys, first_line) -> (columns, slow_lines, lines)\n\n"
     "lines is -1 when the first 256 non-blank lines were all slow: the chunk was not split.\n"
     "Split a chunk of JSON lines into Arrow columns (as capsule pairs); lines it does not fully understand\n"
     "are returned as (line number, start, end) for the general reader."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_speedups", NULL, -1, METHODS, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__speedups(void) {
    init_tables();
    return PyModule_Create(&MODULE);
}
