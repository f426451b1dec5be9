/* price_order (core-v1): {"items": [{"sku", "qty", "unit_cents"}], "discount_pct"?: int = 0}
 * -> {"subtotal_cents", "discount_cents", "total_cents", "lines"}.
 * subtotal = sum of qty * unit_cents, discount = floor(subtotal * discount_pct / 100),
 * total = subtotal - discount, lines = number of items. Every amount must stay at most
 * 2^53-1 (exact as a JSON number anywhere); otherwise, or if an item is malformed, the call
 * fails with the non-retryable code input_invalid naming the offending item. */
#include "loom.h"

#define MAX_SAFE ((int64_t)9007199254740991) /* 2^53 - 1 */
#define MAX_ITEMS 100

static const char *ws(const char *p, const char *e) {
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

/* p at '"': the position after the closing quote, or NULL. */
static const char *skip_string(const char *p, const char *e) {
    for (p++; p < e; p++)
        if (*p == '\\') {
            if (++p >= e) return NULL;
        } else if (*p == '"') {
            return p + 1;
        }
    return NULL;
}

/* p at '{': the position after the matching '}', or NULL. */
static const char *skip_object(const char *p, const char *e) {
    int depth = 0;
    while (p < e) {
        if (*p == '"') {
            if (!(p = skip_string(p, e))) return NULL;
            continue;
        }
        if (*p == '{' || *p == '[') depth++;
        else if ((*p == '}' || *p == ']') && --depth == 0) return p + 1;
        p++;
    }
    return NULL;
}

/* Fails with input_invalid: "items[<i>]<what>". */
static int fail_item(loom_output *out, unsigned i, const char *what) {
    char msg[128], digits[12], *d = digits + sizeof digits;
    size_t n, w = strlen(what);
    *--d = 0;
    do *--d = (char)('0' + i % 10); while (i /= 10);
    n = strlen(d);
    if (6 + n + 1 + w + 1 > sizeof msg) return loom_fail_code(out, "input_invalid", what, 0);
    memcpy(msg, "items[", 6), memcpy(msg + 6, d, n), msg[6 + n] = ']';
    memcpy(msg + 7 + n, what, w + 1);
    return loom_fail_code(out, "input_invalid", msg, 0);
}

static int handle(loom_input *in, loom_output *out) {
    int64_t pct = 0, subtotal = 0, discount;
    unsigned lines = 0;
    size_t an;
    const char *p = loom_json_find(in->data, in->len, "items", &an), *e;

    if (loom_json_find(in->data, in->len, "discount_pct", NULL) &&
        (!loom_json_int(in->data, in->len, "discount_pct", &pct) || pct < 0 || pct > 100))
        return loom_fail_code(out, "input_invalid",
                              "\"discount_pct\" must be an integer from 0 to 100", 0);
    if (!p || *p != '[')
        return loom_fail_code(out, "input_invalid", "\"items\" must be an array", 0);
    e = p + an;
    p = ws(p + 1, e);
    while (p < e && *p != ']') {
        const char *obj = p, *v;
        size_t on, vn;
        int64_t qty, unit;
        if (lines == MAX_ITEMS)
            return loom_fail_code(out, "input_invalid", "\"items\" has more than 100 items", 0);
        if (*p != '{' || !(p = skip_object(p, e))) return fail_item(out, lines, " must be an object");
        on = (size_t)(p - obj);
        v = loom_json_find(obj, on, "sku", &vn);
        if (!v || *v != '"' || vn < 3) return fail_item(out, lines, ".sku must be a non-empty string");
        if (!loom_json_int(obj, on, "qty", &qty) || qty < 1 || qty > MAX_SAFE)
            return fail_item(out, lines, ".qty must be an integer from 1 to 2^53-1");
        if (!loom_json_int(obj, on, "unit_cents", &unit) || unit < 0 || unit > MAX_SAFE)
            return fail_item(out, lines, ".unit_cents must be an integer from 0 to 2^53-1");
        if (unit && qty > MAX_SAFE / unit)
            return fail_item(out, lines, ": qty * unit_cents exceeds 2^53-1 cents");
        if (qty * unit > MAX_SAFE - subtotal)
            return fail_item(out, lines, ": the subtotal exceeds 2^53-1 cents");
        subtotal += qty * unit;
        lines++;
        p = ws(p, e);
        if (p < e && *p == ',') p = ws(p + 1, e);
        else if (p >= e || *p != ']')
            return loom_fail_code(out, "input_invalid", "\"items\" must be an array", 0);
    }
    if (lines == 0)
        return loom_fail_code(out, "input_invalid", "\"items\" must have at least one item", 0);

    discount = subtotal * pct / 100; /* < 2^53 * 100 < 2^60: no overflow; both >= 0: floor */
    loom_begin_object(out);
    loom_key(out, "subtotal_cents"), loom_int(out, subtotal);
    loom_key(out, "discount_cents"), loom_int(out, discount);
    loom_key(out, "total_cents"), loom_int(out, subtotal - discount);
    loom_key(out, "lines"), loom_int(out, lines);
    loom_end_object(out);
    return 0;
}

LOOM_ACTIVITY(handle)
