/* http_fetch (core-v1): {"url": str} -> {"status", "body_bytes", "body_prefix"}.
 * GETs the URL through the host's "http" op (allowlisted in the manifest), logs one line.
 * A network failure is a retryable error carrying the host's message. */
#include "loom.h"

#define PREFIX_BYTES 200

static int handle(loom_input *in, loom_output *out) {
    loom_http_response r;
    loom_output fields = {0};
    char *url = loom_json_string(in->data, in->len, "url", NULL);

    if (!url) return loom_fail_code(out, "input_invalid", "\"url\" must be a string", 0);
    if (loom_http_get(url, "{\"Accept\":\"*/*\"}", &r) != 0) {
        loom_fail_code(out, r.error_code ? r.error_code : "host_call_failed",
                       r.error ? r.error : "http request failed", 1);
        loom_http_free(&r), free(url);
        return 1;
    }

    loom_begin_object(&fields);
    loom_key(&fields, "url"), loom_cstring(&fields, url);
    loom_key(&fields, "status"), loom_int(&fields, r.status);
    loom_key(&fields, "body_bytes"), loom_int(&fields, (int64_t)r.body_len);
    loom_end_object(&fields);
    if (!fields.oom) loom_log_fields("info", "http_fetch: fetched", fields.buf, fields.len);
    free(fields.buf);

    /* Valid UTF-8 is kept; bytes that are not (e.g. a character cut at the 200-byte
     * boundary) are written as \u00XX by loom_string, so the output is always valid JSON. */
    loom_begin_object(out);
    loom_key(out, "status"), loom_int(out, r.status);
    loom_key(out, "body_bytes"), loom_int(out, (int64_t)r.body_len);
    loom_key(out, "body_prefix");
    loom_string(out, r.body ? r.body : "", r.body_len < PREFIX_BYTES ? r.body_len : PREFIX_BYTES);
    loom_end_object(out);
    loom_http_free(&r), free(url);
    return 0;
}

LOOM_ACTIVITY(handle)
