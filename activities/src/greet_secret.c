/* greet_secret (core-v1): {"name": str} -> {"message", "token_length", "token_prefix"}.
 * Reads the secret GREETING_TOKEN through the host; a missing secret is a non-retryable
 * error. The token itself never leaves the activity: only its length and first 3 chars. */
#include "loom.h"

/* Byte length of the first `chars` UTF-8 characters of s (continuation bytes skipped). */
static size_t utf8_prefix(const char *s, size_t n, size_t chars) {
    size_t i = 0;
    while (i < n && chars > 0) {
        i++;
        while (i < n && ((unsigned char)s[i] & 0xC0) == 0x80) i++;
        chars--;
    }
    return i;
}

static int handle(loom_input *in, loom_output *out) {
    size_t name_len, token_len, msg_len, chars = 0;
    char *name = loom_json_string(in->data, in->len, "name", &name_len);
    char *token, *msg;

    if (!name) return loom_fail_code(out, "input_invalid", "\"name\" must be a string", 0);
    if (!(token = loom_secret("GREETING_TOKEN", &token_len))) {
        free(name);
        return loom_fail_code(out, "secret_missing", "secret GREETING_TOKEN is not set", 0);
    }
    for (size_t i = 0; i < token_len; i++) chars += ((unsigned char)token[i] & 0xC0) != 0x80;
    msg_len = name_len + 8;
    if (!(msg = malloc(msg_len))) {
        free(name), free(token);
        return loom_fail_code(out, "memory_limit", "out of memory", 0);
    }
    memcpy(msg, "Hello, ", 7), memcpy(msg + 7, name, name_len), msg[msg_len - 1] = '!';
    loom_log("info", "greet_secret: greeting");

    loom_begin_object(out);
    loom_key(out, "message"), loom_string(out, msg, msg_len);
    loom_key(out, "token_length"), loom_int(out, (int64_t)chars);
    loom_key(out, "token_prefix"), loom_string(out, token, utf8_prefix(token, token_len, 3));
    loom_end_object(out);
    free(name), free(token), free(msg);
    return 0;
}

LOOM_ACTIVITY(handle)
