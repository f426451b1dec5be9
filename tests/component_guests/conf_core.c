/* conf_core (core-v1): the conformance guest (see conf_ops.h). */
#include "conf_ops.h"

LOOM_ACTIVITY(conf_ops)
