/* loom.h - single-header C SDK for Loom activities (core-v1 ABI, see activities/README.md).
 *
 *   #include "loom.h"
 *   static int handle(loom_input *in, loom_output *out) {
 *       loom_set_output(out, in->data, in->len);   // or build JSON: loom_begin_object(out)...
 *       return 0;                                   // or: return loom_fail(out, "why", 0);
 *   }
 *   LOOM_ACTIVITY(handle)
 *
 * Everything is `static`; only LOOM_ACTIVITY defines exports, so the JSON helpers and the
 * output builder also work in a plain C program (e.g. a wasi-command). "malloc'd" results
 * must be free()d (instances are reused, leaks accumulate); the SDK owns `out`. */
#ifndef LOOM_H
#define LOOM_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LOOM_API static __attribute__((unused))

/* Set when an SDK allocation fails; loom_run then fails the call with code memory_limit. */
LOOM_API int loom__nomem;
LOOM_API void *loom__malloc(size_t n) {
    void *p = malloc(n);
    if (!p) loom__nomem = 1;
    return p;
}

/* ------------------------------------------------------------------------ JSON reading
 * The helpers read the top level of the JSON object (json, len). For a nested object, get
 * its raw text with loom_json_find and call them on that slice. Input is assumed to be
 * valid JSON (the host validates it against the manifest's input_schema). */

LOOM_API const char *loom__ws(const char *p, const char *e) {
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}
/* p at an opening quote; returns the position after the closing quote, or NULL. */
LOOM_API const char *loom__skip_string(const char *p, const char *e) {
    for (p++; p < e; p++)
        if (*p == '\\') p++;
        else if (*p == '"') return p + 1;
    return NULL;
}

/* Skips one JSON value (any nesting); returns the position after it, or NULL. */
LOOM_API const char *loom__skip_value(const char *p, const char *e) {
    int depth = 0;
    do {
        p = loom__ws(p, e);
        if (p >= e) return NULL;
        if (*p == '"') p = loom__skip_string(p, e);
        else if (*p == '{' || *p == '[') depth++, p++;
        else if (*p == '}' || *p == ']') p = --depth < 0 ? NULL : p + 1;
        else if (*p == ',' || *p == ':') p++;
        else while (p < e && !memchr(",:]} \t\r\n", *p, 8)) p++; /* number, true, ... */
        if (!p) return NULL;
    } while (depth > 0);
    return p;
}

LOOM_API int32_t loom__hex4(const char *s, size_t n) {
    int32_t v = 0;
    if (n < 4) return -1;
    for (int i = 0; i < 4; i++) {
        int c = s[i], l = c | 32;
        int d = (c >= '0' && c <= '9') ? c - '0' : (l >= 'a' && l <= 'f') ? l - 'a' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

/* Encodes code point c as UTF-8 into d (if d is not NULL); returns the byte count. */
LOOM_API size_t loom__utf8_put(char *d, uint32_t c) {
    unsigned char b[4];
    size_t n = c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
    static const unsigned char lead[5] = {0, 0, 0xC0, 0xE0, 0xF0};
    for (size_t i = n - 1; i > 0; i--, c >>= 6) b[i] = (unsigned char)(0x80 | (c & 63));
    b[0] = (unsigned char)(lead[n] | c);
    if (d) memcpy(d, b, n);
    return n;
}

/* Unescapes the body of a JSON string (without quotes) into dst (NULL: only count).
 * \uXXXX (including surrogate pairs) becomes UTF-8; lone surrogates become U+FFFD. */
LOOM_API size_t loom__unescape(const char *s, size_t n, char *dst) {
    size_t i = 0, o = 0;
    while (i < n) {
        char c = s[i++];
        if (c == '\\' && i < n) {
            c = s[i++];
            if (c == 'u') {
                int32_t cp = loom__hex4(s + i, n - i), lo;
                if (cp < 0) cp = 0xFFFD;
                else i += 4;
                if (cp >= 0xD800 && cp < 0xDC00 && i + 1 < n && s[i] == '\\' && s[i + 1] == 'u' &&
                    (lo = loom__hex4(s + i + 2, n - i - 2)) >= 0xDC00 && lo < 0xE000) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    i += 6;
                } else if (cp >= 0xD800 && cp < 0xE000) {
                    cp = 0xFFFD;
                }
                o += loom__utf8_put(dst ? dst + o : NULL, (uint32_t)cp);
                continue;
            }
            c = c == 'n' ? '\n' : c == 't' ? '\t' : c == 'r' ? '\r' : c == 'b' ? '\b'
              : c == 'f' ? '\f' : c; /* \" \\ \/ stand for themselves */
        }
        if (dst) dst[o] = c;
        o++;
    }
    return o;
}

LOOM_API int loom__key_eq(const char *raw, size_t rn, const char *key, size_t kn) {
    char *tmp;
    int eq;
    if (!memchr(raw, '\\', rn)) return rn == kn && memcmp(raw, key, kn) == 0;
    if (loom__unescape(raw, rn, NULL) != kn || !(tmp = loom__malloc(kn + 1))) return 0;
    loom__unescape(raw, rn, tmp);
    eq = memcmp(tmp, key, kn) == 0;
    return free(tmp), eq;
}

/* Finds member `key` of the object in (json, len): returns a pointer to its raw value text
 * (length in *vlen, which may be NULL), or NULL. Of duplicate keys the last wins. */
LOOM_API const char *loom_json_find(const char *json, size_t len, const char *key,
                                    size_t *vlen) {
    const char *e = json + len, *p = loom__ws(json, e), *found = NULL, *k, *v;
    size_t klen = strlen(key);
    if (p >= e || *p++ != '{') return NULL;
    for (;;) {
        p = loom__ws(p, e);
        if (p >= e || *p != '"') return found;
        k = p + 1;
        if (!(p = loom__skip_string(p, e))) return found;
        int match = loom__key_eq(k, (size_t)(p - 1 - k), key, klen);
        p = loom__ws(p, e);
        if (p >= e || *p != ':') return found;
        v = loom__ws(p + 1, e);
        if (!(p = loom__skip_value(v, e))) return found;
        if (match && (found = v) && vlen) *vlen = (size_t)(p - v);
        p = loom__ws(p, e);
        if (p >= e || *p++ != ',') return found;
    }
}

/* String member, unescaped, as a malloc'd NUL-terminated buffer (length in *out_len, may be
 * NULL; the value may contain NUL bytes). NULL if missing, not a string (e.g. null) or out
 * of memory (which also makes the call fail with code memory_limit). */
LOOM_API char *loom_json_string(const char *json, size_t len, const char *key,
                                size_t *out_len) {
    size_t vn, n;
    const char *v = loom_json_find(json, len, key, &vn);
    char *s;
    if (!v || vn < 2 || *v != '"') return NULL;
    n = loom__unescape(v + 1, vn - 2, NULL);
    if (!(s = loom__malloc(n + 1))) return NULL;
    loom__unescape(v + 1, vn - 2, s);
    s[n] = 0;
    if (out_len) *out_len = n;
    return s;
}

/* Integer member into *out: 1 if present and an integer (no fraction/exponent) that fits
 * int64, else 0 (*out unchanged, so preset it to the default). */
LOOM_API int loom_json_int(const char *json, size_t len, const char *key, int64_t *out) {
    size_t vn, i;
    const char *v = loom_json_find(json, len, key, &vn);
    uint64_t acc = 0, limit;
    if (!v) return 0;
    i = v[0] == '-';
    limit = i ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    if (i >= vn) return 0;
    for (; i < vn; i++) {
        unsigned d = (unsigned)(v[i] - '0');
        if (d > 9 || acc > (limit - d) / 10) return 0;
        acc = acc * 10 + d;
    }
    *out = v[0] == '-' ? (int64_t)(0 - acc) : (int64_t)acc;
    return 1;
}

/* Boolean member into *out (1/0): 1 if present and a boolean, else 0. */
LOOM_API int loom_json_bool(const char *json, size_t len, const char *key, int *out) {
    size_t vn = 0;
    const char *v = loom_json_find(json, len, key, &vn);
    if (v && vn == 4 && memcmp(v, "true", 4) == 0) return *out = 1, 1;
    if (v && vn == 5 && memcmp(v, "false", 5) == 0) return *out = 0, 1;
    return 0;
}

/* ------------------------------------------------------------------------ JSON writing */

typedef struct { const char *data; size_t len; } loom_input; /* NUL-terminated JSON input */

/* The handler's output, or a local builder: `loom_output b = {0}; ...; free(b.buf);` */
typedef struct {
    char *buf;       /* growable, reused across calls */
    size_t len, cap;
    const char *ext; /* zero-copy output set by loom_set_output, or NULL */
    size_t ext_len;
    int comma, oom, failed;
} loom_output;

/* Appends raw bytes (no escaping, no commas). Returns 0, or -1 when out of memory: the
 * builder then ignores further writes (and the call fails with memory_limit). */
LOOM_API int loom_write(loom_output *o, const void *p, size_t n) {
    if (o->oom) return -1;
    if (n > o->cap - o->len) {
        size_t cap = o->cap ? o->cap : 256;
        char *b;
        while (cap - o->len < n) {
            if (cap > SIZE_MAX / 2) return o->oom = loom__nomem = 1, -1;
            cap *= 2;
        }
        if (!(b = realloc(o->buf, cap))) return o->oom = loom__nomem = 1, -1;
        o->buf = b, o->cap = cap;
    }
    if (n) memcpy(o->buf + o->len, p, n);
    o->len += n;
    return 0;
}

/* Makes the output the n bytes at p, without copying; they must stay valid after the
 * handler returns (the input itself, static data, memory the activity keeps). */
LOOM_API void loom_set_output(loom_output *o, const char *p, size_t n) {
    o->ext = p, o->ext_len = n, o->len = 0;
}

/* The token writers below insert the commas between members and elements:
 *   loom_begin_object(o); loom_key(o, "a"); loom_int(o, 1); loom_end_object(o); */
LOOM_API void loom__sep(loom_output *o) { if (o->comma) loom_write(o, ",", 1); }
/* An already-encoded JSON value (e.g. a slice from loom_json_find). */
LOOM_API void loom_raw(loom_output *o, const char *json, size_t n) {
    loom__sep(o), loom_write(o, json, n), o->comma = 1;
}

/* Length (2-4) of the valid UTF-8 sequence at s, or 0 if s does not start one. */
LOOM_API size_t loom__utf8_len(const unsigned char *s, size_t n) {
    size_t k = s[0] < 0xE0 ? 2 : s[0] < 0xF0 ? 3 : 4, i;
    uint32_t cp;
    if (s[0] < 0xC2 || s[0] > 0xF4 || n < k) return 0;
    cp = s[0] & (0x3Fu >> (k - 1));
    for (i = 1; i < k; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = cp << 6 | (s[i] & 0x3F);
    }
    if (k == 3 && (cp < 0x800 || (cp >= 0xD800 && cp < 0xE000))) return 0;
    if (k == 4 && (cp < 0x10000 || cp > 0x10FFFF)) return 0;
    return k;
}

/* A JSON string. Valid UTF-8 is copied as is; quotes, backslashes and control characters
 * are escaped; bytes that are not valid UTF-8 become \u00XX (read as Latin-1), so the
 * output is always valid JSON whatever the bytes. */
LOOM_API void loom_string(loom_output *o, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, start = 0;
    char esc[6] = {'\\', 'u', '0', '0', 0, 0};
    loom__sep(o), loom_write(o, "\"", 1);
    while (i < n) {
        unsigned char c = u[i];
        size_t k = c < 0x80 ? 1 : loom__utf8_len(u + i, n - i);
        if (k > 1 || (k == 1 && c >= 0x20 && c != '"' && c != '\\')) { i += k; continue; }
        loom_write(o, s + start, i - start);
        if (c == '"' || c == '\\') esc[4] = '\\', esc[5] = (char)c, loom_write(o, esc + 4, 2);
        else if (c == '\n') loom_write(o, "\\n", 2);
        else if (c == '\t') loom_write(o, "\\t", 2);
        else if (c == '\r') loom_write(o, "\\r", 2);
        else esc[4] = hex[c >> 4], esc[5] = hex[c & 15], loom_write(o, esc, 6);
        start = ++i;
    }
    loom_write(o, s + start, n - start);
    loom_write(o, "\"", 1), o->comma = 1;
}

LOOM_API void loom_cstring(loom_output *o, const char *s) { loom_string(o, s, strlen(s)); }
LOOM_API void loom_int(loom_output *o, int64_t v) {
    char b[20], *p = b + sizeof b;
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    do *--p = (char)('0' + u % 10); while (u /= 10);
    if (v < 0) *--p = '-';
    loom_raw(o, p, (size_t)(b + sizeof b - p));
}
LOOM_API void loom_bool(loom_output *o, int v) { loom_raw(o, v ? "true" : "false", v ? 4 : 5); }
LOOM_API void loom_null(loom_output *o) { loom_raw(o, "null", 4); }
LOOM_API void loom_key(loom_output *o, const char *key) {
    loom_cstring(o, key), loom_write(o, ":", 1), o->comma = 0;
}
LOOM_API void loom_begin_object(loom_output *o) { loom_raw(o, "{", 1), o->comma = 0; }
LOOM_API void loom_end_object(loom_output *o) { loom_write(o, "}", 1), o->comma = 1; }
LOOM_API void loom_begin_array(loom_output *o) { loom_raw(o, "[", 1), o->comma = 0; }
LOOM_API void loom_end_array(loom_output *o) { loom_write(o, "]", 1), o->comma = 1; }

/* Replaces the output with the error {"message", "retryable"[, "code"]} (code may be NULL).
 * Returns 1 so that a handler can `return loom_fail(out, "...", 0);`. */
LOOM_API int loom_fail_code(loom_output *o, const char *code, const char *message,
                            int retryable) {
    o->len = 0, o->ext = NULL, o->comma = 0, o->oom = 0;
    loom_begin_object(o);
    loom_key(o, "message"), loom_cstring(o, message);
    loom_key(o, "retryable"), loom_bool(o, retryable);
    if (code) loom_key(o, "code"), loom_cstring(o, code);
    loom_end_object(o);
    return o->failed = 1;
}

LOOM_API int loom_fail(loom_output *o, const char *message, int retryable) {
    return loom_fail_code(o, NULL, message, retryable);
}

/* ------------------------------------------------------------------------ host calls */

__attribute__((import_module("loom"), import_name("host_call")))
int32_t loom__host_call(const char *req, size_t len);
__attribute__((import_module("loom"), import_name("host_result")))
int32_t loom__host_result(char *dst);

/* Sends one JSON request; returns the malloc'd NUL-terminated JSON response (length in
 * *resp_len, may be NULL), or NULL. A call the manifest does not grant never returns:
 * the host traps the guest and the invocation fails with capability_denied. */
LOOM_API char *loom_host(const char *req, size_t len, size_t *resp_len) {
    int32_t n = loom__host_call(req, len);
    char *buf;
    if (n < 0 || !(buf = loom__malloc((size_t)n + 1))) return NULL;
    n = loom__host_result(buf);
    buf[n < 0 ? (n = 0) : n] = 0;
    if (resp_len) *resp_len = (size_t)n;
    return buf;
}

/* Sends the request in builder b, frees b; returns the malloc'd response or NULL. */
LOOM_API char *loom__send(loom_output *b, size_t *resp_len) {
    char *r = b->oom ? NULL : loom_host(b->buf, b->len, resp_len);
    return free(b->buf), r;
}
LOOM_API void loom__op(loom_output *b, const char *op) {
    loom_begin_object(b), loom_key(b, "op"), loom_cstring(b, op);
}

/* level: "debug" | "info" | "warning" | "error"; fields: JSON object text or NULL.
 * Returns 0 on success, -1 otherwise. */
LOOM_API int loom_log_fields(const char *level, const char *message, const char *fields,
                             size_t fields_len) {
    loom_output b = {0};
    size_t n;
    int ok = 0;
    char *r;
    loom__op(&b, "log");
    loom_key(&b, "level"), loom_cstring(&b, level);
    loom_key(&b, "message"), loom_cstring(&b, message);
    if (fields) loom_key(&b, "fields"), loom_raw(&b, fields, fields_len);
    loom_end_object(&b);
    if ((r = loom__send(&b, &n)) && !loom_json_bool(r, n, "ok", &ok)) ok = 0;
    return free(r), ok ? 0 : -1;
}
LOOM_API int loom_log(const char *level, const char *message) {
    return loom_log_fields(level, message, NULL, 0);
}

/* {"op": op[, "name": name]} -> malloc'd "value" string, or NULL (unset, null, failure). */
LOOM_API char *loom__value(const char *op, const char *name, size_t *len) {
    loom_output b = {0};
    size_t n;
    char *r, *v = NULL;
    loom__op(&b, op);
    if (name) loom_key(&b, "name"), loom_cstring(&b, name);
    loom_end_object(&b);
    if ((r = loom__send(&b, &n))) v = loom_json_string(r, n, "value", len);
    return free(r), v;
}

/* Each returns a malloc'd NUL-terminated value (length in *len, may be NULL), or NULL. */
LOOM_API char *loom_secret(const char *name, size_t *len) {
    return loom__value("secret", name, len);
}
LOOM_API char *loom_env(const char *name, size_t *len) { return loom__value("env", name, len); }
LOOM_API char *loom_idempotency_key(size_t *len) { return loom__value("idempotency_key", 0, len); }

typedef struct {
    int ok;           /* 1 when the host answered ok:true */
    int64_t status;   /* HTTP status */
    char *body;       /* malloc'd, NUL-terminated, body_len bytes */
    size_t body_len;
    char *error;      /* when !ok: malloc'd error message (NULL if the call itself failed) */
    char *error_code; /* when !ok: malloc'd error code, or NULL */
    char *raw;        /* the whole malloc'd response, e.g. to read "headers" */
    size_t raw_len;
} loom_http_response;

LOOM_API void loom_http_free(loom_http_response *r) {
    free(r->body), free(r->error), free(r->error_code), free(r->raw);
    memset(r, 0, sizeof *r);
}
/* headers: JSON object text such as {"Accept": "text/plain"}, or NULL; body may be NULL.
 * Returns 0 if the host answered ok:true, else -1. Always loom_http_free(r) afterwards. */
LOOM_API int loom_http(const char *method, const char *url, const char *headers,
                       const char *body, size_t body_len, loom_http_response *r) {
    loom_output b = {0};
    size_t en;
    const char *err;
    memset(r, 0, sizeof *r);
    loom__op(&b, "http");
    loom_key(&b, "method"), loom_cstring(&b, method);
    loom_key(&b, "url"), loom_cstring(&b, url);
    if (headers) loom_key(&b, "headers"), loom_raw(&b, headers, strlen(headers));
    if (body) loom_key(&b, "body"), loom_string(&b, body, body_len);
    loom_end_object(&b);
    if (!(r->raw = loom__send(&b, &r->raw_len))) return -1;
    if (loom_json_bool(r->raw, r->raw_len, "ok", &r->ok) && r->ok) {
        loom_json_int(r->raw, r->raw_len, "status", &r->status);
        r->body = loom_json_string(r->raw, r->raw_len, "body", &r->body_len);
        return 0;
    }
    r->ok = 0;
    if ((err = loom_json_find(r->raw, r->raw_len, "error", &en))) {
        r->error = loom_json_string(err, en, "message", NULL);
        r->error_code = loom_json_string(err, en, "code", NULL);
    }
    return -1;
}

LOOM_API int loom_http_get(const char *url, const char *headers, loom_http_response *r) {
    return loom_http("GET", url, headers, NULL, 0, r);
}

/* ------------------------------------------------------------------------ exports */

LOOM_API char *loom__in;        /* input buffer from loom_alloc (one spare byte for a NUL) */
LOOM_API size_t loom__in_cap;
LOOM_API loom_output loom__out; /* handler output; valid until the next call */

/* realloc semantics: on failure (0) the previous buffer stays valid. */
LOOM_API uint32_t loom__alloc(uint32_t n) {
    char *p;
    if (loom__in && n <= loom__in_cap) return (uint32_t)(uintptr_t)loom__in;
    if (!(p = realloc(loom__in, (size_t)n + 1))) return 0;
    loom__in = p, loom__in_cap = n;
    return (uint32_t)(uintptr_t)p;
}

/* i64 result: output pointer in bits 0-31, length in bits 32-62, bit 63 = error. */
LOOM_API int64_t loom__result(const char *p, size_t n, int error) {
    uint64_t r = (uint64_t)(n & 0x7FFFFFFF) << 32 | (uint32_t)(uintptr_t)p;
    return (int64_t)(error ? r | 1ULL << 63 : r);
}

LOOM_API int64_t loom__run(int (*handler)(loom_input *, loom_output *), uint32_t ptr,
                           uint32_t len) {
    static const char oom[] =
        "{\"message\":\"out of memory\",\"retryable\":false,\"code\":\"memory_limit\"}";
    loom_output *o = &loom__out;
    loom_input in = {(const char *)(uintptr_t)ptr, len};
    if (in.data == loom__in && len <= loom__in_cap) loom__in[len] = 0;
    o->len = 0, o->ext = NULL, o->comma = o->oom = o->failed = loom__nomem = 0;
    if (handler(&in, o) != 0 && !o->failed) loom_fail(o, "activity failed", 0);
    if (loom__nomem) return loom__result(oom, sizeof oom - 1, 1);
    if (o->ext) return loom__result(o->ext, o->ext_len, o->failed);
    return loom__result(o->buf, o->len, o->failed);
}

/* Defines the exports around `int handler(loom_input *in, loom_output *out)`: return 0 for
 * success (the output is what was written), non-zero for an error (loom_fail's, or a
 * generic non-retryable "activity failed"). */
#define LOOM_ACTIVITY(handler)                                                            \
    __attribute__((export_name("loom_alloc"))) uint32_t loom_alloc(uint32_t n) {           \
        return loom__alloc(n);                                                            \
    }                                                                                     \
    __attribute__((export_name("loom_run"))) int64_t loom_run(uint32_t ptr, uint32_t len) { \
        return loom__run(handler, ptr, len);                                              \
    }

#endif /* LOOM_H */
