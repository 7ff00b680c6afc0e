/* cli_tok: `moert tokenize` and `moert detokenize` (stdin -> stdout). */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "cli_common.h"
#include "../tok.h"

static const char TOKENIZE_USAGE[] =
    "usage: moert tokenize TOKENIZER_JSON [--bench [--repeat N]]\n"
    "\n"
    "Reads UTF-8 text from stdin (all of it, bytes as-is) and prints its token ids as a JSON\n"
    "array on one line.  No special tokens are added; special tokens written in the text\n"
    "(<|im_start|>, ...) are recognised.  Invalid UTF-8 is an error naming the byte offset.\n"
    "\n"
    "  --bench       instead of the ids, print a JSON object with the load time, the encode\n"
    "                speed (MB/s, 1 MB = 10^6 bytes) and the token count\n"
    "  --repeat N    encode the input N times in the benchmark (default 3)\n";

static const char DETOKENIZE_USAGE[] =
    "usage: moert detokenize TOKENIZER_JSON\n"
    "\n"
    "Reads token ids from stdin, either as a JSON array ([9707, 11]) or separated by commas\n"
    "and/or whitespace (9707 11), and writes the decoded bytes to stdout exactly: no newline\n"
    "is added.  Special tokens decode to their text.  Unknown ids are errors.\n";

static bool want_help(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
            return true;
    return false;
}

static int read_all(FILE *f, char **out, size_t *len, moert_err *err)
{
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap);
    if (!b)
        return err_set(err, MOERT_ENOMEM, "stdin: out of memory");
    for (;;) {
        if (n == cap) {
            char *nb = realloc(b, cap * 2);
            if (!nb) {
                free(b);
                return err_set(err, MOERT_ENOMEM, "stdin: out of memory after %zu bytes", n);
            }
            b = nb;
            cap *= 2;
        }
        size_t r = fread(b + n, 1, cap - n, f);
        n += r;
        if (r == 0)
            break;
    }
    if (ferror(f)) {
        free(b);
        return err_set(err, MOERT_EIO, "stdin: read failed: %s", strerror(errno));
    }
    *out = b;
    *len = n;
    return MOERT_OK;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int cli_tokenize(int argc, char **argv, moert_err *err)
{
    if (want_help(argc, argv)) {
        fputs(TOKENIZE_USAGE, stdout);
        return MOERT_OK;
    }
    const char *path = NULL;
    bool bench = false;
    long repeat = 3;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--bench"))
            bench = true;
        else if (!strcmp(argv[i], "--repeat")) {
            int64_t r;
            if (i + 1 >= argc)
                return err_set(err, MOERT_EUSAGE, "--repeat needs a value");
            if (cli_parse_i64("--repeat", argv[++i], 1, 100000, &r, err))
                return MOERT_EUSAGE;
            repeat = (long)r;
        } else if (argv[i][0] == '-' && argv[i][1])
            return err_set(err, MOERT_EUSAGE, "unknown option '%s'\n%s", argv[i], TOKENIZE_USAGE);
        else if (!path)
            path = argv[i];
        else
            return err_set(err, MOERT_EUSAGE, "unexpected argument '%s'\n%s", argv[i], TOKENIZE_USAGE);
    }
    if (!path)
        return err_set(err, MOERT_EUSAGE, "missing TOKENIZER_JSON\n%s", TOKENIZE_USAGE);
    char *text = NULL;
    size_t len = 0;
    int st = read_all(stdin, &text, &len, err);
    if (st)
        return st;
    tok_tokenizer *t = NULL;
    double t0 = now_s();
    st = tok_load(path, &t, err);
    double load_s = now_s() - t0;
    if (st) {
        free(text);
        return st;
    }
    size_t cap = 3 * len + 1; /* enough for any input (tok.h) */
    int32_t *ids = malloc(cap * sizeof *ids);
    size_t n = 0;
    if (!ids) {
        st = err_set(err, MOERT_ENOMEM, "out of memory for %zu ids", cap);
        goto done;
    }
    double first_s = 0, total_s = 0;
    for (long r = 0; r < (bench ? repeat : 1); r++) {
        double e0 = now_s();
        st = tok_encode(t, text, len, ids, cap, &n, err);
        double dt = now_s() - e0;
        if (st) {
            err_prefix(err, "stdin");
            goto done;
        }
        if (r == 0)
            first_s = dt;
        total_s += dt;
    }
    if (bench) {
        double mb = (double)len * 1e-6;
        printf("{\"load_s\": %.4f, \"bytes\": %zu, \"repeat\": %ld, \"encode_s\": %.4f, "
               "\"mb_per_s\": %.2f, \"first_mb_per_s\": %.2f, \"tokens\": %zu}\n",
               load_s, len, repeat, total_s, total_s > 0 ? mb * (double)repeat / total_s : 0.0,
               first_s > 0 ? mb / first_s : 0.0, n);
    } else {
        fputc('[', stdout);
        for (size_t i = 0; i < n; i++)
            printf(i ? ",%d" : "%d", ids[i]);
        fputs("]\n", stdout);
    }
    if (fflush(stdout) != 0)
        st = err_set(err, MOERT_EIO, "stdout: write failed: %s", strerror(errno));
done:
    free(ids);
    free(text);
    tok_free(t);
    return st;
}

int cli_detokenize(int argc, char **argv, moert_err *err)
{
    if (want_help(argc, argv)) {
        fputs(DETOKENIZE_USAGE, stdout);
        return MOERT_OK;
    }
    if (argc != 2 || (argv[1][0] == '-' && argv[1][1]))
        return err_set(err, MOERT_EUSAGE, "%s\n%s", argc < 2 ? "missing TOKENIZER_JSON" : "unexpected arguments",
                       DETOKENIZE_USAGE);
    char *in = NULL;
    size_t len = 0;
    int st = read_all(stdin, &in, &len, err);
    if (st)
        return st;
    int32_t *ids = NULL;
    size_t n = 0;
    st = cli_read_ids("stdin", in, len, &ids, &n, err);
    free(in);
    if (st)
        return st;
    tok_tokenizer *t = NULL;
    char *out = NULL;
    if ((st = tok_load(argv[1], &t, err)))
        goto done;
    size_t need = 0;
    st = tok_decode(t, ids, n, NULL, 0, &need, err);
    if (st && st != MOERT_EUSAGE)
        goto done;
    err_clear(err);
    out = malloc(need ? need : 1);
    if (!out) {
        st = err_set(err, MOERT_ENOMEM, "out of memory for %zu bytes", need);
        goto done;
    }
    if ((st = tok_decode(t, ids, n, out, need, &need, err)))
        goto done;
    if (fwrite(out, 1, need, stdout) != need || fflush(stdout) != 0)
        st = err_set(err, MOERT_EIO, "stdout: write failed: %s", strerror(errno));
done:
    free(out);
    free(ids);
    tok_free(t);
    return st;
}
