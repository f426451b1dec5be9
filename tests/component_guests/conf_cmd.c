/* conf_cmd (wasi-command): the conformance guest (see conf_ops.h) as a WASI program:
 * JSON on stdin, JSON on stdout; an error goes to stderr with exit code 1. */
#include <stdio.h>

#include "conf_ops.h"

int main(void) {
    size_t len = 0, cap = 4096, n;
    char *buf = malloc(cap);
    loom_output out = {0};
    while (buf && (n = fread(buf + len, 1, cap - len - 1, stdin)) > 0)
        if ((len += n) == cap - 1) buf = realloc(buf, cap *= 2);
    if (!buf) return 2;
    buf[len] = 0;
    loom_input in = {buf, len};
    int rc = conf_ops(&in, &out);
    const char *data = out.ext ? out.ext : out.buf;
    size_t size = out.ext ? out.ext_len : out.len;
    fwrite(data, 1, size, rc || out.failed ? stderr : stdout);
    return rc || out.failed ? 1 : 0;
}
