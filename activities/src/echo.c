/* echo (core-v1): returns its input unchanged. The output points at the input buffer,
 * so a call costs no copy and no allocation. */
#include "loom.h"

static int handle(loom_input *in, loom_output *out) {
    loom_set_output(out, in->data, in->len);
    return 0;
}

LOOM_ACTIVITY(handle)
