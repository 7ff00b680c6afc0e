/* err: the one error type every moert library function fills.
 *
 * Library functions return an int status (MOERT_OK or one of the codes below) and, on
 * failure, write a human-readable message into a caller-owned moert_err.  Only main()
 * prints and chooses the process exit code (moert_exit_code()).  No library calls exit().
 */
#ifndef MOERT_ERR_H
#define MOERT_ERR_H

#include <stddef.h>

enum moert_status {
    MOERT_OK = 0,
    MOERT_EUSAGE,    /* bad command line or API misuse by the caller */
    MOERT_ECONFIG,   /* a config / contract file is malformed or inconsistent */
    MOERT_EFORMAT,   /* a data file (safetensors, JSON, trace) is malformed */
    MOERT_EIO,       /* open/read/write/mmap failed */
    MOERT_ENOMEM,    /* an init-time allocation failed */
    MOERT_ECHECK,    /* a check ran and found violations (validate, replay, parity) */
    MOERT_ENODEV,    /* the requested backend has no device */
    MOERT_EINTERNAL, /* an invariant of moert itself broke: a bug */
    MOERT_EINTR,     /* stopped early by SIGINT / SIGTERM (what was done is kept): exit 130 */
};

typedef struct moert_err {
    int code;        /* an enum moert_status, MOERT_OK when nothing failed */
    char msg[1024];  /* "file:line:col: what was expected, what was found" */
} moert_err;

/* Records code and a printf-style message in err (err may be NULL); returns code so
 * callers can write `return err_set(err, MOERT_EIO, "...")`. */
int err_set(moert_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prepends "prefix: " to err->msg (e.g. the file being loaded); returns err->code. */
int err_prefix(moert_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Clears err to MOERT_OK / empty message. */
void err_clear(moert_err *err);

/* Short stable name of a status code ("config", "format", ...). */
const char *err_name(int code);

/* Process exit code for a status: 0 ok, 1 a check ran and found violations, 2 anything
 * that kept the command from doing its job (usage, bad or missing input, I/O, memory, no
 * device), 3 an internal bug, 130 interrupted (128 + SIGINT, as shells report it). */
int moert_exit_code(int code);

/* Several problems in one message: as many as fit, then a count of the rest
 * ("PREFIX: a; b; c ... and 12 more").  Fill with err_list_add, then err_list_finish. */
typedef struct err_list {
    char text[800];
    size_t len;
    int shown, dropped;
} err_list;

void err_list_add(err_list *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* MOERT_OK when nothing was added; otherwise sets err (with `code`) and returns code. */
int err_list_finish(const err_list *l, moert_err *err, int code, const char *prefix);

#endif
