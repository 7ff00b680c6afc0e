#include "err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int err_set(moert_err *err, int code, const char *fmt, ...)
{
    if (!err)
        return code;
    err->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    return code;
}

int err_prefix(moert_err *err, const char *fmt, ...)
{
    if (!err)
        return MOERT_EINTERNAL;
    char head[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(head, sizeof head, fmt, ap);
    va_end(ap);
    char old[sizeof err->msg];
    memcpy(old, err->msg, sizeof old);
    snprintf(err->msg, sizeof err->msg, "%s: %s", head, old);
    return err->code;
}

void err_clear(moert_err *err)
{
    if (!err)
        return;
    err->code = MOERT_OK;
    err->msg[0] = '\0';
}

const char *err_name(int code)
{
    switch (code) {
    case MOERT_OK: return "ok";
    case MOERT_EUSAGE: return "usage";
    case MOERT_ECONFIG: return "config";
    case MOERT_EFORMAT: return "format";
    case MOERT_EIO: return "io";
    case MOERT_ENOMEM: return "memory";
    case MOERT_ECHECK: return "check";
    case MOERT_ENODEV: return "device";
    default: return "internal";
    }
}

int moert_exit_code(int code)
{
    switch (code) {
    case MOERT_OK: return 0;
    case MOERT_ECHECK: return 1;
    case MOERT_EUSAGE:
    case MOERT_ECONFIG:
    case MOERT_EFORMAT:
    case MOERT_EIO:
    case MOERT_ENOMEM:
    case MOERT_ENODEV: return 2;
    default: return 3;
    }
}
