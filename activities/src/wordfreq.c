/* wordfreq (core-v1): {"text": str, "top": int?} -> {"total", "unique", "top": [{word, count}]}.
 * Words are maximal runs of ASCII letters, digits and apostrophes, lowercased; the top list
 * is sorted by count (descending), then word (ascending, bytewise). */
#include "loom.h"

typedef struct {
    const char *word; /* points into the lowercased text */
    uint32_t len, count;
} entry;

static int is_word(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '\'';
}

static int by_count_then_word(const void *pa, const void *pb) {
    const entry *a = pa, *b = pb;
    uint32_t n = a->len < b->len ? a->len : b->len;
    int c;
    if (a->count != b->count) return a->count > b->count ? -1 : 1;
    if ((c = memcmp(a->word, b->word, n)) != 0) return c;
    return a->len < b->len ? -1 : a->len > b->len;
}

static uint32_t hash(const char *s, uint32_t n) { /* FNV-1a */
    uint32_t h = 2166136261u;
    while (n--) h = (h ^ (unsigned char)*s++) * 16777619u;
    return h;
}

/* Open addressing; returns 0, or -1 when out of memory. */
static int count_word(entry **tab, uint32_t *cap, uint32_t *used, const char *w, uint32_t n) {
    uint32_t i, mask = *cap - 1;
    for (i = hash(w, n) & mask; (*tab)[i].word; i = (i + 1) & mask)
        if ((*tab)[i].len == n && memcmp((*tab)[i].word, w, n) == 0) return (*tab)[i].count++, 0;
    (*tab)[i] = (entry){w, n, 1};
    if (++*used * 2 > *cap) { /* keep the load factor below 1/2 */
        entry *old = *tab, *grown = calloc(*cap * 2, sizeof(entry));
        if (!grown) return -1;
        for (uint32_t j = 0; j < *cap; j++) {
            if (!old[j].word) continue;
            for (i = hash(old[j].word, old[j].len) & (*cap * 2 - 1); grown[i].word;)
                i = (i + 1) & (*cap * 2 - 1);
            grown[i] = old[j];
        }
        free(old);
        *tab = grown, *cap *= 2;
    }
    return 0;
}

static int handle(loom_input *in, loom_output *out) {
    size_t n, i = 0;
    int64_t top = 10, total = 0;
    uint32_t cap = 1024, used = 0, k = 0;
    char *text = loom_json_string(in->data, in->len, "text", &n);
    entry *tab;
    int rc = 0;

    if (!text) return loom_fail_code(out, "input_invalid", "\"text\" must be a string", 0);
    if (loom_json_find(in->data, in->len, "top", NULL) &&
        (!loom_json_int(in->data, in->len, "top", &top) || top < 1)) {
        free(text);
        return loom_fail_code(out, "input_invalid", "\"top\" must be an integer >= 1", 0);
    }
    if (!(tab = calloc(cap, sizeof(entry)))) {
        free(text);
        return loom_fail_code(out, "memory_limit", "out of memory", 0);
    }

    for (size_t j = 0; j < n; j++)
        if (text[j] >= 'A' && text[j] <= 'Z') text[j] = (char)(text[j] + 32);
    while (i < n && rc == 0) {
        size_t start;
        while (i < n && !is_word((unsigned char)text[i])) i++;
        for (start = i; i < n && is_word((unsigned char)text[i]); i++) continue;
        if (i > start)
            total++, rc = count_word(&tab, &cap, &used, text + start, (uint32_t)(i - start));
    }
    if (rc != 0) {
        free(tab), free(text);
        return loom_fail_code(out, "memory_limit", "out of memory", 0);
    }

    for (uint32_t j = 0; j < cap; j++) /* compact the entries to the front, then sort */
        if (tab[j].word) tab[k++] = tab[j];
    qsort(tab, k, sizeof(entry), by_count_then_word);

    loom_begin_object(out);
    loom_key(out, "total"), loom_int(out, total);
    loom_key(out, "unique"), loom_int(out, k);
    loom_key(out, "top"), loom_begin_array(out);
    for (uint32_t j = 0; j < k && j < top; j++) {
        loom_begin_object(out);
        loom_key(out, "word"), loom_string(out, tab[j].word, tab[j].len);
        loom_key(out, "count"), loom_int(out, tab[j].count);
        loom_end_object(out);
    }
    loom_end_array(out);
    loom_end_object(out);
    free(tab), free(text);
    return 0;
}

LOOM_ACTIVITY(handle)
