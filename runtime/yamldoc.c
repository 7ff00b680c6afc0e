#include "yamldoc.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *problem_or(const char *s, const char *fallback)
{
    return s && *s ? s : fallback;
}

static int syntax_error(yamldoc *d, yaml_parser_t *p, const char *text, size_t len, moert_err *err)
{
    if (p->error == YAML_MEMORY_ERROR)
        return err_set(err, MOERT_ENOMEM, "%s: out of memory while parsing YAML", d->name);
    if (p->error == YAML_READER_ERROR) {
        /* The reader reports a byte offset only (bad encoding is found byte by byte): count
         * lines and columns (in bytes) up to it ourselves. */
        int line = 1, col = 1;
        for (size_t i = 0; i < p->problem_offset && i < len; i++) {
            if (text[i] == '\n') {
                line++;
                col = 1;
            } else {
                col++;
            }
        }
        return err_set(err, MOERT_ECONFIG,
                       "%s:%d:%d: YAML reader error at byte offset %zu: %s, expected UTF-8 text",
                       d->name, line, col, p->problem_offset, problem_or(p->problem, "unreadable input"));
    }
    char ctx[200] = "";
    if (p->context)
        snprintf(ctx, sizeof ctx, " (%s at %d:%d)", p->context, (int)p->context_mark.line + 1,
                 (int)p->context_mark.column + 1);
    return err_set(err, MOERT_ECONFIG, "%s:%d:%d: YAML syntax error: %s%s, expected well-formed YAML",
                   d->name, (int)p->problem_mark.line + 1, (int)p->problem_mark.column + 1,
                   problem_or(p->problem, "unknown problem"), ctx);
}

/* Nesting is checked on libyaml's event stream before the document is built: libyaml's
 * scanner spends time quadratic in the depth of flow collections (100,000 levels in 200 KB
 * run for minutes), while the event stream reaches the first collection too deep in time
 * linear in the bytes before it.  Events count block and flow collections alike, with exact
 * marks and no second reading of YAML's grammar here.  A syntax error ends this pass
 * silently: the loader then reports it with its full context. */
static int depth_check(const yamldoc *d, const char *text, size_t len, moert_err *err)
{
    yaml_parser_t p;
    if (!yaml_parser_initialize(&p))
        return err_set(err, MOERT_ENOMEM, "%s: out of memory initialising the YAML parser", d->name);
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    int depth = 0, rc = MOERT_OK;
    for (bool end = false; !end;) {
        yaml_event_t e;
        if (!yaml_parser_parse(&p, &e))
            break;
        end = e.type == YAML_STREAM_END_EVENT;
        if (e.type == YAML_SEQUENCE_START_EVENT || e.type == YAML_MAPPING_START_EVENT) {
            if (++depth > YAMLDOC_MAX_DEPTH) {
                rc = err_set(err, MOERT_ECONFIG,
                             "%s:%d:%d: lists and mappings nest more than %d deep here, expected at most %d levels",
                             d->name, (int)e.start_mark.line + 1, (int)e.start_mark.column + 1, YAMLDOC_MAX_DEPTH,
                             YAMLDOC_MAX_DEPTH);
                end = true;
            }
        } else if (e.type == YAML_SEQUENCE_END_EVENT || e.type == YAML_MAPPING_END_EVENT) {
            depth--;
        }
        yaml_event_delete(&e);
    }
    yaml_parser_delete(&p);
    return rc;
}

int yamldoc_load_string(yamldoc *d, const char *text, size_t len, const char *name,
                        moert_err *err)
{
    memset(d, 0, sizeof *d);
    snprintf(d->name, sizeof d->name, "%s", name ? name : "<yaml>");
    if (!text)
        return err_set(err, MOERT_EUSAGE, "%s: no YAML text given", d->name);
    int drc = depth_check(d, text, len, err);
    if (drc)
        return drc;
    yaml_parser_t p;
    if (!yaml_parser_initialize(&p))
        return err_set(err, MOERT_ENOMEM, "%s: out of memory initialising the YAML parser", d->name);
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    if (!yaml_parser_load(&p, &d->doc)) {
        int rc = syntax_error(d, &p, text, len, err);
        yaml_parser_delete(&p);
        return rc;
    }
    d->loaded = true;
    /* A second document would be silently ignored by a one-document reader: refuse it. */
    yaml_document_t extra;
    if (!yaml_parser_load(&p, &extra)) {
        int rc = syntax_error(d, &p, text, len, err);
        yaml_parser_delete(&p);
        yamldoc_free(d);
        return rc;
    }
    yaml_node_t *extra_root = yaml_document_get_root_node(&extra);
    if (extra_root) {
        int line = (int)extra_root->start_mark.line + 1, col = (int)extra_root->start_mark.column + 1;
        yaml_document_delete(&extra);
        yaml_parser_delete(&p);
        yamldoc_free(d);
        return err_set(err, MOERT_ECONFIG,
                       "%s:%d:%d: a second YAML document starts here, expected exactly one document",
                       name ? name : "<yaml>", line, col);
    }
    yaml_document_delete(&extra);
    yaml_parser_delete(&p);
    return MOERT_OK;
}

int yamldoc_load_file(yamldoc *d, const char *path, moert_err *err)
{
    memset(d, 0, sizeof *d);
    FILE *f = fopen(path, "rb");
    if (!f)
        return err_set(err, MOERT_EIO, "%s: cannot open: %s, expected a readable YAML file", path,
                       strerror(errno));
    char *buf = malloc(YAMLDOC_MAX_BYTES + 1);
    if (!buf) {
        fclose(f);
        return err_set(err, MOERT_ENOMEM, "%s: out of memory reading the file", path);
    }
    size_t n = fread(buf, 1, YAMLDOC_MAX_BYTES + 1, f);
    int rd_err = ferror(f);
    fclose(f);
    if (rd_err) {
        free(buf);
        return err_set(err, MOERT_EIO, "%s: read error (is it a directory?), expected a readable YAML file",
                       path);
    }
    if (n > YAMLDOC_MAX_BYTES) {
        free(buf);
        return err_set(err, MOERT_ECONFIG, "%s: file is larger than %u bytes, expected a small YAML file",
                       path, YAMLDOC_MAX_BYTES);
    }
    int rc = yamldoc_load_string(d, buf, n, path, err);
    free(buf);
    return rc;
}

void yamldoc_free(yamldoc *d)
{
    if (d && d->loaded) {
        yaml_document_delete(&d->doc);
        d->loaded = false;
    }
}

yaml_node_t *yamldoc_root(yamldoc *d)
{
    return d->loaded ? yaml_document_get_root_node(&d->doc) : NULL;
}

int yamldoc_line(const yaml_node_t *n)
{
    return n ? (int)n->start_mark.line + 1 : 0;
}

int yamldoc_col(const yaml_node_t *n)
{
    return n ? (int)n->start_mark.column + 1 : 0;
}

int yamldoc_errf(const yamldoc *d, const yaml_node_t *n, moert_err *err, int code,
                 const char *fmt, ...)
{
    char body[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    if (n)
        return err_set(err, code, "%s:%d:%d: %s", d->name, yamldoc_line(n), yamldoc_col(n), body);
    return err_set(err, code, "%s: %s", d->name, body);
}

bool yamldoc_is_map(const yaml_node_t *n)
{
    return n && n->type == YAML_MAPPING_NODE;
}

bool yamldoc_is_seq(const yaml_node_t *n)
{
    return n && n->type == YAML_SEQUENCE_NODE;
}

bool yamldoc_is_scalar(const yaml_node_t *n)
{
    return n && n->type == YAML_SCALAR_NODE;
}

const char *yamldoc_text(const yaml_node_t *n)
{
    return yamldoc_is_scalar(n) ? (const char *)n->data.scalar.value : NULL;
}

static bool is_plain(const yaml_node_t *n)
{
    return yamldoc_is_scalar(n) && n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
}

bool yamldoc_is_null(const yaml_node_t *n)
{
    if (!is_plain(n))
        return false;
    const char *s = yamldoc_text(n);
    return !*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") || !strcmp(s, "NULL");
}

static bool is_bool_text(const char *s, bool *v)
{
    if (!strcmp(s, "true") || !strcmp(s, "True") || !strcmp(s, "TRUE")) {
        *v = true;
        return true;
    }
    if (!strcmp(s, "false") || !strcmp(s, "False") || !strcmp(s, "FALSE")) {
        *v = false;
        return true;
    }
    return false;
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* [-+]?[0-9]+ with no leading zero (YAML 1.1 reads 012 as octal: refuse the ambiguity). */
static bool is_int_text(const char *s)
{
    if (*s == '-' || *s == '+')
        s++;
    if (!is_digit(*s))
        return false;
    if (s[0] == '0' && s[1])
        return false;
    while (is_digit(*s))
        s++;
    return !*s;
}

/* [-+]?(digits[.digits*]|.digits)([eE][-+]?digits)? — decimal only: no nan/inf/hex. */
static bool is_float_text(const char *s)
{
    if (*s == '-' || *s == '+')
        s++;
    int mant = 0;
    while (is_digit(*s)) {
        s++;
        mant++;
    }
    if (*s == '.') {
        s++;
        while (is_digit(*s)) {
            s++;
            mant++;
        }
    }
    if (!mant)
        return false;
    if (*s == 'e' || *s == 'E') {
        s++;
        if (*s == '-' || *s == '+')
            s++;
        if (!is_digit(*s))
            return false;
        while (is_digit(*s))
            s++;
    }
    return !*s;
}

const char *yamldoc_describe(const yaml_node_t *n, char *buf, size_t cap)
{
    if (!n) {
        snprintf(buf, cap, "nothing");
    } else if (n->type == YAML_MAPPING_NODE) {
        snprintf(buf, cap, "a mapping");
    } else if (n->type == YAML_SEQUENCE_NODE) {
        snprintf(buf, cap, "a list");
    } else if (n->type != YAML_SCALAR_NODE) {
        snprintf(buf, cap, "an empty node");
    } else if (!is_plain(n)) {
        snprintf(buf, cap, "the quoted string \"%.60s\"", yamldoc_text(n));
    } else if (yamldoc_is_null(n)) {
        snprintf(buf, cap, "null");
    } else {
        const char *s = yamldoc_text(n);
        bool b;
        if (is_bool_text(s, &b) || is_float_text(s))
            snprintf(buf, cap, "%.60s", s);
        else
            snprintf(buf, cap, "the string \"%.60s\"", s);
    }
    return buf;
}

static const char *key_text(yamldoc *d, const yaml_node_pair_t *p)
{
    return yamldoc_text(yaml_document_get_node(&d->doc, p->key));
}

int yamldoc_check_map(yamldoc *d, yaml_node_t *map, const char *what,
                      const char *const *allowed, moert_err *err)
{
    char got[100];
    if (!yamldoc_is_map(map))
        return yamldoc_errf(d, map, err, MOERT_ECONFIG, "%s is %s, expected a mapping", what,
                            yamldoc_describe(map, got, sizeof got));
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        yaml_node_t *k = yaml_document_get_node(&d->doc, p->key);
        if (!yamldoc_is_scalar(k) || yamldoc_is_null(k))
            return yamldoc_errf(d, k, err, MOERT_ECONFIG, "a key of %s is %s, expected a plain name",
                                what, yamldoc_describe(k, got, sizeof got));
        const char *ks = yamldoc_text(k);
        for (yaml_node_pair_t *q = map->data.mapping.pairs.start; q < p; q++) {
            const char *qs = key_text(d, q);
            if (qs && !strcmp(qs, ks)) {
                yaml_node_t *first = yaml_document_get_node(&d->doc, q->key);
                return yamldoc_errf(d, k, err, MOERT_ECONFIG,
                                    "duplicate key '%s' in %s (first given at %d:%d), expected each key once",
                                    ks, what, yamldoc_line(first), yamldoc_col(first));
            }
        }
        if (!allowed)
            continue;
        bool ok = false;
        for (const char *const *a = allowed; *a; a++)
            if (!strcmp(*a, ks))
                ok = true;
        if (!ok) {
            char list[600] = "";
            size_t used = 0;
            for (const char *const *a = allowed; *a && used < sizeof list; a++)
                used += (size_t)snprintf(list + used, sizeof list - used, "%s%s",
                                         a == allowed ? "" : ", ", *a);
            return yamldoc_errf(d, k, err, MOERT_ECONFIG, "unknown key '%.80s' in %s, expected one of: %s",
                                ks, what, list);
        }
    }
    return MOERT_OK;
}

static yaml_node_pair_t *find_pair(yamldoc *d, yaml_node_t *map, const char *key)
{
    if (!yamldoc_is_map(map))
        return NULL;
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        const char *ks = key_text(d, p);
        if (ks && !strcmp(ks, key))
            return p;
    }
    return NULL;
}

yaml_node_t *yamldoc_get(yamldoc *d, yaml_node_t *map, const char *key)
{
    yaml_node_pair_t *p = find_pair(d, map, key);
    return p ? yaml_document_get_node(&d->doc, p->value) : NULL;
}

yaml_node_t *yamldoc_get_key(yamldoc *d, yaml_node_t *map, const char *key)
{
    yaml_node_pair_t *p = find_pair(d, map, key);
    return p ? yaml_document_get_node(&d->doc, p->key) : NULL;
}

int yamldoc_seq_len(const yaml_node_t *seq)
{
    if (!yamldoc_is_seq(seq))
        return 0;
    return (int)(seq->data.sequence.items.top - seq->data.sequence.items.start);
}

yaml_node_t *yamldoc_seq_item(yamldoc *d, yaml_node_t *seq, int i)
{
    if (i < 0 || i >= yamldoc_seq_len(seq))
        return NULL;
    return yaml_document_get_node(&d->doc, seq->data.sequence.items.start[i]);
}

int yamldoc_map_len(const yaml_node_t *map)
{
    if (!yamldoc_is_map(map))
        return 0;
    return (int)(map->data.mapping.pairs.top - map->data.mapping.pairs.start);
}

yaml_node_t *yamldoc_map_key(yamldoc *d, yaml_node_t *map, int i)
{
    if (i < 0 || i >= yamldoc_map_len(map))
        return NULL;
    return yaml_document_get_node(&d->doc, map->data.mapping.pairs.start[i].key);
}

yaml_node_t *yamldoc_map_value(yamldoc *d, yaml_node_t *map, int i)
{
    if (i < 0 || i >= yamldoc_map_len(map))
        return NULL;
    return yaml_document_get_node(&d->doc, map->data.mapping.pairs.start[i].value);
}

int yamldoc_int(const yamldoc *d, const yaml_node_t *n, const char *what, int64_t *out,
                moert_err *err)
{
    char got[100];
    if (!is_plain(n) || !is_int_text(yamldoc_text(n)))
        return yamldoc_errf(d, n, err, MOERT_ECONFIG, "%s: got %s, expected an integer", what,
                            yamldoc_describe(n, got, sizeof got));
    errno = 0;
    long long v = strtoll(yamldoc_text(n), NULL, 10);
    if (errno == ERANGE)
        return yamldoc_errf(d, n, err, MOERT_ECONFIG,
                            "%s: %.40s overflows a 64-bit integer, expected an integer in [-2^63, 2^63)",
                            what, yamldoc_text(n));
    *out = (int64_t)v;
    return MOERT_OK;
}

int yamldoc_u64(const yamldoc *d, const yaml_node_t *n, const char *what, uint64_t *out,
                moert_err *err)
{
    char got[100];
    if (!is_plain(n) || !is_int_text(yamldoc_text(n)))
        return yamldoc_errf(d, n, err, MOERT_ECONFIG, "%s: got %s, expected a non-negative integer",
                            what, yamldoc_describe(n, got, sizeof got));
    const char *s = yamldoc_text(n);
    if (*s == '-')
        return yamldoc_errf(d, n, err, MOERT_ECONFIG, "%s: got %.40s, expected a non-negative integer",
                            what, s);
    errno = 0;
    unsigned long long v = strtoull(s, NULL, 10);
    if (errno == ERANGE)
        return yamldoc_errf(d, n, err, MOERT_ECONFIG,
                            "%s: %.40s overflows a 64-bit unsigned integer, expected an integer in [0, 2^64)",
                            what, s);
    *out = (uint64_t)v;
    return MOERT_OK;
}

int yamldoc_double(const yamldoc *d, const yaml_node_t *n, const char *what, double *out,
                   moert_err *err)
{
    char got[100];
    if (!is_plain(n) || !is_float_text(yamldoc_text(n)))
        return yamldoc_errf(d, n, err, MOERT_ECONFIG, "%s: got %s, expected a number", what,
                            yamldoc_describe(n, got, sizeof got));
    double v = strtod(yamldoc_text(n), NULL);
    if (!isfinite(v))
        return yamldoc_errf(d, n, err, MOERT_ECONFIG, "%s: %.40s overflows a double, expected a finite number",
                            what, yamldoc_text(n));
    *out = v;
    return MOERT_OK;
}

int yamldoc_bool(const yamldoc *d, const yaml_node_t *n, const char *what, bool *out,
                 moert_err *err)
{
    char got[100];
    if (!is_plain(n) || !is_bool_text(yamldoc_text(n), out))
        return yamldoc_errf(d, n, err, MOERT_ECONFIG, "%s: got %s, expected true or false", what,
                            yamldoc_describe(n, got, sizeof got));
    return MOERT_OK;
}

int yamldoc_str(const yamldoc *d, const yaml_node_t *n, const char *what, char *buf,
                size_t cap, moert_err *err)
{
    char got[100];
    if (!yamldoc_is_scalar(n) || yamldoc_is_null(n))
        return yamldoc_errf(d, n, err, MOERT_ECONFIG, "%s: got %s, expected a string", what,
                            yamldoc_describe(n, got, sizeof got));
    size_t len = n->data.scalar.length;
    if (len >= cap)
        return yamldoc_errf(d, n, err, MOERT_ECONFIG, "%s: string of %zu bytes is too long, expected at most %zu",
                            what, len, cap - 1);
    if (memchr(n->data.scalar.value, '\0', len))
        return yamldoc_errf(d, n, err, MOERT_ECONFIG, "%s: string contains a NUL byte, expected text", what);
    memcpy(buf, n->data.scalar.value, len);
    buf[len] = '\0';
    return MOERT_OK;
}
