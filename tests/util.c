#include "util.h"

#include "../runtime/ggufmap.h"
#include "../runtime/synth.h"

#include <jansson.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_SKIPS 256
static char skips[MAX_SKIPS][320];
static int n_skips;

static const char *shared_reference(void)
{
    static char dir[1024];
    const char *env = getenv("MOERT_SHARED_REFERENCE");
    snprintf(dir, sizeof dir, "%s", env && *env ? env : "../shared/reference");
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return NULL;
    return dir;
}

/* A partial ../shared (one folder missing) skips the tests that read it instead of failing
 * them on a missing file. */
const char *test_shared_parts(const char *parts)
{
    const char *dir = shared_reference();
    if (!dir)
        return NULL;
    char part[256], path[1400];
    for (const char *p = parts; *p;) {
        size_t n = strcspn(p, " ");
        if (n > 0 && n < sizeof part) {
            memcpy(part, p, n);
            part[n] = '\0';
            snprintf(path, sizeof path, "%s/%s", dir, part);
            struct stat st;
            if (stat(path, &st) != 0)
                return NULL;
        }
        p += n;
        p += strspn(p, " ");
    }
    return dir;
}

const char *test_path(char *buf, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, cap, fmt, ap);
    va_end(ap);
    return buf;
}

void test_skip(const char *test, const char *reason)
{
    printf("\n    SKIP %s: %s\n", test, reason);
    if (n_skips < MAX_SKIPS)
        snprintf(skips[n_skips++], sizeof skips[0], "%s: %s", test, reason);
}

void test_print_skips(void)
{
    if (!n_skips)
        return;
    printf("\n%d test(s) SKIPPED (nothing asserted):\n", n_skips);
    for (int i = 0; i < n_skips; i++)
        printf("  SKIP %s\n", skips[i]);
}

bool test_sanitized(void)
{
    const char *v = getenv("MOERT_TEST_SANITIZED");
    return v && *v && strcmp(v, "0") != 0;
}

static void slurp(const char *path, char *buf, size_t cap)
{
    if (!buf || !cap)
        return;
    buf[0] = '\0';
    FILE *f = fopen(path, "rb");
    if (!f)
        return;
    size_t n = fread(buf, 1, cap - 1, f);
    buf[n] = '\0';
    fclose(f);
}

const char *test_tmpdir(void)
{
    static char dir[256];
    if (!dir[0]) {
        mkdir("build", 0755);
        mkdir("build/test-tmp", 0755);
        snprintf(dir, sizeof dir, "build/test-tmp/%ld", (long)getpid());
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0) { /* best effort */ }
        mkdir(dir, 0755);
    }
    return dir;
}

void test_tmpdir_remove(void)
{
    char cmd[320];
    snprintf(cmd, sizeof cmd, "rm -rf 'build/test-tmp/%ld'", (long)getpid());
    if (system(cmd) != 0) { /* best effort */ }
}

int test_run_cmd(const char *cmd, char *out, size_t out_cap, char *errbuf, size_t err_cap)
{
    char o[512], e[512], full[8192];
    snprintf(o, sizeof o, "%s/cmd.out", test_tmpdir());
    snprintf(e, sizeof e, "%s/cmd.err", test_tmpdir());
    snprintf(full, sizeof full, "( %s ) >'%s' 2>'%s'", cmd, o, e);
    int st = system(full);
    slurp(o, out, out_cap);
    slurp(e, errbuf, err_cap);
    if (st == -1 || !WIFEXITED(st))
        return -1;
    return WEXITSTATUS(st);
}

int test_run_cmdf(char *out, size_t out_cap, char *errbuf, size_t err_cap, const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    return test_run_cmd(cmd, out, out_cap, errbuf, err_cap);
}

bool test_reference_prompt(const char *dir, char *ids, size_t cap)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/reference.json", dir);
    json_error_t je;
    json_t *r = json_load_file(path, 0, &je);
    if (!r)
        return false;
    size_t i, len = 0;
    json_t *x;
    ids[0] = '\0';
    json_array_foreach(json_object_get(r, "prompt_ids"), i, x)
        len += (size_t)snprintf(ids + len, len < cap ? cap - len : 0, "%s%lld", i ? "," : "",
                                (long long)json_integer_value(x));
    json_decref(r);
    return len > 0 && len < cap;
}

/* A small all-routed Qwen3-MoE whose rows suit every block type: hidden 256 (K-quant
 * blocks), expert rows of 384 (not a multiple of 256: the K mixes fall back there, as they
 * do on bench-cpu's expert down rows). */
void test_gguf_topology(cfg_topology *t)
{
    memset(t, 0, sizeof *t);
    t->vocab_size = 512;
    t->hidden_size = 256;
    t->num_hidden_layers = 2;
    t->num_attention_heads = 4;
    t->num_key_value_heads = 2;
    t->head_dim = 64;
    t->num_experts = 4;
    t->num_experts_per_tok = 2;
    t->moe_intermediate_size = 384;
    t->decoder_sparse_step = 1;
    t->norm_topk_prob = true;
    t->rope_theta = 1e6;
    t->rms_norm_eps = 1e-6;
    t->max_position_embeddings = 256;
}

static const char *synth_gguf(const char *mix, bool tied)
{
    static char path[12][512];
    static char keys[12][24];
    char key[24];
    snprintf(key, sizeof key, "%s%s", mix, tied ? "-tied" : "");
    for (int i = 0; i < 12; i++)
        if (!strcmp(keys[i], key))
            return path[i];
    int slot = -1;
    for (int i = 0; i < 12 && slot < 0; i++)
        if (!keys[i][0])
            slot = i;
    if (slot < 0)
        return NULL;
    cfg_topology t;
    test_gguf_topology(&t);
    t.tie_word_embeddings = tied;
    st_set *img = NULL;
    moert_err err = {0};
    snprintf(path[slot], sizeof path[slot], "%s/synth-%s.gguf", test_tmpdir(), key);
    int st = synth_open_image(&t, 77, ST_F32, &img, &err);
    if (!st)
        st = ggufmap_write(path[slot], &t, img, mix, &err);
    st_close(img);
    if (st) {
        fprintf(stderr, "\n    test_synth_gguf(%s): %s\n", key, err.msg);
        return NULL;
    }
    snprintf(keys[slot], sizeof keys[slot], "%s", key);
    return path[slot];
}

const char *test_synth_gguf(const char *mix)
{
    return synth_gguf(mix, false);
}

const char *test_synth_gguf_tied(const char *mix)
{
    return synth_gguf(mix, true);
}

long test_st_offset(const char *file, const char *name)
{
    FILE *f = fopen(file, "rb");
    if (!f)
        return -1;
    uint64_t n = 0;
    long off = -1;
    if (fread(&n, 8, 1, f) == 1 && n <= (1u << 26)) {
        char *hdr = calloc(1, n + 1);
        if (hdr && fread(hdr, 1, n, f) == n) {
            json_error_t je;
            json_t *h = json_loads(hdr, 0, &je);
            json_t *offs = json_object_get(json_object_get(h, name), "data_offsets");
            if (offs)
                off = (long)(8 + n + (uint64_t)json_integer_value(json_array_get(offs, 0)));
            json_decref(h);
        }
        free(hdr);
    }
    fclose(f);
    return off;
}
