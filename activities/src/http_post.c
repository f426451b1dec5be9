/* http_post (core-v1): {"url": str, "body"?: any = null, "method"?: "POST"|"PUT"|"DELETE"}
 * -> {"status", "body"}.
 * Sends input.body as compact JSON text (Content-Type: application/json) through the host's
 * "http" op; the host adds the invocation's Idempotency-Key, which stays the same across
 * retries. The response body is embedded as a JSON value when its Content-Type contains
 * "json" and it is JSON the host can read back, else returned as a string.
 * Errors: host failure (network, timeout) -> retryable, the host's code (a response over
 * the capability's max_response_bytes -> non-retryable response_too_large);
 * 5xx -> retryable upstream_5xx; 4xx -> non-retryable upstream_4xx; any other status
 * outside 200-399 -> non-retryable upstream_status. Logs one line per request. */
#include "loom.h"

/* The output adds one level; pydantic-core, which parses the output, allows ~200. */
#define MAX_DEPTH 128

static int is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
static const char *ws(const char *p, const char *e) {
    while (p < e && is_ws(*p)) p++;
    return p;
}

/* The JSON text (s, n) without the whitespace between tokens, malloc'd (length in *out_n). */
static char *compact(const char *s, size_t n, size_t *out_n) {
    char *d = malloc(n + 1);
    size_t o = 0;
    int in_string = 0;
    if (!d) return NULL;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (in_string) {
            if (c == '\\' && i + 1 < n) d[o++] = c, c = s[++i];
            else if (c == '"') in_string = 0;
        } else if (is_ws(c)) {
            continue;
        } else if (c == '"') {
            in_string = 1;
        }
        d[o++] = c;
    }
    d[o] = 0;
    *out_n = o;
    return d;
}

static int32_t hex4(const char *p, const char *e) {
    int32_t v = 0;
    if (e - p < 4) return -1;
    for (int i = 0; i < 4; i++) {
        int c = p[i], l = c | 32;
        int d = (c >= '0' && c <= '9') ? c - '0' : (l >= 'a' && l <= 'f') ? l - 'a' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

/* p at '"': returns the position after the closing quote, or NULL if the string is not
 * valid JSON (raw control character, bad escape, unpaired surrogate escape). */
static const char *scan_string(const char *p, const char *e) {
    for (p++; p < e; p++) {
        unsigned char c = (unsigned char)*p;
        int32_t u, lo;
        if (c == '"') return p + 1;
        if (c < 0x20) return NULL;
        if (c != '\\') continue;
        if (++p >= e) return NULL;
        if (*p != 'u') {
            if (!memchr("\"\\/bfnrt", *p, 8)) return NULL;
            continue;
        }
        if ((u = hex4(p + 1, e)) < 0) return NULL;
        p += 4;
        if (u >= 0xDC00 && u < 0xE000) return NULL;
        if (u >= 0xD800 && u < 0xDC00) {
            if (e - p < 7 || p[1] != '\\' || p[2] != 'u') return NULL;
            if ((lo = hex4(p + 3, e)) < 0xDC00 || lo >= 0xE000) return NULL;
            p += 6;
        }
    }
    return NULL;
}

/* A JSON number at p: returns the position after it, or NULL. A number with a fraction or
 * an exponent is a double for the host, so it must be below 1e308 in magnitude (larger
 * ones would become inf); plain integers may have any number of digits. */
static const char *scan_number(const char *p, const char *e) {
    int64_t int_digits = 0, lead_zeros = 0, exp = 0, mag;
    int is_float = 0, nonzero_frac = 0, neg_exp = 0;
    if (p < e && *p == '-') p++;
    if (p >= e || *p < '0' || *p > '9') return NULL;
    if (*p == '0') p++;
    else
        while (p < e && *p >= '0' && *p <= '9') p++, int_digits++;
    if (p < e && *p == '.') {
        is_float = 1;
        if (++p >= e || *p < '0' || *p > '9') return NULL;
        for (; p < e && *p >= '0' && *p <= '9'; p++) {
            if (*p != '0') nonzero_frac = 1;
            else if (!nonzero_frac) lead_zeros++;
        }
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        is_float = 1;
        if (++p < e && (*p == '+' || *p == '-')) neg_exp = *p++ == '-';
        if (p >= e || *p < '0' || *p > '9') return NULL;
        for (; p < e && *p >= '0' && *p <= '9'; p++)
            if (exp < 1000000) exp = exp * 10 + (*p - '0');
    }
    if (is_float && (int_digits || nonzero_frac)) {
        /* decimal exponent of the leading significant digit */
        mag = (int_digits ? int_digits - 1 : -(lead_zeros + 1)) + (neg_exp ? -exp : exp);
        if (mag >= 308) return NULL;
    }
    return p;
}

/* 1 if (s, n) is exactly one JSON value (RFC 8259, surrounding whitespace allowed), nested
 * at most MAX_DEPTH deep, that the host's parser accepts and keeps finite (see scan_string,
 * scan_number); anything else is returned as a string instead. */
static int valid_json(const char *s, size_t n) {
    const char *p = s, *e = s + n;
    char close[MAX_DEPTH];
    int depth = 0;
value:
    p = ws(p, e);
    if (p >= e) return 0;
    if (*p == '{' || *p == '[') {
        if (depth == MAX_DEPTH) return 0;
        close[depth++] = *p == '{' ? '}' : ']';
        p = ws(p + 1, e);
        if (p < e && *p == close[depth - 1]) {
            p++, depth--;
            goto after;
        }
        if (close[depth - 1] == '}') goto key;
        goto value;
    }
    if (*p == '"') p = scan_string(p, e);
    else if (e - p >= 4 && memcmp(p, "true", 4) == 0) p += 4;
    else if (e - p >= 5 && memcmp(p, "false", 5) == 0) p += 5;
    else if (e - p >= 4 && memcmp(p, "null", 4) == 0) p += 4;
    else p = scan_number(p, e);
    if (!p) return 0;
after:
    p = ws(p, e);
    if (depth == 0) return p == e;
    if (p < e && *p == ',') {
        p = ws(p + 1, e);
        if (close[depth - 1] == ']') goto value;
        goto key;
    }
    if (p < e && *p == close[depth - 1]) {
        p++, depth--;
        goto after;
    }
    return 0;
key:
    if (p >= e || *p != '"' || !(p = scan_string(p, e))) return 0;
    p = ws(p, e);
    if (p >= e || *p != ':') return 0;
    p++;
    goto value;
}

static int contains_json(const char *s) {
    for (; s && *s; s++)
        if ((s[0] | 32) == 'j' && (s[1] | 32) == 's' && (s[2] | 32) == 'o' && (s[3] | 32) == 'n')
            return 1;
    return 0;
}

/* "upstream returned HTTP <status>" */
static const char *status_message(char *buf, size_t cap, int64_t status) {
    static const char prefix[] = "upstream returned HTTP ";
    char digits[24], *d = digits + sizeof digits;
    uint64_t u = status < 0 ? 0 - (uint64_t)status : (uint64_t)status;
    size_t n;
    *--d = 0;
    do *--d = (char)('0' + u % 10); while (u /= 10);
    if (status < 0) *--d = '-';
    n = strlen(d);
    if (sizeof prefix + n > cap) return "upstream returned an unexpected HTTP status";
    memcpy(buf, prefix, sizeof prefix - 1);
    memcpy(buf + sizeof prefix - 1, d, n + 1);
    return buf;
}

static void log_request(const char *method, const char *url, const loom_http_response *r) {
    loom_output f = {0};
    loom_begin_object(&f);
    loom_key(&f, "method"), loom_cstring(&f, method);
    loom_key(&f, "url"), loom_cstring(&f, url);
    if (r->ok) {
        loom_key(&f, "status"), loom_int(&f, r->status);
    } else {
        loom_key(&f, "status"), loom_null(&f);
        loom_key(&f, "error"), loom_cstring(&f, r->error ? r->error : "http request failed");
    }
    loom_end_object(&f);
    if (!f.oom)
        loom_log_fields(r->ok && r->status >= 200 && r->status < 400 ? "info" : "warning",
                        "http_post: sent", f.buf, f.len);
    free(f.buf);
}

static int handle(loom_input *in, loom_output *out) {
    loom_http_response r;
    char msg[64], *url, *method = NULL, *body, *ctype = NULL;
    const char *m = "POST", *v, *h;
    size_t vn, hn, body_len;
    int rc = 0;

    if (!(url = loom_json_string(in->data, in->len, "url", NULL)))
        return loom_fail_code(out, "input_invalid", "\"url\" must be a string", 0);
    if (loom_json_find(in->data, in->len, "method", NULL)) {
        m = method = loom_json_string(in->data, in->len, "method", NULL);
        if (!m || (strcmp(m, "POST") != 0 && strcmp(m, "PUT") != 0 && strcmp(m, "DELETE") != 0)) {
            free(method), free(url);
            return loom_fail_code(out, "input_invalid",
                                  "\"method\" must be \"POST\", \"PUT\" or \"DELETE\"", 0);
        }
    }
    if (!(v = loom_json_find(in->data, in->len, "body", &vn))) v = "null", vn = 4;
    if (!(body = compact(v, vn, &body_len))) {
        free(method), free(url);
        return loom_fail_code(out, "memory_limit", "out of memory", 0);
    }

    loom_http(m, url, "{\"Content-Type\":\"application/json\"}", body, body_len, &r);
    free(body);
    log_request(m, url, &r);

    if (!r.ok) {
        /* a response that is too large will be too large again: do not retry it */
        int again = !(r.error_code && strcmp(r.error_code, "response_too_large") == 0);
        rc = loom_fail_code(out, r.error_code ? r.error_code : "host_call_failed",
                            r.error ? r.error : "http request failed", again);
    } else if (r.status >= 500 && r.status <= 599) {
        rc = loom_fail_code(out, "upstream_5xx", status_message(msg, sizeof msg, r.status), 1);
    } else if (r.status >= 400 && r.status <= 499) {
        rc = loom_fail_code(out, "upstream_4xx", status_message(msg, sizeof msg, r.status), 0);
    } else if (r.status < 200 || r.status > 399) {
        rc = loom_fail_code(out, "upstream_status", status_message(msg, sizeof msg, r.status), 0);
    } else {
        const char *b = r.body ? r.body : "";
        if ((h = loom_json_find(r.raw, r.raw_len, "headers", &hn)))
            ctype = loom_json_string(h, hn, "content-type", NULL);
        loom_begin_object(out);
        loom_key(out, "status"), loom_int(out, r.status);
        loom_key(out, "body");
        if (contains_json(ctype) && valid_json(b, r.body_len)) {
            const char *s = ws(b, b + r.body_len), *e = b + r.body_len;
            while (e > s && is_ws(e[-1])) e--;
            loom_raw(out, s, (size_t)(e - s));
        } else {
            loom_string(out, b, r.body_len);
        }
        loom_end_object(out);
        free(ctype);
    }
    loom_http_free(&r), free(method), free(url);
    return rc;
}

LOOM_ACTIVITY(handle)
