/* _leafscan: the per-entry loop of `provenant verify` over an SQLite store, in C.
 *
 * Why it exists: a verifier must read every logged row, rebuild its leaf and hash it. In Python
 * that costs ~30 µs a record (and reading the rows through the sqlite3 driver alone costs more
 * than hashing them), so a million records took minutes. Here the same work is done over the
 * database file directly, through libsqlite3 and OpenSSL's SHA-256.
 *
 * What it is: the second implementation of the leaf described in service/integrity/leaf.py
 * (read that docstring first; this file follows it and canonical.py, and names where it must
 * agree with orjson, rfc8785 or SQLAlchemy's storage of a type). It is never the judge: an entry
 * is "confirmed" only when the leaf rebuilt here equals the stored leaf and its content hashes
 * check. Anything else - a mismatch, or a value this code is not certain to canonicalize exactly
 * as Python does (an unusual type in a column, a JSON number outside the plain range, a
 * non-ASCII object key, an unknown schema version...) - is handed back by log index and
 * re-checked by the Python verifier, which alone names problems. So the native path can only
 * be faster, never less strict.
 *
 * scan(path, total, bounds, snapshots, progress, threads) covers log indexes 0 <= idx < total:
 *  - the tree: log_entries in index order, the Merkle root (over the stored leaves) at each of
 *    the sorted checkpoint sizes, the gaps in the indexes and, within one checkpoint's range,
 *    the entries out of ascending id order (verify._walk's checks, on the calling thread);
 *  - the entries: chunks of the log joined with audit_records / admin_events, retrievals and
 *    policy_decisions merged in by index, checked by ``threads`` threads, each with its own
 *    read-only connection, without the GIL (so no Python object is touched there).
 * It returns (size, confirmed, gaps, roots, reordered, recheck): the number of entries (the
 * tree size), how many were confirmed, (expected, found) index pairs, (tree size, root, range
 * start) per checkpoint reached, (idx, entry id, previous id) per entry out of order, and the
 * sorted indexes of the entries not confirmed. It raises Unsupported when the store is not what
 * it expects (a file it cannot open, a missing column, a log index or entry id not in the stored
 * form) or a resource fails: the caller then runs the Python verifier instead.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <locale.h>
#include <pthread.h>
#include <stdatomic.h>
#include <math.h>
#include <openssl/evp.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------ */
/* Outcomes. Every step returns one: OK, UNSURE (hand this entry to Python) or ERROR (out of    */
/* memory or a library failure: the scan stops). The checks run without the GIL, on several    */
/* threads, so nothing below the entry point touches a Python object or raises.                */

typedef enum { ST_OK = 0, ST_UNSURE = 1, ST_ERROR = 2 } Status;

#define TRY(expr)                      \
    do {                               \
        Status st_ = (expr);           \
        if (st_ != ST_OK) return st_;  \
    } while (0)

static PyObject *Unsupported; /* _leafscan.Unsupported: run the Python verifier instead */

/* ------------------------------------------------------------------------------------------ */
/* A growable byte buffer with a hard ceiling: no leaf document, decoded JSON value or          */
/* canonical form may exceed it (one that would is handed to Python, which has no such limit). */

#define BUF_LIMIT ((size_t)64 << 20)

typedef struct {
    char *data;
    size_t len, cap;
} Buf;

static Status buf_reserve(Buf *b, size_t extra) {
    if (extra > BUF_LIMIT || b->len > BUF_LIMIT - extra) return ST_UNSURE;
    size_t need = b->len + extra;
    if (need <= b->cap) return ST_OK;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < need) cap *= 2;
    char *data = realloc(b->data, cap);
    if (data == NULL) return ST_ERROR;
    b->data = data;
    b->cap = cap;
    return ST_OK;
}

static inline Status buf_put(Buf *b, const void *p, size_t n) {
    if (b->cap - b->len < n) TRY(buf_reserve(b, n)); /* the slow path only when full */
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    return ST_OK;
}

static inline Status buf_putc(Buf *b, char c) {
    if (b->len == b->cap) TRY(buf_reserve(b, 1));
    b->data[b->len++] = c;
    return ST_OK;
}

static inline Status buf_puts(Buf *b, const char *s) { return buf_put(b, s, strlen(s)); }

/* a string literal, its length known at compile time */
#define buf_lit(b, lit) buf_put((b), (lit), sizeof(lit) - 1)

/* ------------------------------------------------------------------------------------------ */
/* SHA-256 through one reused EVP context and one explicitly fetched digest: allocating a       */
/* context per hash, or letting OpenSSL 3 look the digest up (under locks) at every init, would */
/* cost more than hashing a short field.                                                       */

typedef struct {
    EVP_MD_CTX *ctx;
    EVP_MD *md;
} Hasher;

static int hasher_open(Hasher *h) {
    h->ctx = EVP_MD_CTX_new();
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    h->md = EVP_MD_fetch(NULL, "SHA256", NULL);
#else
    h->md = (EVP_MD *)EVP_sha256();
#endif
    return h->ctx != NULL && h->md != NULL;
}

static void hasher_close(Hasher *h) {
    EVP_MD_CTX_free(h->ctx);
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    EVP_MD_free(h->md);
#endif
}

static Status sha256_parts(Hasher *h, const void *a, size_t an, const void *b, size_t bn,
                           unsigned char out[32]) {
    unsigned int len = 0;
    if (!EVP_DigestInit_ex(h->ctx, h->md, NULL) || !EVP_DigestUpdate(h->ctx, a, an) ||
        (bn && !EVP_DigestUpdate(h->ctx, b, bn)) || !EVP_DigestFinal_ex(h->ctx, out, &len) ||
        len != 32)
        return ST_ERROR;
    return ST_OK;
}

static const char HEX[] = "0123456789abcdef";

static void to_hex(const unsigned char *in, size_t n, char *out) {
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = HEX[in[i] >> 4];
        out[2 * i + 1] = HEX[in[i] & 15];
    }
}

/* hex digit values (either case), -1 for anything else: a table, as every row has ~200 */
static signed char HEX_VALUE[256];
static char LOWER_HEX[256]; /* a hex digit in lowercase, 0 for anything else */

static void hex_table_init(void) {
    memset(HEX_VALUE, -1, sizeof HEX_VALUE);
    for (int i = 0; i < 10; i++) HEX_VALUE['0' + i] = (signed char)i;
    for (int i = 0; i < 6; i++) {
        HEX_VALUE['a' + i] = (signed char)(10 + i);
        HEX_VALUE['A' + i] = (signed char)(10 + i);
    }
    for (int c = 0; c < 256; c++)
        if (HEX_VALUE[c] >= 0) LOWER_HEX[c] = HEX[HEX_VALUE[c]];
}

static inline int hex_value(unsigned char c) { return HEX_VALUE[c]; }

/* Hex text of exactly 2 * n digits (either case, as bytes.fromhex and uuid.UUID accept) into
 * n bytes; 0 if it is anything else. */
static int from_hex(const unsigned char *s, size_t slen, unsigned char *out, size_t n) {
    if (s == NULL || slen != 2 * n) return 0;
    for (size_t i = 0; i < n; i++) {
        int hi = hex_value(s[2 * i]), lo = hex_value(s[2 * i + 1]);
        if (hi < 0 || lo < 0) return 0;
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    return 1;
}

/* ------------------------------------------------------------------------------------------ */
/* UTF-8: Python's sqlite3 driver decodes text strictly, so text that is not strict UTF-8     */
/* (overlong forms, surrogates, beyond U+10FFFF) is handed to Python, which will refuse it.    */

static int utf8_valid(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        /* ASCII runs, eight bytes at a time: most of what an audit log holds */
        while (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (w & 0x8080808080808080ULL) break;
            i += 8;
        }
        if (i >= n) break;
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        uint32_t cp;
        if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (i + len > n) return 0;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return 0;
            cp = cp << 6 | (s[i + k] & 0x3F);
        }
        if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
            (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
            return 0;
        i += len;
    }
    return 1;
}

/* Eight bytes at a time: does this word hold a byte below 0x20, a '"' or a '\\'? (The bit tricks
 * of "Bit Twiddling Hacks", exact for "is there any": a candidate word is then walked bytewise.) */
#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL
static inline int special_in_word(uint64_t w) {
    uint64_t quote = w ^ (ONES * '"'), backslash = w ^ (ONES * '\\');
    uint64_t below = (w - ONES * 0x20) & ~w;
    uint64_t zero_q = (quote - ONES) & ~quote, zero_b = (backslash - ONES) & ~backslash;
    return ((below | zero_q | zero_b) & HIGHS) != 0;
}

/* The length of the leading run of bytes that JSON strings hold as they are. */
static inline size_t plain_run(const unsigned char *s, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        if (special_in_word(w)) break;
    }
    while (i < n && s[i] >= 0x20 && s[i] != '"' && s[i] != '\\') i++;
    return i;
}

/* A JSON string as orjson (and rfc8785, identically) writes it: '"' and '\' escaped, the
 * control characters below U+0020 as \b \t \n \f \r or \u00xx, everything else raw UTF-8. */
static Status put_json_string(Buf *b, const unsigned char *s, size_t n) {
    TRY(buf_putc(b, '"'));
    for (size_t i = 0;;) {
        size_t plain = plain_run(s + i, n - i);
        TRY(buf_put(b, s + i, plain));
        i += plain;
        if (i == n) break;
        unsigned char c = s[i++];
        char esc[7] = {'\\', 0, 0, 0, 0, 0, 0};
        size_t elen = 2;
        switch (c) {
            case '"': esc[1] = '"'; break;
            case '\\': esc[1] = '\\'; break;
            case '\b': esc[1] = 'b'; break;
            case '\t': esc[1] = 't'; break;
            case '\n': esc[1] = 'n'; break;
            case '\f': esc[1] = 'f'; break;
            case '\r': esc[1] = 'r'; break;
            default:
                memcpy(esc + 1, "u00", 3);
                esc[4] = HEX[c >> 4];
                esc[5] = HEX[c & 15];
                elen = 6;
        }
        TRY(buf_put(b, esc, elen));
    }
    return buf_putc(b, '"');
}

/* ------------------------------------------------------------------------------------------ */
/* Numbers. Three spellings of a double are needed, all from its shortest round-trip digits    */
/* (the digits repr() finds; rfc8785 starts from str(float), and orjson's digits agree):       */
/*   REPR   - repr(float), how leaf.py writes latency_ms, upstream_latency_ms and score;       */
/*   ORJSON - orjson.dumps(float), how choices_text() writes the choices' numbers;              */
/*   JCS    - RFC 8785 (ECMAScript Number::toString), how digest() writes JSON fields.         */
/* Python's own dtoa cannot be used here: its caches need the GIL. Whatever digits this code   */
/* writes are checked to read back (strtod) as the same double, so a different double can      */
/* never be given the same text: at worst a value spelt unlike repr() sends its entry to       */
/* Python (tests/unit/test_leafscan.py holds the spellings to repr, orjson and rfc8785).        */

typedef enum { NUM_REPR, NUM_ORJSON, NUM_JCS } NumStyle;

#define MAX_SAFE_INT 9007199254740991LL /* 2**53 - 1: canonical.py's fast domain, I-JSON's */

static locale_t c_locale; /* "C": the decimal point is '.' whatever the process's locale */

static Status put_int(Buf *b, long long v) {
    char tmp[24];
    size_t i = sizeof tmp;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        tmp[--i] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0) tmp[--i] = '-';
    return buf_put(b, tmp + i, sizeof tmp - i);
}

/* Shortest digits: v (positive, finite) equals 0.DIGITS x 10**decpt when read back. */
typedef struct {
    char d[24];
    int n, decpt;
} Digits;

static void set_digits(Digits *out, unsigned long long m, int scale);

static const double POW10[] = {1e0, 1e1, 1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8, 1e9,
                               1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17};

/* The common case, few decimals (a latency rounded to the microsecond): the first k for which
 * r = round(v * 10**k) gives back v as r / 10**k, with r and 10**k exact doubles, so that the
 * division is correctly rounded just as reading the text "r e-k" is. */
static int short_decimal(double v, Digits *out) {
    int exp2;
    if (frexp(v, &exp2) == 0.5) return 0; /* a power of two: see printed_decimal */
    for (int k = 0; k <= 17; k++) {
        double scaled = v * POW10[k];
        if (scaled >= 9007199254740992.0) return 0; /* 2**53: r would not be exact */
        double r = nearbyint(scaled);
        if (r < 1 || r / POW10[k] != v) continue;
        set_digits(out, (unsigned long long)r, -k);
        return 1;
    }
    return 0;
}

/* Digits and decimal point of the integer m times 10**scale. */
static void set_digits(Digits *out, unsigned long long m, int scale) {
    char tmp[24];
    int n = 0;
    for (; m; m /= 10) tmp[n++] = (char)('0' + m % 10); /* least significant first */
    int lead = 0;
    while (lead < n - 1 && tmp[lead] == '0') lead++;
    out->n = n - lead;
    for (int i = 0; i < out->n; i++) out->d[i] = tmp[n - 1 - i];
    out->decpt = n + scale;
}

/* The text printf writes for v with p significant digits, as the integer m x 10**scale;
 * returns that decimal's value read back. */
static double printed(double v, int p, unsigned long long *m, int *scale) {
    char buf[40];
    snprintf(buf, sizeof buf, "%.*e", p - 1, v);
    unsigned long long digits = 0;
    const char *c = buf;
    for (; *c && *c != 'e'; c++)
        if (*c >= '0' && *c <= '9') digits = digits * 10 + (unsigned long long)(*c - '0');
    *m = digits;
    *scale = (*c == 'e' ? atoi(c + 1) : 0) - (p - 1);
    return strtod_l(buf, NULL, c_locale);
}

static double decimal_value(unsigned long long m, int scale) {
    char buf[48];
    snprintf(buf, sizeof buf, "%llue%d", m, scale);
    return strtod_l(buf, NULL, c_locale);
}

/* The rest: the fewest significant digits p for which printf's correctly rounded %.{p-1}e reads
 * back as v (17 always do, and if p do so do p + 1: a binary search). A power of two's rounding
 * interval is twice as wide above it as below, so there a shorter decimal on the wide side may
 * read back as v though the nearest one of its length does not: repr() takes it, and so do we. */
static int printed_decimal(double v, Digits *out) {
    unsigned long long m;
    int scale, lo = 1, hi = 17;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (printed(v, mid, &m, &scale) == v) hi = mid;
        else lo = mid + 1;
    }
    if (printed(v, lo, &m, &scale) != v) return 0;
    set_digits(out, m, scale);
    int exp2;
    if (frexp(v, &exp2) != 0.5) return 1;
    for (int p = lo - 1; p >= 1; p--) { /* the other neighbour of v at each shorter length */
        double nearest = printed(v, p, &m, &scale);
        unsigned long long other = nearest < v ? m + 1 : m - 1;
        if (other == 0 || decimal_value(other, scale) != v) break;
        set_digits(out, other, scale);
    }
    return 1;
}

static Status shortest_digits(double v, Digits *out) {
    return short_decimal(v, out) || printed_decimal(v, out) ? ST_OK : ST_UNSURE;
}

static Status put_zeros(Buf *b, int n) {
    for (int i = 0; i < n; i++) TRY(buf_putc(b, '0'));
    return ST_OK;
}

/* Digits in fixed notation: "ddd", "dd.dd", "0.000ddd"; ``dot_zero``: "100.0" for integers. */
static Status put_fixed(Buf *b, const Digits *g, int dot_zero) {
    if (g->decpt <= 0) {
        TRY(buf_lit(b, "0."));
        TRY(put_zeros(b, -g->decpt));
        return buf_put(b, g->d, (size_t)g->n);
    }
    if (g->decpt >= g->n) {
        TRY(buf_put(b, g->d, (size_t)g->n));
        TRY(put_zeros(b, g->decpt - g->n));
        return dot_zero ? buf_lit(b, ".0") : ST_OK;
    }
    TRY(buf_put(b, g->d, (size_t)g->decpt));
    TRY(buf_putc(b, '.'));
    return buf_put(b, g->d + g->decpt, (size_t)(g->n - g->decpt));
}

/* Digits in exponent notation: "d.ddde+X" (``two_digit_exp``: "e+0X", as repr writes it). */
static Status put_exponent(Buf *b, const Digits *g, int two_digit_exp) {
    TRY(buf_putc(b, g->d[0]));
    if (g->n > 1) {
        TRY(buf_putc(b, '.'));
        TRY(buf_put(b, g->d + 1, (size_t)(g->n - 1)));
    }
    char e[16];
    int x = g->decpt - 1;
    int len = snprintf(e, sizeof e, two_digit_exp ? "e%c%02d" : "e%c%d", x < 0 ? '-' : '+',
                       x < 0 ? -x : x);
    return buf_put(b, e, (size_t)len);
}

static Status put_double(Buf *b, double v, NumStyle style) {
    if (!isfinite(v)) return ST_UNSURE; /* repr gives 'inf'; JSON has none: leave it to Python */
    if (v == 0) {
        if (style == NUM_JCS) return buf_lit(b, "0");
        return signbit(v) ? buf_lit(b, "-0.0") : buf_lit(b, "0.0");
    }
    if (v < 0) TRY(buf_putc(b, '-'));
    Digits g;
    TRY(shortest_digits(fabs(v), &g));
    switch (style) {
        case NUM_REPR: /* fixed for 1e-4 <= |v| < 1e16, as float_repr_style 'short' */
            return -4 < g.decpt && g.decpt <= 16 ? put_fixed(b, &g, 1) : put_exponent(b, &g, 1);
        case NUM_ORJSON: /* fixed for 1e-5 <= |v| < 1e16 */
            return -5 < g.decpt && g.decpt <= 16 ? put_fixed(b, &g, 1) : put_exponent(b, &g, 0);
        case NUM_JCS: /* fixed for 1e-6 <= |v| < 1e21, integers without ".0" */
            return -6 < g.decpt && g.decpt <= 21 ? put_fixed(b, &g, 0) : put_exponent(b, &g, 0);
    }
    return ST_UNSURE;
}

/* ------------------------------------------------------------------------------------------ */
/* JSON: the JSON columns (params, choices, retrievals.reported, policy_decisions.detail,    */
/* admin_events.detail) are parsed into a flat tree and written back canonically, as Python   */
/* does with orjson.loads then canonical() or orjson.dumps(OPT_SORT_KEYS). The parser is strict */
/* RFC 8259; whatever it refuses, or cannot be sure orjson reads the same way (duplicate keys, */
/* lone surrogate escapes, integers beyond 18 digits, nesting beyond MAX_DEPTH), is UNSURE.    */

#define MAX_DEPTH 64

typedef enum { J_NULL, J_TRUE, J_FALSE, J_INT, J_FLOAT, J_STRING, J_ARRAY, J_OBJECT } JType;

typedef struct {
    JType type;
    size_t size;  /* nodes in this subtree, itself included (to step over it) */
    size_t count; /* array items, or object members (each a key node then a value node) */
    union {
        long long i;
        double d;
        struct {
            size_t off, len; /* decoded UTF-8 in Tree.strings */
        } s;
    } v;
} JNode;

typedef struct {
    JNode *nodes;
    size_t len, cap;
    Buf strings;
} Tree;

typedef struct {
    const unsigned char *p, *end;
    Tree *t;
} Parser;

static Status tree_push(Tree *t, JType type, size_t *at) {
    if (t->len == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 256;
        if (cap > BUF_LIMIT / sizeof(JNode)) return ST_UNSURE;
        JNode *nodes = realloc(t->nodes, cap * sizeof(JNode));
        if (nodes == NULL) return ST_ERROR;
        t->nodes = nodes;
        t->cap = cap;
    }
    *at = t->len++;
    memset(&t->nodes[*at], 0, sizeof(JNode));
    t->nodes[*at].type = type;
    t->nodes[*at].size = 1;
    return ST_OK;
}

static void skip_ws(Parser *ps) {
    while (ps->p < ps->end &&
           (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

static int read_hex4(Parser *ps, uint32_t *out) {
    if (ps->end - ps->p < 4) return 0;
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hex_value(ps->p[i]);
        if (h < 0) return 0;
        v = v << 4 | (uint32_t)h;
    }
    ps->p += 4;
    *out = v;
    return 1;
}

static Status put_utf8(Buf *b, uint32_t cp) {
    unsigned char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (unsigned char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (unsigned char)(0xC0 | cp >> 6);
        u[1] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (unsigned char)(0xE0 | cp >> 12);
        u[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
        u[2] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        u[0] = (unsigned char)(0xF0 | cp >> 18);
        u[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3F));
        u[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
        u[3] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    return buf_put(b, u, n);
}

/* A string after its opening quote, decoded (escapes, including \uXXXX surrogate pairs as
 * json.dumps(ensure_ascii=True) writes them) into raw UTF-8. The input was checked to be UTF-8. */
static Status parse_string(Parser *ps, size_t at) {
    Buf *out = &ps->t->strings;
    size_t off = out->len;
    for (;;) {
        size_t plain = plain_run(ps->p, (size_t)(ps->end - ps->p));
        TRY(buf_put(out, ps->p, plain));
        ps->p += plain;
        if (ps->p >= ps->end || *ps->p < 0x20) return ST_UNSURE; /* unterminated, raw control */
        if (*ps->p == '"') {
            ps->p++;
            break;
        }
        ps->p++; /* the backslash */
        if (ps->p >= ps->end) return ST_UNSURE;
        unsigned char e = *ps->p++;
        uint32_t cp;
        switch (e) {
            case '"': case '\\': case '/': TRY(buf_putc(out, (char)e)); continue;
            case 'b': TRY(buf_putc(out, '\b')); continue;
            case 'f': TRY(buf_putc(out, '\f')); continue;
            case 'n': TRY(buf_putc(out, '\n')); continue;
            case 'r': TRY(buf_putc(out, '\r')); continue;
            case 't': TRY(buf_putc(out, '\t')); continue;
            case 'u': break;
            default: return ST_UNSURE;
        }
        if (!read_hex4(ps, &cp)) return ST_UNSURE;
        if (cp >= 0xDC00 && cp <= 0xDFFF) return ST_UNSURE; /* a lone low surrogate */
        if (cp >= 0xD800 && cp <= 0xDBFF) {                /* must pair with a low one */
            uint32_t lo;
            if (ps->end - ps->p < 2 || ps->p[0] != '\\' || ps->p[1] != 'u') return ST_UNSURE;
            ps->p += 2;
            if (!read_hex4(ps, &lo) || lo < 0xDC00 || lo > 0xDFFF) return ST_UNSURE;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        }
        TRY(put_utf8(out, cp));
    }
    ps->t->nodes[at].v.s.off = off;
    ps->t->nodes[at].v.s.len = out->len - off;
    return ST_OK;
}

static Status parse_number(Parser *ps, size_t *at) {
    const unsigned char *start = ps->p;
    int is_float = 0;
    if (ps->p < ps->end && *ps->p == '-') ps->p++;
    if (ps->p >= ps->end) return ST_UNSURE;
    if (*ps->p == '0') {
        ps->p++;
    } else if (*ps->p >= '1' && *ps->p <= '9') {
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
    } else {
        return ST_UNSURE;
    }
    if (ps->p < ps->end && *ps->p == '.') {
        is_float = 1;
        ps->p++;
        if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') return ST_UNSURE;
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
    }
    if (ps->p < ps->end && (*ps->p == 'e' || *ps->p == 'E')) {
        is_float = 1;
        ps->p++;
        if (ps->p < ps->end && (*ps->p == '+' || *ps->p == '-')) ps->p++;
        if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') return ST_UNSURE;
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
    }
    char tok[64];
    size_t n = (size_t)(ps->p - start);
    if (n >= sizeof tok) return ST_UNSURE;
    memcpy(tok, start, n);
    tok[n] = 0;
    TRY(tree_push(ps->t, is_float ? J_FLOAT : J_INT, at));
    JNode *node = &ps->t->nodes[*at];
    if (!is_float) {
        size_t digits = n - (tok[0] == '-');
        if (digits > 18) return ST_UNSURE; /* orjson reads big integers as floats */
        node->v.i = strtoll(tok, NULL, 10);
        return ST_OK;
    }
    char *endp = NULL;
    double d = strtod_l(tok, &endp, c_locale); /* correctly rounded, as orjson's parser */
    if (endp != tok + n || !isfinite(d)) return ST_UNSURE; /* orjson refuses infinities */
    node->v.d = d;
    return ST_OK;
}

static Status parse_value(Parser *ps, int depth);

static Status parse_container(Parser *ps, int depth, int object) {
    size_t at;
    TRY(tree_push(ps->t, object ? J_OBJECT : J_ARRAY, &at));
    ps->p++; /* the opening bracket */
    skip_ws(ps);
    char close = object ? '}' : ']';
    size_t count = 0;
    if (ps->p < ps->end && *ps->p == close) {
        ps->p++;
    } else {
        for (;;) {
            skip_ws(ps);
            if (object) {
                size_t key;
                if (ps->p >= ps->end || *ps->p != '"') return ST_UNSURE;
                ps->p++;
                TRY(tree_push(ps->t, J_STRING, &key));
                TRY(parse_string(ps, key));
                skip_ws(ps);
                if (ps->p >= ps->end || *ps->p != ':') return ST_UNSURE;
                ps->p++;
            }
            TRY(parse_value(ps, depth + 1));
            count++;
            skip_ws(ps);
            if (ps->p < ps->end && *ps->p == ',') {
                ps->p++;
                continue;
            }
            if (ps->p < ps->end && *ps->p == close) {
                ps->p++;
                break;
            }
            return ST_UNSURE;
        }
    }
    ps->t->nodes[at].count = count;
    ps->t->nodes[at].size = ps->t->len - at;
    return ST_OK;
}

static Status parse_literal(Parser *ps, const char *word, JType type) {
    size_t n = strlen(word), at;
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0) return ST_UNSURE;
    ps->p += n;
    return tree_push(ps->t, type, &at);
}

static Status parse_value(Parser *ps, int depth) {
    if (depth > MAX_DEPTH) return ST_UNSURE;
    skip_ws(ps);
    if (ps->p >= ps->end) return ST_UNSURE;
    size_t at;
    switch (*ps->p) {
        case '{': return parse_container(ps, depth, 1);
        case '[': return parse_container(ps, depth, 0);
        case '"':
            ps->p++;
            TRY(tree_push(ps->t, J_STRING, &at));
            return parse_string(ps, at);
        case 't': return parse_literal(ps, "true", J_TRUE);
        case 'f': return parse_literal(ps, "false", J_FALSE);
        case 'n': return parse_literal(ps, "null", J_NULL);
        default: return parse_number(ps, &at);
    }
}

static Status parse_json(Tree *t, const unsigned char *s, size_t n) {
    t->len = 0;
    t->strings.len = 0;
    Parser ps = {s, s + n, t};
    TRY(parse_value(&ps, 0));
    skip_ws(&ps);
    return ps.p == ps.end ? ST_OK : ST_UNSURE;
}

static int key_cmp(const Tree *t, size_t a, size_t b) {
    const JNode *ka = &t->nodes[a], *kb = &t->nodes[b];
    size_t n = ka->v.s.len < kb->v.s.len ? ka->v.s.len : kb->v.s.len;
    int c = memcmp(t->strings.data + ka->v.s.off, t->strings.data + kb->v.s.off, n);
    if (c) return c;
    return ka->v.s.len < kb->v.s.len ? -1 : ka->v.s.len > kb->v.s.len;
}

static Status emit_node(Buf *out, Tree *t, size_t at, NumStyle style);

/* An object with its keys in sorted order. Keys must be ASCII (rfc8785 sorts others by UTF-16
 * code units, orjson by bytes: leave those to Python) and unique (orjson keeps the last). An
 * object of more than MAX_KEYS members is left to Python too, which bounds the insertion sort. */
#define MAX_KEYS 64

static Status emit_object(Buf *out, Tree *t, size_t at, NumStyle style) {
    size_t count = t->nodes[at].count, keys[MAX_KEYS];
    if (count > MAX_KEYS) return ST_UNSURE;
    size_t child = at + 1;
    for (size_t i = 0; i < count; i++) {
        const JNode *key = &t->nodes[child];
        const unsigned char *k = (const unsigned char *)t->strings.data + key->v.s.off;
        for (size_t j = 0; j < key->v.s.len; j++)
            if (k[j] >= 0x80) return ST_UNSURE;
        size_t pos = i; /* insertion sort: objects here have a handful of keys */
        while (pos > 0 && key_cmp(t, keys[pos - 1], child) > 0) {
            keys[pos] = keys[pos - 1];
            pos--;
        }
        if (pos > 0 && key_cmp(t, keys[pos - 1], child) == 0) return ST_UNSURE;
        keys[pos] = child;
        child += 1 + t->nodes[child + 1].size;
    }
    TRY(buf_putc(out, '{'));
    for (size_t i = 0; i < count; i++) {
        const JNode *key = &t->nodes[keys[i]];
        if (i) TRY(buf_putc(out, ','));
        TRY(put_json_string(out, (const unsigned char *)t->strings.data + key->v.s.off,
                            key->v.s.len));
        TRY(buf_putc(out, ':'));
        TRY(emit_node(out, t, keys[i] + 1, style));
    }
    return buf_putc(out, '}');
}

static Status emit_node(Buf *out, Tree *t, size_t at, NumStyle style) {
    const JNode *node = &t->nodes[at];
    switch (node->type) {
        case J_NULL: return buf_lit(out, "null");
        case J_TRUE: return buf_lit(out, "true");
        case J_FALSE: return buf_lit(out, "false");
        case J_INT:
            if (style == NUM_JCS && (node->v.i > MAX_SAFE_INT || node->v.i < -MAX_SAFE_INT))
                return ST_UNSURE; /* rfc8785 refuses it */
            return put_int(out, node->v.i);
        case J_FLOAT: return put_double(out, node->v.d, style);
        case J_STRING:
            return put_json_string(out, (const unsigned char *)t->strings.data + node->v.s.off,
                                   node->v.s.len);
        case J_ARRAY: {
            TRY(buf_putc(out, '['));
            size_t child = at + 1;
            for (size_t i = 0; i < node->count; i++) {
                if (i) TRY(buf_putc(out, ','));
                TRY(emit_node(out, t, child, style));
                child += t->nodes[child].size;
            }
            return buf_putc(out, ']');
        }
        case J_OBJECT: return emit_object(out, t, at, style);
    }
    return ST_UNSURE;
}

/* ------------------------------------------------------------------------------------------ */
/* The main query: one row per log entry, with its record's or admin event's columns. The      */
/* X-macro keeps the select list and the column numbers in one place: the entry's columns,    */
/* then the record's (from R_ID), then the event's (from E_ID), as check_entry reads them.     */

#define ENTRY_COLUMNS(X)                                                                  \
    X(IDX, "l.idx") X(KIND, "l.kind") X(ENTRY_ID, "l.entry_id") X(STORED, "l.leaf_sha256") \
    X(R_ID, "r.id") X(R_SCHEMA_VERSION, "r.schema_version") X(R_TENANT_ID, "r.tenant_id")  \
    X(R_API_KEY_ID, "r.api_key_id") X(R_END_USER, "r.end_user") X(R_ROUTE, "r.route")      \
    X(R_ROUTE_KIND, "r.route_kind") X(R_REQUESTED_MODEL, "r.requested_model")             \
    X(R_UPSTREAM_MODEL, "r.upstream_model") X(R_RESPONSE_MODEL, "r.response_model")       \
    X(R_STATUS, "r.status") X(R_HTTP_STATUS, "r.http_status") X(R_ERROR_CODE, "r.error_code") \
    X(R_ERROR_MESSAGE, "r.error_message") X(R_STREAM, "r.stream") X(R_PARAMS, "r.params")  \
    X(R_PROMPT, "r.prompt") X(R_PROMPT_SHA256, "r.prompt_sha256") X(R_ANSWER, "r.answer")  \
    X(R_ANSWER_SHA256, "r.answer_sha256") X(R_CHOICES, "r.choices")                        \
    X(R_CONTENT_SALT, "r.content_salt") X(R_PROMPT_SALTED, "r.prompt_salted_sha256")       \
    X(R_ANSWER_SALTED, "r.answer_salted_sha256") X(R_CHOICES_SALTED, "r.choices_salted_sha256") \
    X(R_FINISH_REASON, "r.finish_reason") X(R_PROMPT_TOKENS, "r.prompt_tokens")            \
    X(R_COMPLETION_TOKENS, "r.completion_tokens") X(R_TOTAL_TOKENS, "r.total_tokens")      \
    X(R_LATENCY_MS, "r.latency_ms") X(R_UPSTREAM_LATENCY_MS, "r.upstream_latency_ms")      \
    X(R_TRACE_ID, "r.trace_id") X(R_SPAN_ID, "r.span_id")                                  \
    X(R_MODEL_SNAPSHOT_ID, "r.model_snapshot_id") X(R_LINEAGE_STALE, "r.lineage_stale")    \
    X(R_POLICY_BUNDLE, "r.policy_bundle_sha256") X(R_RETENTION_CLASS, "r.retention_class") \
    X(R_RETAIN_UNTIL, "r.retain_until") X(R_CREATED_AT, "r.created_at")                    \
    X(R_COMPLETED_AT, "r.completed_at") X(E_ID, "e.id") X(E_TENANT_ID, "e.tenant_id")      \
    X(E_ACTOR, "e.actor") X(E_ACTION, "e.action") X(E_TARGET, "e.target")                  \
    X(E_DETAIL, "e.detail") X(E_CREATED_AT, "e.created_at")

#define AS_ENUM(name, sql) COL_##name,
#define AS_SQL(name, sql) sql ", "
enum { ENTRY_COLUMNS(AS_ENUM) COL_COUNT };

/* one chunk [?1, ?2) of the log, with the joins verify.py makes; the record join only for
 * record entries and the event join only for the others, since each check reads only its own
 * columns */
static const char ENTRIES_SQL[] =
    "SELECT " ENTRY_COLUMNS(AS_SQL) "NULL FROM log_entries l "
    "LEFT JOIN audit_records r ON l.kind = 'record' AND r.id = l.entry_id "
    "LEFT JOIN admin_events e ON l.kind <> 'record' AND e.id = l.entry_id "
    "WHERE l.idx >= ?1 AND l.idx < ?2 ORDER BY l.idx";

/* the chunk's lineage rows, in the order leaf.py sorts them (rank; stage then policy id, both
 * compared as code points, which is SQLite's BINARY collation on UTF-8) */
static const char RETRIEVALS_SQL[] =
    "SELECT l.idx, t.rank, t.chunk_id, t.source_ref, t.score, t.cited, t.verified, "
    "t.document_version_id, t.chunk_sha256, t.superseded, t.reported FROM log_entries l "
    "JOIN retrievals t ON t.record_id = l.entry_id WHERE l.idx >= ?1 AND l.idx < ?2 "
    "ORDER BY l.idx, t.rank";
static const char DECISIONS_SQL[] =
    "SELECT l.idx, t.policy_id, t.stage, t.policy_sha256, t.outcome, t.detail "
    "FROM log_entries l JOIN policy_decisions t ON t.record_id = l.entry_id "
    "WHERE l.idx >= ?1 AND l.idx < ?2 ORDER BY l.idx, t.stage, t.policy_id";

/* the whole log in order, for the tree: only what the tree and the order checks need */
static const char TREE_SQL[] =
    "SELECT idx, entry_id, leaf_sha256 FROM log_entries WHERE idx >= 0 AND idx < ?1 "
    "ORDER BY idx";

/* ------------------------------------------------------------------------------------------ */
/* A checker's state (one per thread): its own read-only connection and statements, the       */
/* buffers reused from row to row, and what it found.                                          */

typedef struct {
    sqlite3_stmt *st;
    int has_row;
    long long idx;
    int empty; /* the table holds no row in this connection's snapshot: never stepped */
} Cursor;

/* model snapshot id -> recomputed snapshot hash (verify._snapshots), sorted by id */
typedef struct {
    unsigned char id[16];
    char sha256[64];
} Snapshot;

typedef struct {
    long long *idx;
    size_t len, cap;
} IndexList;

typedef struct {
    sqlite3 *db;
    sqlite3_stmt *entries;
    /* the current entry row's values, taken once per row: the sqlite3_value_* calls on them
     * skip the per-call statement checks of sqlite3_column_* (safe here: one connection, one
     * thread, values read before the next step) */
    sqlite3_value *col[COL_COUNT];
    Cursor retrievals, decisions;
    Hasher hasher;
    Tree tree;
    Buf doc;     /* the leaf document being built */
    Buf scratch; /* canonical JSON on its way to a digest */
    const Snapshot *snapshots;
    size_t nsnapshots;
    long long confirmed; /* entries whose leaf and content checked */
    IndexList recheck;   /* the others, for Python */
    char error[256];     /* why this checker stopped, if it did */
} Scan;

static Status index_push(IndexList *l, long long idx) {
    if (l->len == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 256;
        long long *grown = realloc(l->idx, cap * sizeof(long long));
        if (grown == NULL) return ST_ERROR;
        l->idx = grown;
        l->cap = cap;
    }
    l->idx[l->len++] = idx;
    return ST_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Column values as SQLAlchemy hands them to leaf.py on SQLite. A value of a type SQLAlchemy   */
/* would not have stored there (sqlite is dynamically typed) is UNSURE.                        */

/* A TEXT value's UTF-8 bytes, as stored. Not sqlite3_value_text(): that copies the text to
 * NUL-terminate it, which was the scan's largest single cost; the length is what counts here
 * (text may hold NUL). The database's encoding was checked to be UTF-8 when it was opened. */
static const unsigned char *text_of(sqlite3_value *v) {
    const unsigned char *p = sqlite3_value_blob(v);
    return p ? p : (const unsigned char *)"";
}

static Status col_text(sqlite3_value *v, const unsigned char **s, size_t *n) {
    *s = NULL;
    *n = 0;
    int type = sqlite3_value_type(v);
    if (type == SQLITE_NULL) return ST_OK;
    if (type != SQLITE_TEXT) return ST_UNSURE;
    *n = (size_t)sqlite3_value_bytes(v);
    *s = text_of(v);
    return utf8_valid(*s, *n) ? ST_OK : ST_UNSURE;
}

static Status emit_text(Buf *b, sqlite3_value *v) {
    const unsigned char *s;
    size_t n;
    TRY(col_text(v, &s, &n));
    return s == NULL ? buf_lit(b, "null") : put_json_string(b, s, n);
}

static Status emit_int(Buf *b, sqlite3_value *v) {
    int type = sqlite3_value_type(v);
    if (type == SQLITE_NULL) return buf_lit(b, "null");
    if (type != SQLITE_INTEGER) return ST_UNSURE;
    return put_int(b, sqlite3_value_int64(v));
}

/* Boolean columns hold 0 or 1; ``null_is_false`` for bool(value) in leaf.py (a NULL `cited`). */
static Status emit_bool(Buf *b, sqlite3_value *v, int null_is_false) {
    int type = sqlite3_value_type(v);
    if (type == SQLITE_NULL) return null_is_false ? buf_lit(b, "false") : buf_lit(b, "null");
    if (type != SQLITE_INTEGER) return ST_UNSURE;
    long long i = sqlite3_value_int64(v);
    if (i != 0 && i != 1) return ST_UNSURE;
    return i ? buf_lit(b, "true") : buf_lit(b, "false");
}

/* Uuid columns hold 32 hex digits; str(uuid.UUID(...)) is lowercase with dashes. */
static Status emit_uuid(Buf *b, sqlite3_value *v, int nullable) {
    int type = sqlite3_value_type(v);
    if (type == SQLITE_NULL) return nullable ? buf_lit(b, "null") : ST_UNSURE;
    if (type != SQLITE_TEXT || sqlite3_value_bytes(v) != 32) return ST_UNSURE;
    const unsigned char *hex = text_of(v);
    char out[38];
    size_t o = 0;
    out[o++] = '"';
    for (int i = 0; i < 32; i++) {
        if (i == 8 || i == 12 || i == 16 || i == 20) out[o++] = '-';
        char c = LOWER_HEX[hex[i]];
        if (!c) return ST_UNSURE;
        out[o++] = c;
    }
    out[o++] = '"';
    return buf_put(b, out, o);
}

/* A REAL column as repr(float(value)) in a JSON string (leaf._float). */
static Status emit_float_repr(Buf *b, sqlite3_value *v) {
    int type = sqlite3_value_type(v);
    if (type == SQLITE_NULL) return buf_lit(b, "null");
    if (type != SQLITE_FLOAT) return ST_UNSURE;
    TRY(buf_putc(b, '"'));
    TRY(put_double(b, sqlite3_value_double(v), NUM_REPR));
    return buf_putc(b, '"');
}

static int days_in_month(int year, int month) {
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    return days[month - 1] + (month == 2 && leap);
}

/* UTCDateTime on SQLite is stored naive in UTC as "YYYY-MM-DD HH:MM:SS.ffffff"; leaf.timestamp
 * writes it as "YYYY-MM-DDTHH:MM:SS.ffffff+00:00". Any other stored form is UNSURE. */
static Status emit_timestamp(Buf *b, sqlite3_value *v, int nullable) {
    int type = sqlite3_value_type(v);
    if (type == SQLITE_NULL) return nullable ? buf_lit(b, "null") : ST_UNSURE;
    if (type != SQLITE_TEXT || sqlite3_value_bytes(v) != 26) return ST_UNSURE;
    const unsigned char *s = text_of(v);
    static const char shape[] = "dddd-dd-dd dd:dd:dd.dddddd";
    for (int i = 0; i < 26; i++) {
        if (shape[i] == 'd' ? (s[i] < '0' || s[i] > '9') : s[i] != (unsigned char)shape[i])
            return ST_UNSURE;
    }
#define NUM2(i) ((s[i] - '0') * 10 + (s[(i) + 1] - '0'))
    int year = NUM2(0) * 100 + NUM2(2), month = NUM2(5), day = NUM2(8);
    if (year < 1 || month < 1 || month > 12 || day < 1 || day > days_in_month(year, month) ||
        NUM2(11) > 23 || NUM2(14) > 59 || NUM2(17) > 59)
        return ST_UNSURE;
#undef NUM2
    char out[35];
    out[0] = '"';
    memcpy(out + 1, s, 26);
    out[11] = 'T';
    memcpy(out + 27, "+00:00\"", 7);
    return buf_put(b, out, 34);
}

/* SHA-256 hex of the canonical JSON (RFC 8785) of a JSON column: canonical.digest(value).
 * ``null_if_null``: SQL NULL and JSON null give null (a decision's detail), not digest(None). */
static Status emit_json_digest(Scan *s, sqlite3_value *v, int null_if_null) {
    const unsigned char *text;
    size_t n;
    TRY(col_text(v, &text, &n));
    s->scratch.len = 0;
    if (text == NULL) {
        if (null_if_null) return buf_lit(&s->doc, "null");
        TRY(buf_lit(&s->scratch, "null"));
    } else {
        TRY(parse_json(&s->tree, text, n));
        if (null_if_null && s->tree.nodes[0].type == J_NULL) return buf_lit(&s->doc, "null");
        TRY(emit_node(&s->scratch, &s->tree, 0, NUM_JCS));
    }
    unsigned char md[32];
    char hex[66];
    TRY(sha256_parts(&s->hasher, s->scratch.data, s->scratch.len, NULL, 0, md));
    hex[0] = '"';
    to_hex(md, 32, hex + 1);
    hex[65] = '"';
    return buf_put(&s->doc, hex, 66);
}

/* ------------------------------------------------------------------------------------------ */
/* Lineage cursors: each is stepped along the entries in index order.                          */

static Status cursor_step(Scan *s, Cursor *c) {
    if (c->empty) {
        c->has_row = 0;
        return ST_OK;
    }
    int rc = sqlite3_step(c->st);
    if (rc == SQLITE_DONE) {
        c->has_row = 0;
        return ST_OK;
    }
    if (rc != SQLITE_ROW || sqlite3_column_type(c->st, 0) != SQLITE_INTEGER) {
        snprintf(s->error, sizeof s->error, "reading lineage rows: %s", sqlite3_errmsg(s->db));
        return ST_ERROR;
    }
    c->has_row = 1;
    c->idx = sqlite3_column_int64(c->st, 0);
    return ST_OK;
}

/* Step past the rows of entries before ``idx`` (an event's, or one left unread by an UNSURE). */
static Status cursor_seek(Scan *s, Cursor *c, long long idx) {
    while (c->has_row && c->idx < idx) TRY(cursor_step(s, c));
    return ST_OK;
}

/* A step inside a record's lineage: an error stops the scan, UNSURE only this record. */
#define LINEAGE_STEP(s, c)                         \
    do {                                           \
        if (cursor_step(s, c) != ST_OK) return ST_ERROR; \
    } while (0)

static Status emit_retrievals(Scan *s, long long idx) {
    Cursor *c = &s->retrievals;
    sqlite3_stmt *st = c->st;
    TRY(buf_putc(&s->doc, '['));
    for (int first = 1; c->has_row && c->idx == idx; first = 0) {
        if (!first) TRY(buf_putc(&s->doc, ','));
        TRY(buf_putc(&s->doc, '['));
        TRY(emit_int(&s->doc, sqlite3_column_value(st, 1))); /* rank */
        if (sqlite3_column_type(st, 1) != SQLITE_INTEGER) return ST_UNSURE;
        TRY(buf_putc(&s->doc, ','));
        TRY(emit_uuid(&s->doc, sqlite3_column_value(st, 2), 1)); /* chunk_id */
        TRY(buf_putc(&s->doc, ','));
        TRY(emit_text(&s->doc, sqlite3_column_value(st, 3))); /* source_ref */
        TRY(buf_putc(&s->doc, ','));
        TRY(emit_float_repr(&s->doc, sqlite3_column_value(st, 4))); /* score */
        TRY(buf_putc(&s->doc, ','));
        TRY(emit_bool(&s->doc, sqlite3_column_value(st, 5), 1)); /* cited: bool(...) */
        TRY(buf_putc(&s->doc, ','));
        TRY(emit_bool(&s->doc, sqlite3_column_value(st, 6), 0)); /* verified */
        TRY(buf_putc(&s->doc, ','));
        TRY(emit_uuid(&s->doc, sqlite3_column_value(st, 7), 1)); /* document_version_id */
        TRY(buf_putc(&s->doc, ','));
        TRY(emit_text(&s->doc, sqlite3_column_value(st, 8))); /* chunk_sha256 */
        TRY(buf_putc(&s->doc, ','));
        TRY(emit_bool(&s->doc, sqlite3_column_value(st, 9), 0)); /* superseded */
        TRY(buf_putc(&s->doc, ','));
        TRY(emit_json_digest(s, sqlite3_column_value(st, 10), 1)); /* reported */
        TRY(buf_putc(&s->doc, ']'));
        LINEAGE_STEP(s, c);
    }
    return buf_putc(&s->doc, ']');
}

static Status emit_policies(Scan *s, long long idx) {
    Cursor *c = &s->decisions;
    sqlite3_stmt *st = c->st;
    TRY(buf_putc(&s->doc, '['));
    for (int first = 1; c->has_row && c->idx == idx; first = 0) {
        /* sorted by str(stage), str(policy_id): SQL sorts them only if both are text */
        if (sqlite3_column_type(st, 1) != SQLITE_TEXT || sqlite3_column_type(st, 2) != SQLITE_TEXT)
            return ST_UNSURE;
        if (!first) TRY(buf_putc(&s->doc, ','));
        TRY(buf_putc(&s->doc, '['));
        for (int col = 1; col <= 4; col++) { /* policy_id, stage, policy_sha256, outcome */
            TRY(emit_text(&s->doc, sqlite3_column_value(st, col)));
            TRY(buf_putc(&s->doc, ','));
        }
        TRY(emit_json_digest(s, sqlite3_column_value(st, 5), 1)); /* detail */
        TRY(buf_putc(&s->doc, ']'));
        LINEAGE_STEP(s, c);
    }
    return buf_putc(&s->doc, ']');
}

/* ------------------------------------------------------------------------------------------ */
/* Content: verify.content_problem, which must find nothing for the record to be confirmed.    */

static int stored_hex_equals(sqlite3_value *v, const unsigned char md[32]) {
    char hex[64];
    if (sqlite3_value_type(v) != SQLITE_TEXT || sqlite3_value_bytes(v) != 64) return 0;
    to_hex(md, 32, hex);
    return memcmp(text_of(v), hex, 64) == 0;
}

static Status content_ok(Scan *s) {
    sqlite3_value **col = s->col;
    const unsigned char *salt_hex, *prompt, *answer, *choices;
    size_t salt_len, prompt_len, answer_len, choices_len;
    TRY(col_text(col[COL_R_CONTENT_SALT], &salt_hex, &salt_len));
    TRY(col_text(col[COL_R_PROMPT], &prompt, &prompt_len));
    TRY(col_text(col[COL_R_ANSWER], &answer, &answer_len));
    TRY(col_text(col[COL_R_CHOICES], &choices, &choices_len));
    /* choices_text(): the choices as orjson writes them with sorted keys (JSON null: none) */
    Buf *ctext = &s->scratch;
    ctext->len = 0;
    int has_choices = 0;
    if (choices != NULL) {
        TRY(parse_json(&s->tree, choices, choices_len));
        has_choices = s->tree.nodes[0].type != J_NULL;
        if (has_choices) TRY(emit_node(ctext, &s->tree, 0, NUM_ORJSON));
    }
    if (salt_hex == NULL) /* content without a salt is a problem Python names */
        return (prompt || answer || has_choices) ? ST_UNSURE : ST_OK;
    unsigned char salt[64], md[32];
    if (salt_len % 2 || salt_len > 2 * sizeof salt || !from_hex(salt_hex, salt_len, salt, salt_len / 2))
        return ST_UNSURE;
    size_t sn = salt_len / 2;
    if (prompt) {
        TRY(sha256_parts(&s->hasher, salt, sn, prompt, prompt_len, md));
        if (!stored_hex_equals(col[COL_R_PROMPT_SALTED], md)) return ST_UNSURE;
        TRY(sha256_parts(&s->hasher, prompt, prompt_len, NULL, 0, md));
        if (!stored_hex_equals(col[COL_R_PROMPT_SHA256], md)) return ST_UNSURE;
    }
    if (answer) {
        TRY(sha256_parts(&s->hasher, salt, sn, answer, answer_len, md));
        if (!stored_hex_equals(col[COL_R_ANSWER_SALTED], md)) return ST_UNSURE;
        TRY(sha256_parts(&s->hasher, answer, answer_len, NULL, 0, md));
        if (!stored_hex_equals(col[COL_R_ANSWER_SHA256], md)) return ST_UNSURE;
    }
    if (has_choices) {
        TRY(sha256_parts(&s->hasher, salt, sn, ctext->data, ctext->len, md));
        if (!stored_hex_equals(col[COL_R_CHOICES_SALTED], md)) return ST_UNSURE;
    }
    return ST_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Leaf documents. Each key of leaf.record_document / leaf.event_document, in the sorted order */
/* orjson writes them (checked once at import), with how its value is made.                    */

typedef enum {
    V_TEXT, V_INT, V_BOOL, V_UUID, V_UUID_OR_NULL, V_FLOAT, V_TIME, V_TIME_OR_NULL,
    V_JSON_DIGEST, V_JSON_DIGEST_OR_NULL, V_LEAF_VERSION, V_KIND, V_SNAPSHOT, V_POLICIES,
    V_RETRIEVALS, V_SCHEMA2_TEXT, V_SCHEMA2_TIME, V_IF_NOT_NULL_BOOL
} ValueKind;

typedef struct {
    const char *key;
    size_t keylen;
    ValueKind kind;
    int col;
} LeafField;

#define FIELD(key, kind, col) {key, sizeof(key) - 1, kind, col}

static const LeafField RECORD_LEAF[] = {
    FIELD("answer_salted_sha256", V_TEXT, COL_R_ANSWER_SALTED),
    FIELD("api_key_id", V_UUID, COL_R_API_KEY_ID),
    FIELD("choices_salted_sha256", V_TEXT, COL_R_CHOICES_SALTED),
    FIELD("completed_at", V_TIME, COL_R_COMPLETED_AT),
    FIELD("completion_tokens", V_INT, COL_R_COMPLETION_TOKENS),
    FIELD("created_at", V_TIME, COL_R_CREATED_AT),
    FIELD("end_user", V_TEXT, COL_R_END_USER),
    FIELD("error_code", V_TEXT, COL_R_ERROR_CODE),
    FIELD("error_message", V_TEXT, COL_R_ERROR_MESSAGE),
    FIELD("finish_reason", V_TEXT, COL_R_FINISH_REASON),
    FIELD("http_status", V_INT, COL_R_HTTP_STATUS),
    FIELD("id", V_UUID, COL_R_ID),
    FIELD("kind", V_KIND, -1),
    FIELD("latency_ms", V_FLOAT, COL_R_LATENCY_MS),
    FIELD("lineage_stale", V_IF_NOT_NULL_BOOL, COL_R_LINEAGE_STALE), /* present only when set */
    FIELD("model_snapshot_sha256", V_SNAPSHOT, COL_R_MODEL_SNAPSHOT_ID),
    FIELD("params_sha256", V_JSON_DIGEST, COL_R_PARAMS),
    FIELD("policies", V_POLICIES, -1),
    FIELD("policy_bundle_sha256", V_TEXT, COL_R_POLICY_BUNDLE),
    FIELD("prompt_salted_sha256", V_TEXT, COL_R_PROMPT_SALTED),
    FIELD("prompt_tokens", V_INT, COL_R_PROMPT_TOKENS),
    FIELD("requested_model", V_TEXT, COL_R_REQUESTED_MODEL),
    FIELD("response_model", V_TEXT, COL_R_RESPONSE_MODEL),
    FIELD("retain_until", V_SCHEMA2_TIME, COL_R_RETAIN_UNTIL),      /* schema_version >= 2 */
    FIELD("retention_class", V_SCHEMA2_TEXT, COL_R_RETENTION_CLASS), /* schema_version >= 2 */
    FIELD("retrievals", V_RETRIEVALS, -1),
    FIELD("route", V_TEXT, COL_R_ROUTE),
    FIELD("route_kind", V_TEXT, COL_R_ROUTE_KIND),
    FIELD("schema_version", V_INT, COL_R_SCHEMA_VERSION),
    FIELD("span_id", V_TEXT, COL_R_SPAN_ID),
    FIELD("status", V_TEXT, COL_R_STATUS),
    FIELD("stream", V_BOOL, COL_R_STREAM),
    FIELD("tenant_id", V_UUID, COL_R_TENANT_ID),
    FIELD("total_tokens", V_INT, COL_R_TOTAL_TOKENS),
    FIELD("trace_id", V_TEXT, COL_R_TRACE_ID),
    FIELD("upstream_latency_ms", V_FLOAT, COL_R_UPSTREAM_LATENCY_MS),
    FIELD("upstream_model", V_TEXT, COL_R_UPSTREAM_MODEL),
    FIELD("v", V_LEAF_VERSION, -1),
};

static const LeafField EVENT_LEAF[] = {
    FIELD("action", V_TEXT, COL_E_ACTION),
    FIELD("actor", V_TEXT, COL_E_ACTOR),
    FIELD("created_at", V_TIME, COL_E_CREATED_AT),
    FIELD("detail_sha256", V_JSON_DIGEST_OR_NULL, COL_E_DETAIL),
    FIELD("id", V_UUID, COL_E_ID),
    FIELD("kind", V_KIND, -1),
    FIELD("target", V_TEXT, COL_E_TARGET),
    FIELD("tenant_id", V_UUID_OR_NULL, COL_E_TENANT_ID),
    FIELD("v", V_LEAF_VERSION, -1),
};

#define LEAF_VERSION 1 /* leaf.LEAF_VERSION: leafscan.available() is false if they differ */

static int snapshot_cmp(const void *key, const void *item) {
    return memcmp(key, ((const Snapshot *)item)->id, 16);
}

static Status emit_snapshot(Scan *s, sqlite3_value *v) {
    int type = sqlite3_value_type(v);
    if (type == SQLITE_NULL) return buf_lit(&s->doc, "null");
    unsigned char raw[16];
    if (type != SQLITE_TEXT ||
        !from_hex(text_of(v), (size_t)sqlite3_value_bytes(v), raw, 16))
        return ST_UNSURE;
    const Snapshot *found = s->nsnapshots == 0 ? NULL
                            : bsearch(raw, s->snapshots, s->nsnapshots, sizeof(Snapshot),
                                      snapshot_cmp);
    if (found == NULL) return buf_lit(&s->doc, "\"missing\""); /* as verify._check_record */
    return put_json_string(&s->doc, (const unsigned char *)found->sha256, 64);
}

static Status emit_field(Scan *s, const LeafField *f, long long idx, int is_record) {
    sqlite3_value *v = f->col < 0 ? NULL : s->col[f->col];
    switch (f->kind) {
        case V_TEXT: return emit_text(&s->doc, v);
        case V_INT: return emit_int(&s->doc, v);
        case V_BOOL: return emit_bool(&s->doc, v, 0);
        case V_UUID: return emit_uuid(&s->doc, v, 0);
        case V_UUID_OR_NULL: return emit_uuid(&s->doc, v, 1);
        case V_FLOAT: return emit_float_repr(&s->doc, v);
        case V_TIME: return emit_timestamp(&s->doc, v, 0);
        case V_TIME_OR_NULL: return emit_timestamp(&s->doc, v, 1);
        case V_JSON_DIGEST: return emit_json_digest(s, v, 0);
        case V_JSON_DIGEST_OR_NULL: return emit_json_digest(s, v, 1);
        case V_LEAF_VERSION: return put_int(&s->doc, LEAF_VERSION);
        case V_KIND: return buf_puts(&s->doc, is_record ? "\"record\"" : "\"event\"");
        case V_SNAPSHOT: return emit_snapshot(s, v);
        case V_POLICIES: return emit_policies(s, idx);
        case V_RETRIEVALS: return emit_retrievals(s, idx);
        case V_SCHEMA2_TEXT: return emit_text(&s->doc, v);
        case V_SCHEMA2_TIME: return emit_timestamp(&s->doc, v, 1);
        case V_IF_NOT_NULL_BOOL: return emit_bool(&s->doc, v, 0);
    }
    return ST_UNSURE;
}

/* Whether a field is in this entry's document at all. */
static int field_present(const Scan *s, const LeafField *f, long long schema) {
    if (f->kind == V_SCHEMA2_TEXT || f->kind == V_SCHEMA2_TIME) return schema >= 2;
    if (f->kind == V_IF_NOT_NULL_BOOL) return sqlite3_value_type(s->col[f->col]) != SQLITE_NULL;
    return 1;
}

static Status build_document(Scan *s, const LeafField *fields, size_t nfields, long long idx,
                             long long schema, int is_record) {
    s->doc.len = 0;
    TRY(buf_putc(&s->doc, '{'));
    int first = 1;
    for (size_t i = 0; i < nfields; i++) {
        if (!field_present(s, &fields[i], schema)) continue;
        /* ,"key": in one step: the document has forty of them */
        TRY(buf_reserve(&s->doc, fields[i].keylen + 4));
        char *out = s->doc.data + s->doc.len;
        if (!first) *out++ = ',';
        first = 0;
        *out++ = '"';
        memcpy(out, fields[i].key, fields[i].keylen);
        out += fields[i].keylen;
        *out++ = '"';
        *out++ = ':';
        s->doc.len = (size_t)(out - s->doc.data);
        TRY(emit_field(s, &fields[i], idx, is_record));
    }
    return buf_putc(&s->doc, '}');
}

/* OK when SHA-256(0x00 || document) is the stored leaf. */
static Status leaf_matches(Scan *s, const unsigned char stored[32]) {
    static const unsigned char zero = 0;
    unsigned char md[32];
    TRY(sha256_parts(&s->hasher, &zero, 1, s->doc.data, s->doc.len, md));
    return memcmp(md, stored, 32) == 0 ? ST_OK : ST_UNSURE;
}

static Status check_record(Scan *s, long long idx, const unsigned char stored[32]) {
    sqlite3_value **col = s->col;
    if (sqlite3_value_type(col[COL_R_ID]) == SQLITE_NULL) return ST_UNSURE; /* deleted */
    if (sqlite3_value_type(col[COL_R_SCHEMA_VERSION]) != SQLITE_INTEGER) return ST_UNSURE;
    long long schema = sqlite3_value_int64(col[COL_R_SCHEMA_VERSION]);
    if (schema != 1 && schema != 2) return ST_UNSURE; /* a version this file does not know */
    TRY(content_ok(s));
    TRY(build_document(s, RECORD_LEAF, sizeof RECORD_LEAF / sizeof *RECORD_LEAF, idx, schema, 1));
    return leaf_matches(s, stored);
}

static Status check_event(Scan *s, long long idx, const unsigned char stored[32]) {
    if (sqlite3_value_type(s->col[COL_E_ID]) == SQLITE_NULL) return ST_UNSURE; /* deleted */
    TRY(build_document(s, EVENT_LEAF, sizeof EVENT_LEAF / sizeof *EVENT_LEAF, idx, 0, 0));
    return leaf_matches(s, stored);
}

/* ------------------------------------------------------------------------------------------ */
/* The Merkle tree's right border (merkle.CompactRange): one perfect subtree per set bit of    */
/* the size, so appending is O(1) amortised and the root is available at any size.             */

typedef struct {
    unsigned char hash[64][32];
    int level[64];
    int count;
    long long size;
} CompactRange;

static Status node_hash(Hasher *h, const unsigned char *l, const unsigned char *r,
                        unsigned char out[32]) {
    unsigned char buf[65];
    buf[0] = 1;
    memcpy(buf + 1, l, 32);
    memcpy(buf + 33, r, 32);
    return sha256_parts(h, buf, 65, NULL, 0, out);
}

static Status range_append(CompactRange *c, Hasher *h, const unsigned char leaf[32]) {
    unsigned char cur[32];
    int level = 0;
    memcpy(cur, leaf, 32);
    while (c->count && c->level[c->count - 1] == level) {
        TRY(node_hash(h, c->hash[c->count - 1], cur, cur));
        c->count--;
        level++;
    }
    memcpy(c->hash[c->count], cur, 32);
    c->level[c->count++] = level;
    c->size++;
    return ST_OK;
}

static Status range_root(CompactRange *c, Hasher *h, unsigned char out[32]) {
    if (c->count == 0) return sha256_parts(h, "", 0, NULL, 0, out);
    memcpy(out, c->hash[c->count - 1], 32);
    for (int i = c->count - 2; i >= 0; i--) TRY(node_hash(h, c->hash[i], out, out));
    return ST_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Checking: each thread claims chunks of CHUNK log indexes and checks their entries; an entry */
/* is confirmed or goes on the thread's recheck list.                                          */

#define CHUNK 8192

typedef struct {
    const char *path;
    long long total;
    const Snapshot *snapshots;
    size_t nsnapshots;
    _Atomic long long next; /* the first index of the next unclaimed chunk */
    _Atomic long long done; /* entries checked so far, for the progress bar */
    _Atomic int stop;       /* a thread failed, or the progress callback raised */
} Work;

static int open_db(sqlite3 **db, const char *path, char *error, size_t error_size) {
    /* read-only; NOMUTEX: a connection never leaves its thread, so SQLite's per-call locking
     * buys nothing */
    if (sqlite3_open_v2(path, db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
        snprintf(error, error_size, "opening %s read-only: %s", path,
                 *db ? sqlite3_errmsg(*db) : "out of memory");
        return 0;
    }
    sqlite3_busy_timeout(*db, 30000);
    /* memory-map the file (pages read in place, not copied in by a system call each) and give
     * the page cache room for the B-trees' inner pages; both are hints SQLite may ignore */
    sqlite3_exec(*db, "PRAGMA mmap_size = 2147418112; PRAGMA cache_size = -32768", NULL, NULL,
                 NULL);
    /* one read transaction: the statements of this connection see one snapshot of the log */
    if (sqlite3_exec(*db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK) {
        snprintf(error, error_size, "beginning a read: %s", sqlite3_errmsg(*db));
        return 0;
    }
    /* text is read as the bytes stored (text_of): they must be UTF-8 */
    sqlite3_stmt *st = NULL;
    int utf8 = sqlite3_prepare_v2(*db, "PRAGMA encoding", -1, &st, NULL) == SQLITE_OK &&
               sqlite3_step(st) == SQLITE_ROW &&
               sqlite3_column_text(st, 0) != NULL &&
               strcmp((const char *)sqlite3_column_text(st, 0), "UTF-8") == 0;
    sqlite3_finalize(st);
    if (!utf8) {
        snprintf(error, error_size, "the database's text encoding is not UTF-8");
        return 0;
    }
    return 1;
}

static void close_db(sqlite3 *db) {
    if (db == NULL) return;
    sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    sqlite3_close(db);
}

static int table_empty(Scan *s, const char *table, int *empty) {
    char sql[96];
    sqlite3_stmt *st = NULL;
    snprintf(sql, sizeof sql, "SELECT EXISTS (SELECT 1 FROM %s)", table);
    int ok = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) == SQLITE_OK &&
             sqlite3_step(st) == SQLITE_ROW;
    if (ok) *empty = sqlite3_column_int(st, 0) == 0;
    else snprintf(s->error, sizeof s->error, "reading %s: %s", table, sqlite3_errmsg(s->db));
    sqlite3_finalize(st);
    return ok;
}

static int scan_open(Scan *s, const Work *w) {
    s->snapshots = w->snapshots;
    s->nsnapshots = w->nsnapshots;
    if (!hasher_open(&s->hasher)) {
        snprintf(s->error, sizeof s->error, "OpenSSL has no SHA-256");
        return 0;
    }
    if (!open_db(&s->db, w->path, s->error, sizeof s->error)) return 0;
    if (sqlite3_prepare_v2(s->db, ENTRIES_SQL, -1, &s->entries, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(s->db, RETRIEVALS_SQL, -1, &s->retrievals.st, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(s->db, DECISIONS_SQL, -1, &s->decisions.st, NULL) != SQLITE_OK) {
        snprintf(s->error, sizeof s->error, "preparing the scan: %s", sqlite3_errmsg(s->db));
        return 0;
    }
    /* a lineage table with no row (no RAG routes, no policies) is not joined per chunk: the
     * join reads every entry's row again, a tenth of the scan. Asked inside this connection's
     * read transaction, so it holds for every chunk this checker reads. */
    return table_empty(s, "retrievals", &s->retrievals.empty) &&
           table_empty(s, "policy_decisions", &s->decisions.empty);
}

static void scan_close(Scan *s) {
    sqlite3_finalize(s->entries);
    sqlite3_finalize(s->retrievals.st);
    sqlite3_finalize(s->decisions.st);
    close_db(s->db);
    hasher_close(&s->hasher);
    free(s->tree.nodes);
    free(s->tree.strings.data);
    free(s->doc.data);
    free(s->scratch.data);
    free(s->recheck.idx);
}

/* One entry row of a chunk: confirmed, or on the recheck list. */
static Status check_entry(Scan *s) {
    sqlite3_value **col = s->col;
    for (int i = COL_IDX; i < COL_R_ID; i++) col[i] = sqlite3_column_value(s->entries, i);
    if (sqlite3_value_type(col[COL_IDX]) != SQLITE_INTEGER) {
        snprintf(s->error, sizeof s->error, "a log index is not an integer");
        return ST_ERROR;
    }
    long long idx = sqlite3_value_int64(col[COL_IDX]);
    TRY(cursor_seek(s, &s->retrievals, idx));
    TRY(cursor_seek(s, &s->decisions, idx));
    unsigned char stored[32];
    int is_record = sqlite3_value_type(col[COL_KIND]) == SQLITE_TEXT &&
                    sqlite3_value_bytes(col[COL_KIND]) == 6 &&
                    memcmp(text_of(col[COL_KIND]), "record", 6) == 0;
    /* only the columns of the entry's own table: a record's, or an admin event's */
    int first = is_record ? COL_R_ID : COL_E_ID, last = is_record ? COL_E_ID : COL_COUNT;
    for (int i = first; i < last; i++) col[i] = sqlite3_column_value(s->entries, i);
    Status verdict = ST_UNSURE;
    if (sqlite3_value_type(col[COL_STORED]) == SQLITE_TEXT &&
        from_hex(text_of(col[COL_STORED]), (size_t)sqlite3_value_bytes(col[COL_STORED]),
                 stored, 32))
        verdict = is_record ? check_record(s, idx, stored) : check_event(s, idx, stored);
    if (verdict == ST_ERROR) return ST_ERROR;
    if (verdict == ST_OK) {
        s->confirmed++;
        return ST_OK;
    }
    return index_push(&s->recheck, idx);
}

static Status check_chunk(Scan *s, long long lo, long long hi) {
    sqlite3_stmt *stmts[] = {s->entries, s->retrievals.st, s->decisions.st};
    for (size_t i = 0; i < 3; i++) {
        if (sqlite3_reset(stmts[i]) != SQLITE_OK || sqlite3_bind_int64(stmts[i], 1, lo) != SQLITE_OK ||
            sqlite3_bind_int64(stmts[i], 2, hi) != SQLITE_OK) {
            snprintf(s->error, sizeof s->error, "binding a chunk: %s", sqlite3_errmsg(s->db));
            return ST_ERROR;
        }
    }
    TRY(cursor_step(s, &s->retrievals));
    TRY(cursor_step(s, &s->decisions));
    for (;;) {
        int rc = sqlite3_step(s->entries);
        if (rc == SQLITE_DONE) return ST_OK;
        if (rc != SQLITE_ROW) {
            snprintf(s->error, sizeof s->error, "reading log entries: %s", sqlite3_errmsg(s->db));
            return ST_ERROR;
        }
        TRY(check_entry(s));
    }
}

/* Claim and check chunks until none is left; 0 if this checker failed (s->error says why).
 * ``one``: check a single chunk and return (the calling thread, between progress reports). */
static int check_chunks(Scan *s, Work *w, int one) {
    while (!atomic_load(&w->stop)) {
        long long lo = atomic_fetch_add(&w->next, CHUNK);
        if (lo >= w->total) return 1;
        long long hi = lo + CHUNK < w->total ? lo + CHUNK : w->total;
        if (check_chunk(s, lo, hi) != ST_OK) {
            if (!s->error[0]) snprintf(s->error, sizeof s->error, "out of memory or OpenSSL failed");
            atomic_store(&w->stop, 1);
            return 0;
        }
        atomic_fetch_add(&w->done, hi - lo);
        if (one) return 1;
    }
    return 1;
}

typedef struct {
    Scan scan;
    Work *work;
    pthread_t thread;
    int started;
} Checker;

static void *checker_main(void *arg) {
    Checker *c = arg;
    uselocale(c_locale); /* printf and strtod in this thread: '.' as the decimal point */
    if (!scan_open(&c->scan, c->work)) atomic_store(&c->work->stop, 1);
    else check_chunks(&c->scan, c->work, 0);
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* The tree: the log's stored leaves in index order, the Merkle root at each checkpoint size,  */
/* the missing indexes and the entries out of the sealer's order (verify._walk's order checks). */

typedef struct {
    long long expected, idx;
} Gap;

typedef struct {
    long long size, start;
    unsigned char root[32];
} Root;

typedef struct {
    long long idx;
    unsigned char id[16], last[16];
} Reorder;

typedef struct {
    Gap *gaps;
    Root *roots; /* at most one per checkpoint size: allocated up front */
    Reorder *reordered;
    size_t ngaps, nroots, nreordered, cap_gaps, cap_reordered;
    long long size;
    char error[256];
} LogWalk;

/* Append to a growable array of ``size``-byte items; 0 when out of memory. */
static int grow_push(void **items, size_t *len, size_t *cap, size_t size, const void *item) {
    if (*len == *cap) {
        size_t grown = *cap ? *cap * 2 : 16;
        void *more = realloc(*items, grown * size);
        if (more == NULL) return 0;
        *items = more;
        *cap = grown;
    }
    memcpy((char *)*items + *len * size, item, size);
    (*len)++;
    return 1;
}

static int walk_fail(LogWalk *w, const char *why, sqlite3 *db) {
    snprintf(w->error, sizeof w->error, "%s%s%s", why, db ? ": " : "", db ? sqlite3_errmsg(db) : "");
    return 0;
}

/* One row of the tree walk, as in verify._walk: a gap, an entry out of order, a checkpoint. */
static int walk_row(LogWalk *w, sqlite3_stmt *st, Hasher *h, CompactRange *rng,
                    const long long *bounds, size_t nbounds, size_t *next_bound, long long *expected,
                    long long *range_start, unsigned char last[16], int *have_last) {
    unsigned char id[16], stored[32];
    if (sqlite3_column_type(st, 0) != SQLITE_INTEGER || sqlite3_column_type(st, 1) != SQLITE_TEXT ||
        sqlite3_column_type(st, 2) != SQLITE_TEXT ||
        !from_hex(text_of(sqlite3_column_value(st, 1)), (size_t)sqlite3_column_bytes(st, 1), id,
                  16) ||
        !from_hex(text_of(sqlite3_column_value(st, 2)), (size_t)sqlite3_column_bytes(st, 2),
                  stored, 32))
        return walk_fail(w, "a log entry's index, id or leaf is not in the stored form", NULL);
    long long idx = sqlite3_column_int64(st, 0);
    if (idx != *expected) {
        Gap gap = {*expected, idx};
        if (!grow_push((void **)&w->gaps, &w->ngaps, &w->cap_gaps, sizeof gap, &gap))
            return walk_fail(w, "out of memory", NULL);
        *expected = idx;
    }
    (*expected)++;
    if (*have_last && idx > *range_start && memcmp(id, last, 16) <= 0) {
        Reorder r;
        r.idx = idx;
        memcpy(r.id, id, 16);
        memcpy(r.last, last, 16);
        if (!grow_push((void **)&w->reordered, &w->nreordered, &w->cap_reordered, sizeof r, &r))
            return walk_fail(w, "out of memory", NULL);
    }
    memcpy(last, id, 16);
    *have_last = 1;
    if (range_append(rng, h, stored) != ST_OK) return walk_fail(w, "OpenSSL failed", NULL);
    if (*next_bound < nbounds && rng->size == bounds[*next_bound]) {
        Root *root = &w->roots[w->nroots++];
        root->size = rng->size;
        root->start = *range_start;
        if (range_root(rng, h, root->root) != ST_OK) return walk_fail(w, "OpenSSL failed", NULL);
        *range_start = rng->size;
        *have_last = 0;
        (*next_bound)++;
    }
    return 1;
}

static int walk_log(LogWalk *w, const char *path, long long total, const long long *bounds,
                    size_t nbounds) {
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    Hasher h = {NULL, NULL};
    CompactRange rng;
    rng.count = 0;
    rng.size = 0;
    long long expected = 0, range_start = 0;
    unsigned char last[16];
    int have_last = 0, ok = 1;
    size_t next_bound = 0;
    w->roots = malloc((nbounds ? nbounds : 1) * sizeof(Root));
    if (w->roots == NULL || !hasher_open(&h)) ok = walk_fail(w, "out of memory", NULL);
    if (ok && !open_db(&db, path, w->error, sizeof w->error)) ok = 0;
    if (ok && (sqlite3_prepare_v2(db, TREE_SQL, -1, &st, NULL) != SQLITE_OK ||
               sqlite3_bind_int64(st, 1, total) != SQLITE_OK))
        ok = walk_fail(w, "preparing the tree walk", db);
    while (ok) {
        int rc = sqlite3_step(st);
        if (rc == SQLITE_DONE) break;
        if (rc != SQLITE_ROW) ok = walk_fail(w, "reading the log", db);
        else ok = walk_row(w, st, &h, &rng, bounds, nbounds, &next_bound, &expected,
                           &range_start, last, &have_last);
    }
    w->size = rng.size;
    sqlite3_finalize(st);
    close_db(db);
    hasher_close(&h);
    return ok;
}

static void walk_free(LogWalk *w) {
    free(w->gaps);
    free(w->roots);
    free(w->reordered);
}

/* ------------------------------------------------------------------------------------------ */
/* The entry point. The GIL is let go for the whole walk; the calling thread walks the tree,   */
/* then checks chunks too, taking the GIL back only to report progress.                        */

static Snapshot *read_snapshots(PyObject *dict, size_t *n) {
    *n = (size_t)PyDict_Size(dict);
    Snapshot *out = PyMem_Calloc(*n ? *n : 1, sizeof(Snapshot));
    if (out == NULL) return (Snapshot *)PyErr_NoMemory();
    Py_ssize_t pos = 0, i = 0;
    PyObject *key, *value;
    while (PyDict_Next(dict, &pos, &key, &value)) {
        const char *k = PyUnicode_Check(key) ? PyUnicode_AsUTF8(key) : NULL;
        const char *v = PyUnicode_Check(value) ? PyUnicode_AsUTF8(value) : NULL;
        if (k == NULL || v == NULL || strlen(v) != 64 ||
            !from_hex((const unsigned char *)k, strlen(k), out[i].id, 16)) {
            PyMem_Free(out);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "snapshots: 32 hex digits -> 64 hex digits");
            return NULL;
        }
        memcpy(out[i++].sha256, v, 64);
    }
    qsort(out, *n, sizeof(Snapshot), snapshot_cmp);
    return out;
}

static long long *read_bounds(PyObject *obj, size_t *n) {
    PyObject *seq = PySequence_Fast(obj, "bounds must be a sequence of tree sizes");
    if (seq == NULL) return NULL;
    *n = (size_t)PySequence_Fast_GET_SIZE(seq);
    long long *bounds = PyMem_Calloc(*n ? *n : 1, sizeof(long long));
    for (size_t i = 0; bounds != NULL && i < *n; i++) {
        bounds[i] = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, (Py_ssize_t)i));
        if (bounds[i] == -1 && PyErr_Occurred()) {
            PyMem_Free(bounds);
            bounds = NULL;
        }
    }
    Py_DECREF(seq);
    if (bounds == NULL && !PyErr_Occurred()) PyErr_NoMemory();
    return bounds;
}

/* Append a new object (NULL: its construction failed) to a list. */
static int append_new(PyObject *list, PyObject *item) {
    if (item == NULL) return 0;
    int rc = PyList_Append(list, item);
    Py_DECREF(item);
    return rc == 0;
}

/* The findings as (size, confirmed, gaps, roots, reordered, recheck). */
static PyObject *findings(const LogWalk *w, const Checker *checkers, int n) {
    long long confirmed = 0;
    PyObject *gaps = PyList_New(0), *roots = PyList_New(0), *reordered = PyList_New(0),
             *recheck = PyList_New(0), *out = NULL;
    int ok = gaps && roots && reordered && recheck;
    for (size_t i = 0; ok && i < w->ngaps; i++)
        ok = append_new(gaps, Py_BuildValue("(LL)", w->gaps[i].expected, w->gaps[i].idx));
    for (size_t i = 0; ok && i < w->nroots; i++)
        ok = append_new(roots, Py_BuildValue("(Ly#L)", w->roots[i].size,
                                             (const char *)w->roots[i].root, (Py_ssize_t)32,
                                             w->roots[i].start));
    for (size_t i = 0; ok && i < w->nreordered; i++)
        ok = append_new(reordered, Py_BuildValue("(Ly#y#)", w->reordered[i].idx,
                                                 (const char *)w->reordered[i].id, (Py_ssize_t)16,
                                                 (const char *)w->reordered[i].last,
                                                 (Py_ssize_t)16));
    for (int c = 0; ok && c < n; c++) {
        confirmed += checkers[c].scan.confirmed;
        for (size_t i = 0; ok && i < checkers[c].scan.recheck.len; i++)
            ok = append_new(recheck, PyLong_FromLongLong(checkers[c].scan.recheck.idx[i]));
    }
    if (ok && PyList_Sort(recheck) == 0)
        out = Py_BuildValue("(LLOOOO)", w->size, confirmed, gaps, roots, reordered, recheck);
    Py_XDECREF(gaps);
    Py_XDECREF(roots);
    Py_XDECREF(reordered);
    Py_XDECREF(recheck);
    return out;
}

#define MAX_THREADS 16

/* Walk the tree, then check chunks until none is left, reporting progress after each of this
 * thread's chunks. Runs with the GIL released; takes it back only around the callback. */
static int run_main(Checker *self, Work *work, LogWalk *walk, const long long *bounds,
                    size_t nbounds, PyObject *progress, PyThreadState **ts) {
    if (!walk_log(walk, work->path, work->total, bounds, nbounds)) {
        atomic_store(&work->stop, 1);
        return 0;
    }
    if (!scan_open(&self->scan, work)) {
        atomic_store(&work->stop, 1);
        return 0;
    }
    while (!atomic_load(&work->stop) && atomic_load(&work->next) < work->total) {
        if (!check_chunks(&self->scan, work, 1)) return 0;
        if (progress != Py_None) {
            PyEval_RestoreThread(*ts);
            PyObject *r = PyObject_CallFunction(progress, "LL", atomic_load(&work->done),
                                                work->total);
            Py_XDECREF(r);
            *ts = PyEval_SaveThread();
            if (r == NULL) {
                atomic_store(&work->stop, 1);
                return -1; /* the callback's exception is pending */
            }
        }
    }
    return 1;
}

static PyObject *scan(PyObject *self, PyObject *args) {
    const char *path;
    long long total;
    int threads;
    PyObject *bounds_obj, *snapshots_obj, *progress;
    (void)self;
    if (!PyArg_ParseTuple(args, "sLOO!Oi", &path, &total, &bounds_obj, &PyDict_Type,
                          &snapshots_obj, &progress, &threads))
        return NULL;
    if (threads < 1 || threads > MAX_THREADS) threads = threads < 1 ? 1 : MAX_THREADS;
    size_t nbounds, nsnapshots;
    long long *bounds = read_bounds(bounds_obj, &nbounds);
    if (bounds == NULL) return NULL;
    Snapshot *snapshots = read_snapshots(snapshots_obj, &nsnapshots);
    if (snapshots == NULL) {
        PyMem_Free(bounds);
        return NULL;
    }
    Work work = {.path = path, .total = total, .snapshots = snapshots, .nsnapshots = nsnapshots};
    atomic_init(&work.next, 0);
    atomic_init(&work.done, 0);
    atomic_init(&work.stop, 0);
    Checker checkers[MAX_THREADS];
    memset(checkers, 0, sizeof checkers);
    LogWalk walk;
    memset(&walk, 0, sizeof walk);

    PyThreadState *ts = PyEval_SaveThread();
    locale_t previous = uselocale(c_locale);
    for (int i = 1; i < threads; i++) {
        checkers[i].work = &work;
        checkers[i].started = pthread_create(&checkers[i].thread, NULL, checker_main,
                                             &checkers[i]) == 0;
    }
    checkers[0].work = &work;
    int ran = run_main(&checkers[0], &work, &walk, bounds, nbounds, progress, &ts);
    for (int i = 1; i < threads; i++)
        if (checkers[i].started) pthread_join(checkers[i].thread, NULL);
    uselocale(previous);
    PyEval_RestoreThread(ts);

    PyObject *result = NULL;
    const char *error = walk.error[0] ? walk.error : NULL;
    for (int i = 0; error == NULL && i < threads; i++)
        if (checkers[i].scan.error[0]) error = checkers[i].scan.error;
    if (ran >= 0 && error != NULL) PyErr_SetString(Unsupported, error);
    else if (ran > 0) {
        PyObject *r = progress == Py_None
                          ? Py_NewRef(Py_None)
                          : PyObject_CallFunction(progress, "LL", walk.size, total);
        if (r != NULL) result = findings(&walk, checkers, threads);
        Py_XDECREF(r);
    }
    for (int i = 0; i < threads; i++) scan_close(&checkers[i].scan);
    walk_free(&walk);
    PyMem_Free(bounds);
    PyMem_Free(snapshots);
    return result;
}

/* ------------------------------------------------------------------------------------------ */
/* Two windows onto the pieces above, for the tests that hold them to Python's own output.     */

static int parse_style(const char *name, NumStyle *style) {
    if (strcmp(name, "repr") == 0) *style = NUM_REPR;
    else if (strcmp(name, "orjson") == 0) *style = NUM_ORJSON;
    else if (strcmp(name, "jcs") == 0) *style = NUM_JCS;
    else {
        PyErr_Format(PyExc_ValueError, "unknown style %s", name);
        return 0;
    }
    return 1;
}

/* Turn a Status and a buffer into bytes, None (UNSURE) or NULL (error); frees the buffer. */
static PyObject *status_result(Status st, Buf *b) {
    PyObject *out = NULL;
    if (st == ST_OK) out = PyBytes_FromStringAndSize(b->data ? b->data : "", (Py_ssize_t)b->len);
    else if (st == ST_UNSURE) out = Py_NewRef(Py_None);
    else PyErr_NoMemory();
    free(b->data);
    return out;
}

static PyObject *format_float(PyObject *self, PyObject *args) {
    double v;
    const char *name;
    NumStyle style;
    (void)self;
    if (!PyArg_ParseTuple(args, "ds", &v, &name) || !parse_style(name, &style)) return NULL;
    Buf b = {NULL, 0, 0};
    locale_t previous = uselocale(c_locale);
    Status st = put_double(&b, v, style);
    uselocale(previous);
    return status_result(st, &b);
}

static PyObject *canonical_json(PyObject *self, PyObject *args) {
    const char *text, *name;
    Py_ssize_t n;
    NumStyle style;
    (void)self;
    if (!PyArg_ParseTuple(args, "y#s", &text, &n, &name) || !parse_style(name, &style))
        return NULL;
    Tree t;
    memset(&t, 0, sizeof t);
    Buf b = {NULL, 0, 0};
    Status st = utf8_valid((const unsigned char *)text, (size_t)n) ? ST_OK : ST_UNSURE;
    locale_t previous = uselocale(c_locale);
    if (st == ST_OK) st = parse_json(&t, (const unsigned char *)text, (size_t)n);
    if (st == ST_OK) st = emit_node(&b, &t, 0, style);
    uselocale(previous);
    free(t.nodes);
    free(t.strings.data);
    return status_result(st, &b);
}

static PyMethodDef METHODS[] = {
    {"scan", scan, METH_VARARGS,
     "scan(path, total, bounds, snapshots, progress, threads) -> (size, confirmed, gaps, "
     "roots, reordered, recheck)"},
    {"format_float", format_float, METH_VARARGS,
     "format_float(value, 'repr' | 'orjson' | 'jcs') -> bytes, or None when unsure"},
    {"canonical_json", canonical_json, METH_VARARGS,
     "canonical_json(utf8_json, 'orjson' | 'jcs') -> sorted-key bytes, or None when unsure"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_leafscan",
    .m_doc = "The per-entry loop of `provenant verify` over an SQLite store (see _leafscan.c).",
    .m_size = -1,
    .m_methods = METHODS,
};

/* The leaf tables must be in the byte order orjson sorts keys in; refuse to load otherwise. */
static int sorted_keys(const LeafField *fields, size_t n) {
    for (size_t i = 1; i < n; i++)
        if (strcmp(fields[i - 1].key, fields[i].key) >= 0) return 0;
    return 1;
}

PyMODINIT_FUNC PyInit__leafscan(void) {
    hex_table_init();
    c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0);
    if (c_locale == (locale_t)0) {
        PyErr_SetString(PyExc_ImportError, "_leafscan: no C locale");
        return NULL;
    }
    if (!sorted_keys(RECORD_LEAF, sizeof RECORD_LEAF / sizeof *RECORD_LEAF) ||
        !sorted_keys(EVENT_LEAF, sizeof EVENT_LEAF / sizeof *EVENT_LEAF)) {
        PyErr_SetString(PyExc_ImportError, "_leafscan: leaf fields are not in sorted order");
        return NULL;
    }
    PyObject *m = PyModule_Create(&MODULE);
    if (m == NULL) return NULL;
    Unsupported = PyErr_NewException("_leafscan.Unsupported", NULL, NULL);
    if (Unsupported == NULL || PyModule_AddObjectRef(m, "Unsupported", Unsupported) < 0 ||
        PyModule_AddIntConstant(m, "LEAF_VERSION", LEAF_VERSION) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
