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
    case MOERT_EINTR: return "interrupted";
    default: return "internal";
    }
}

int moert_exit_code(int code)
{
    switch (code) {
    case MOERT_OK: return 0;
    case MOERT_ECHECK: return 1;
    case MOERT_EINTR: return 130;
    case MOERT_EUSAGE:
    case MOERT_ECONFIG:
    case MOERT_EFORMAT:
    case MOERT_EIO:
    case MOERT_ENOMEM:
    case MOERT_ENODEV: return 2;
    default: return 3;
    }
}

void err_list_add(err_list *l, const char *fmt, ...)
{
    char one[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(one, sizeof one, fmt, ap);
    va_end(ap);
    size_t need = strlen(one) + (l->shown ? 2 : 0);
    if (l->dropped || l->len + need >= sizeof l->text) {
        l->dropped++;
        return;
    }
    l->len += (size_t)snprintf(l->text + l->len, sizeof l->text - l->len, "%s%s",
                               l->shown ? "; " : "", one);
    l->shown++;
}

int err_list_finish(const err_list *l, moert_err *err, int code, const char *prefix)
{
    if (!l->shown && !l->dropped)
        return MOERT_OK;
    if (l->dropped)
        return err_set(err, code, "%s: %s ... and %d more", prefix, l->text, l->dropped);
    return err_set(err, code, "%s: %s", prefix, l->text);
}
