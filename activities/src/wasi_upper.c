/* wasi_upper (wasi-command): an ordinary WASI program. Reads {"text": str, "fail": bool?}
 * from stdin, prints {"upper": <text with ASCII letters uppercased>, "length": <number of
 * Unicode code points in text>} to stdout. With "fail": true it writes to stderr and exits 3.
 * It uses only stdio plus loom.h's JSON helpers (no host calls, no LOOM_ACTIVITY). */
#include <stdio.h>

#include "loom.h"

int main(void) {
    size_t len = 0, cap = 4096, n, text_len, chars = 0;
    char *in = malloc(cap), *text;
    int fail = 0;
    loom_output upper = {0};

    while (in && (n = fread(in + len, 1, cap - len, stdin)) > 0)
        if ((len += n) == cap) in = realloc(in, cap *= 2);
    if (!in || ferror(stdin)) {
        fputs("upper: cannot read stdin\n", stderr);
        return 2;
    }
    if (loom_json_bool(in, len, "fail", &fail) && fail) {
        fputs("upper: asked to fail\n", stderr);
        return 3;
    }
    if (!(text = loom_json_string(in, len, "text", &text_len))) {
        fputs("upper: input must be an object with a string \"text\"\n", stderr);
        return 2;
    }
    for (size_t i = 0; i < text_len; i++) {
        if (text[i] >= 'a' && text[i] <= 'z') text[i] = (char)(text[i] - 32);
        chars += ((unsigned char)text[i] & 0xC0) != 0x80;
    }
    loom_string(&upper, text, text_len); /* JSON-escapes the result */
    if (upper.oom) {
        fputs("upper: out of memory\n", stderr);
        return 2;
    }
    printf("{\"upper\":%.*s,\"length\":%zu}\n", (int)upper.len, upper.buf, chars);
    free(upper.buf), free(text), free(in);
    return 0;
}
