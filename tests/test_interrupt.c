/* interrupt: `moert run` stopped by SIGINT / SIGTERM keeps what it recorded (a trace that
 * validates, "interrupted": true, the speed line, exit 130); an unwritable trace path is
 * refused before the first token; `--version`, the manifest and `bench --json` state the
 * same build facts. */
#include <CUnit/CUnit.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../runtime/trace/trace_file.h"
#include "util.h"

#define OUTCAP 65536
static char out[OUTCAP], errb[OUTCAP];

#define sh(...) test_run_cmdf(out, sizeof out, errb, sizeof errb, __VA_ARGS__)

static const char *tmp(const char *name)
{
    static char buf[8][512];
    static int k;
    char *b = buf[k++ % 8];
    snprintf(b, sizeof buf[0], "%s/intr-%s", test_tmpdir(), name);
    return b;
}

/* Starts `moert run` generating far more tokens than it will get to, waits until it has
 * printed `after` generated ids, sends `sig` and returns the exit status (-1: no normal
 * exit, or nothing printed within a minute).  Its stderr goes to errfile. */
static int run_and_signal(const char *trace, const char *errfile, int sig, int after)
{
    int pfd[2];
    if (pipe(pfd) != 0)
        return -1;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        dup2(pfd[1], 1);
        int efd = open(errfile, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (efd >= 0)
            dup2(efd, 2);
        close(pfd[0]);
        close(pfd[1]);
        execl("./moert", "./moert", "run", "configs/qwen3moe.yaml", "--tokens", "5,6,7,8", "-n", "4000",
              "--max-seq-len", "4096", "--ignore-eos", "--threads", "2", "--trace", trace, (char *)NULL);
        _exit(127);
    }
    close(pfd[1]);
    int commas = 0;
    bool sent = false;
    char buf[4096];
    struct pollfd p = {.fd = pfd[0], .events = POLLIN};
    for (;;) {
        int r = poll(&p, 1, 60000);
        if (r <= 0) { /* a minute without output: never hang the suite */
            kill(pid, SIGKILL);
            break;
        }
        ssize_t n = read(pfd[0], buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        for (ssize_t i = 0; i < n; i++)
            commas += buf[i] == ',';
        if (!sent && commas >= after) {
            kill(pid, sig);
            sent = true;
        }
    }
    close(pfd[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    return sent && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void slurp(const char *path, char *buf, size_t cap)
{
    buf[0] = '\0';
    FILE *f = fopen(path, "rb");
    if (!f)
        return;
    size_t n = fread(buf, 1, cap - 1, f);
    buf[n] = '\0';
    fclose(f);
}

static void check_interrupted(int sig, const char *name)
{
    const char *trace = tmp(sig == SIGINT ? "int.trace" : "term.trace");
    const char *ef = tmp(sig == SIGINT ? "int.err" : "term.err");
    int rc = run_and_signal(trace, ef, sig, 3);
    slurp(ef, errb, sizeof errb);
    if (rc != 130)
        fprintf(stderr, "\n    %s: exit %d, stderr: %.400s\n", name, rc, errb);
    CU_ASSERT_EQUAL(rc, 130);
    /* the speed line, and what stopped it */
    CU_ASSERT_PTR_NOT_NULL(strstr(errb, "moert: prefill 4 tokens"));
    char want[64];
    snprintf(want, sizeof want, "interrupted by %s after 4 prompt and ", name);
    CU_ASSERT_PTR_NOT_NULL(strstr(errb, want));
    /* the trace of what was recorded: complete, self-consistent, marked */
    trace_file t;
    moert_err err = {0};
    CU_ASSERT_EQUAL_FATAL(trace_file_open(trace, &t, &err), MOERT_OK);
    CU_ASSERT(json_is_true(json_object_get(t.manifest, "interrupted")));
    int64_t n_gen = (int64_t)json_array_size(json_object_get(t.manifest, "generated_ids"));
    CU_ASSERT(n_gen >= 3 && n_gen < 4000);
    /* positions last: one record per step in every ring, the prompt's then each token's */
    for (size_t i = 0; i < t.n_rings; i++) {
        CU_ASSERT_EQUAL(t.rings[i].n, n_gen);
        CU_ASSERT_EQUAL(t.rings[i].drops, 0);
    }
    trace_file_close(&t);
    CU_ASSERT_EQUAL(sh("./moert validate contracts/qwen3moe-trace-v1.yaml %s", trace), 0);
    /* nothing left behind under a temp name */
    CU_ASSERT_EQUAL(sh("ls %s.tmp.* 2>/dev/null | wc -l", trace), 0);
    CU_ASSERT_EQUAL(atoi(out), 0);
}

static void test_sigint(void)
{
    check_interrupted(SIGINT, "SIGINT");
}

static void test_sigterm(void)
{
    check_interrupted(SIGTERM, "SIGTERM");
}

/* A trace path that cannot be written is refused before any token is generated. */
static void test_trace_path_checked_first(void)
{
    CU_ASSERT_EQUAL(sh("./moert run configs/qwen3moe.yaml --tokens 1,2 -n 4 --trace /nonexistent-dir/x.trace"), 2);
    CU_ASSERT_PTR_NOT_NULL(strstr(errb, "--trace: /nonexistent-dir/x.trace: cannot create temp file"));
    CU_ASSERT_EQUAL(out[0], '\0');
    CU_ASSERT_EQUAL(sh("./moert run configs/qwen3moe.yaml --tokens 1,2 -n 4 --trace %s", test_tmpdir()), 2);
    CU_ASSERT_PTR_NOT_NULL(strstr(errb, "exists and is not a regular file"));
    CU_ASSERT_EQUAL(out[0], '\0');
    CU_ASSERT_PTR_NULL(strstr(errb, "moert: prefill"));
}

/* One definition of the build facts: --version's lines are what the manifest and bench
 * --json carry; the kernel family follows MOERT_KERNELS; the commit is git's. */
static void test_version(void)
{
    CU_ASSERT_EQUAL_FATAL(sh("MOERT_KERNELS=scalar ./moert --version"), 0);
    char commit[128] = "", compiler[256] = "", kernels[64] = "", hip[128] = "";
    CU_ASSERT(!strncmp(out, "moert 0.1.0\n", 12));
    const char *p = strstr(out, "\ncommit "), *q = strstr(out, "\ncompiler "), *k = strstr(out, "\nkernels "),
               *h = strstr(out, "\nhip ");
    CU_ASSERT_FATAL(p && q && k && h);
    sscanf(p + 8, "%127[^\n]", commit);
    sscanf(q + 10, "%255[^\n]", compiler);
    sscanf(k + 9, "%63s", kernels);
    sscanf(h + 5, "%127[^\n]", hip);
    CU_ASSERT_STRING_EQUAL(kernels, "scalar");
    CU_ASSERT(!strncmp(compiler, "gcc ", 4) || !strncmp(compiler, "clang ", 6));
    CU_ASSERT(!strncmp(hip, "none", 4)); /* the CPU build */
    char git[64] = "";
    if (sh("git rev-parse --short=12 HEAD 2>/dev/null") == 0 && sscanf(out, "%63s", git) == 1) {
        CU_ASSERT(!strncmp(commit, git, strlen(git))); /* "-dirty" may follow */
    } else {
        CU_ASSERT_STRING_EQUAL(commit, "unknown");
    }
    /* the manifest */
    const char *trace = tmp("v.trace");
    CU_ASSERT_EQUAL_FATAL(sh("MOERT_KERNELS=scalar ./moert run configs/qwen3moe.yaml --tokens 1,2 -n 1 --trace %s",
                             trace), 0);
    trace_file t;
    moert_err err = {0};
    CU_ASSERT_EQUAL_FATAL(trace_file_open(trace, &t, &err), MOERT_OK);
    json_t *b = json_object_get(t.manifest, "build");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(b, "commit")), commit);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(b, "compiler")), compiler);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(b, "kernels")), "scalar");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(b, "version")), "0.1.0");
    CU_ASSERT(json_is_null(json_object_get(b, "hip_target")));
    CU_ASSERT(json_is_false(json_object_get(t.manifest, "interrupted")));
    trace_file_close(&t);
    /* bench --json */
    CU_ASSERT_EQUAL_FATAL(sh("./moert bench configs/qwen3moe.yaml --prompt-tokens 4 --gen 2 --repeat 1 --json"), 0);
    json_error_t je;
    json_t *j = json_loads(out, 0, &je);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    b = json_object_get(j, "build");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(b, "commit")), commit);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(b, "compiler")), compiler);
    CU_ASSERT_PTR_NOT_NULL(json_string_value(json_object_get(b, "kernels")));
    json_decref(j);
}

void suite_interrupt(void)
{
    CU_pSuite s = CU_add_suite("interrupt", NULL, NULL);
    CU_add_test(s, "SIGINT during run: trace written and valid, exit 130", test_sigint);
    CU_add_test(s, "SIGTERM during run: the same", test_sigterm);
    CU_add_test(s, "an unwritable --trace path is refused before the first token", test_trace_path_checked_first);
    CU_add_test(s, "--version, the manifest and bench --json: one set of build facts", test_version);
}
