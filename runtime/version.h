/* ver: the build's facts -- version, git commit, compiler, CPU kernel family, HIP target --
 * defined once.  `moert --version`, the trace manifest and `bench --json` all take them from
 * here, so the three can never disagree. */
#ifndef MOERT_VERSION_H
#define MOERT_VERSION_H

#include <jansson.h>
#include <stddef.h>

#define MOERT_VERSION "0.1.0"

typedef struct ver_info {
    const char *version;     /* MOERT_VERSION */
    const char *commit;      /* `git rev-parse --short=12 HEAD` at build time (+"-dirty"), or "unknown" */
    const char *compiler;    /* "gcc 11.4.0", "clang 14.0.0" */
    const char *kernels;     /* CPU kernel family in use: scalar, avx2 or avx512 (MOERT_KERNELS) */
    const char *kernels_max; /* the widest family this CPU runs */
    const char *hip_target;  /* GPU target this binary's HIP backend was built for, or NULL */
} ver_info;

void ver_get(ver_info *out);

/* The `--version` text: one fact per line, "moert 0.1.0" first. */
void ver_format(char *buf, size_t cap);

/* {"version", "commit", "compiler", "kernels", "kernels_max", "hip_target" (null when none)}. */
json_t *ver_json(void);

#endif
