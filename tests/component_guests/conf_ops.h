/* The conformance guest's operations, shared by conf_core.c (core-v1) and conf_cmd.c
 * (wasi-command); conf_py.py and conf_js.js implement the same ones. */
#include "loom.h"

static volatile unsigned long spin;
static char *volatile heap_chain; /* keeps every block reachable: malloc is not elided */

/* {"url", "method"?="GET", "headers"?: {...}, "body"?: str} -> {"status", "body"} through
 * the host's http call; a request the host answers ok:false (network trouble, its deadline)
 * becomes a retryable error carrying the host's code and message. */
static int conf_http(loom_input *in, loom_output *out) {
    char *url = loom_json_string(in->data, in->len, "url", NULL);
    char *method = loom_json_string(in->data, in->len, "method", NULL);
    size_t body_len = 0, headers_len = 0;
    char *body = loom_json_string(in->data, in->len, "body", &body_len);
    const char *raw_headers = loom_json_find(in->data, in->len, "headers", &headers_len);
    char *headers = raw_headers ? strndup(raw_headers, headers_len) : NULL;
    loom_http_response r;
    int rc = 0;
    if (!url) {
        rc = loom_fail_code(out, "bad_input", "\"url\" must be a string", 0);
    } else if (loom_http(method ? method : "GET", url, headers, body, body_len, &r) == 0) {
        loom_begin_object(out);
        loom_key(out, "status"), loom_int(out, r.status);
        loom_key(out, "body"), loom_string(out, r.body ? r.body : "", r.body_len);
        loom_end_object(out);
    } else {
        rc = loom_fail_code(out, r.error_code ? r.error_code : "host_call_failed",
                            r.error ? r.error : "the http host call failed", 1);
    }
    if (url) loom_http_free(&r);
    free(url), free(method), free(body), free(headers);
    return rc;
}

static int conf_ops(loom_input *in, loom_output *out) {
    char *op = loom_json_string(in->data, in->len, "op", NULL);
    int rc = 0;
    if (!op) return loom_fail_code(out, "bad_op", "\"op\" must be a string", 0);
    if (strcmp(op, "echo") == 0) {
        loom_set_output(out, in->data, in->len);
    } else if (strcmp(op, "loop") == 0) {
        for (;;) spin++;
    } else if (strcmp(op, "grow") == 0) {
        for (;;) {
            char *p = malloc(32 * 1024);
            if (!p) __builtin_trap();
            memset(p, 1, 32 * 1024);
            *(char **)p = heap_chain;
            heap_chain = p;
        }
    } else if (strcmp(op, "output") == 0) {
        int64_t size = 0;
        loom_json_int(in->data, in->len, "size", &size);
        char *data = malloc((size_t)size + 1);
        if (!data) return loom_fail_code(out, "memory_limit", "out of memory", 0);
        memset(data, 'x', (size_t)size);
        loom_begin_object(out);
        loom_key(out, "data"), loom_string(out, data, (size_t)size);
        loom_end_object(out);
        free(data);
    } else if (strcmp(op, "secret") == 0 || strcmp(op, "env") == 0) {
        char *name = loom_json_string(in->data, in->len, "name", NULL);
        size_t n = 0;
        char *value = name ? (op[0] == 's' ? loom_secret(name, &n) : loom_env(name, &n)) : NULL;
        loom_begin_object(out);
        loom_key(out, "value");
        if (value) loom_string(out, value, n); else loom_null(out);
        loom_end_object(out);
        free(name), free(value);
    } else if (strcmp(op, "log") == 0) {
        loom_log("info", "hello from c");
        loom_begin_object(out), loom_end_object(out);
    } else if (strcmp(op, "http") == 0) {
        rc = conf_http(in, out);
    } else if (strcmp(op, "fail") == 0) {
        rc = loom_fail_code(out, "busy", "busy, try again", 1);
    } else {
        rc = loom_fail_code(out, "bad_op", "unknown op", 0);
    }
    free(op);
    return rc;
}
