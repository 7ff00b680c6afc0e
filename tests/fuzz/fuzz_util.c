#include "fuzz.h"

#include <dirent.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[256];

static void remove_dir(void)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *de;
    char p[600];
    while ((de = readdir(d)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
            snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
            unlink(p);
        }
    closedir(d);
    rmdir(dir);
}

const char *fuzz_dir(void)
{
    if (!dir[0]) {
        const char *base = getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
        snprintf(dir, sizeof dir, "%s/moert-fuzz-%ld", base, (long)getpid());
        mkdir(dir, 0755);
        atexit(remove_dir);
    }
    return dir;
}

const char *fuzz_file(const char *name, const void *data, size_t size)
{
    static char path[8][600];
    static int k;
    k = (k + 1) % 8;
    snprintf(path[k], sizeof path[k], "%s/%s", fuzz_dir(), name);
    FILE *f = fopen(path[k], "wb");
    FUZZ_ASSERT(f != NULL);
    FUZZ_ASSERT(size == 0 || fwrite(data, 1, size, f) == size);
    FUZZ_ASSERT(fclose(f) == 0);
    return path[k];
}

char *fuzz_strdup(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    FUZZ_ASSERT(s != NULL);
    if (size)
        memcpy(s, data, size);
    s[size] = '\0';
    return s;
}

void fuzz_check_status(int st, const moert_err *e, bool may_check)
{
    if (st == MOERT_OK)
        return;
    int x = moert_exit_code(st);
    if (!(x == 2 || (may_check && x == 1)) || !e->msg[0])
        fprintf(stderr, "fuzz: status %d (%s, exit %d): %s\n", st, err_name(st), x, e->msg);
    FUZZ_ASSERT(x == 2 || (may_check && x == 1));
    FUZZ_ASSERT(e->msg[0] != '\0');
}

void fuzz_quiet_stdout(void)
{
    FUZZ_ASSERT(freopen("/dev/null", "w", stdout) != NULL);
}
