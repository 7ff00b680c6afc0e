/* ver: build facts (see version.h). */
#include "version.h"

#include <stdio.h>

#include "../ops/ops.h"
#include "backend.h"

/* The Makefile writes build/<variant>/gen/commit.h when HEAD changes; builds without it
 * (the fuzz harnesses, a tree without .git) say "unknown". */
#if defined(__has_include)
#if __has_include("commit.h")
#include "commit.h"
#endif
#endif
#ifndef MOERT_GIT_COMMIT
#define MOERT_GIT_COMMIT "unknown"
#endif

#if defined(__clang__)
#define COMPILER "clang " __clang_version__
#elif defined(__GNUC__)
#define COMPILER "gcc " __VERSION__
#else
#define COMPILER "unknown C compiler"
#endif

void ver_get(ver_info *out)
{
    out->version = MOERT_VERSION;
    out->commit = MOERT_GIT_COMMIT;
    out->compiler = COMPILER;
    out->kernels = ops_level_name(ops_level_current());
    out->kernels_max = ops_level_name(ops_level_available());
    out->hip_target = backend_hip_target();
}

void ver_format(char *buf, size_t cap)
{
    ver_info v;
    ver_get(&v);
    snprintf(buf, cap,
             "moert %s\ncommit %s\ncompiler %s\nkernels %s (this CPU runs up to %s)\nhip %s\n",
             v.version, v.commit, v.compiler, v.kernels, v.kernels_max,
             v.hip_target ? v.hip_target : "none (built without the HIP backend)");
}

json_t *ver_json(void)
{
    ver_info v;
    ver_get(&v);
    json_t *o = json_object();
    json_object_set_new(o, "version", json_string(v.version));
    json_object_set_new(o, "commit", json_string(v.commit));
    json_object_set_new(o, "compiler", json_string(v.compiler));
    json_object_set_new(o, "kernels", json_string(v.kernels));
    json_object_set_new(o, "kernels_max", json_string(v.kernels_max));
    json_object_set_new(o, "hip_target", v.hip_target ? json_string(v.hip_target) : json_null());
    return o;
}
