/* afile: files written atomically (see afile.h). */
#include "afile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Writeback of what accumulated is started every this many bytes, without waiting. */
#define WRITEBACK_STEP ((uint64_t)32 << 20)

int afile_open(afile *f, const char *path, moert_err *err)
{
    memset(f, 0, sizeof *f);
    f->fd = -1;
    struct stat sb;
    if (stat(path, &sb) == 0 && !S_ISREG(sb.st_mode))
        return err_set(err, MOERT_EIO, "%s: exists and is not a regular file, expected a file path to write",
                       path);
    size_t n = strlen(path) + 32;
    f->path = strdup(path);
    f->tmp = malloc(n);
    if (!f->path || !f->tmp) {
        afile_abort(f);
        return err_set(err, MOERT_ENOMEM, "%s: out of memory", path);
    }
    snprintf(f->tmp, n, "%s.tmp.%ld", path, (long)getpid());
    f->fd = open(f->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (f->fd < 0) {
        int e = errno;
        free(f->tmp);
        f->tmp = NULL; /* nothing to remove */
        afile_abort(f);
        return err_set(err, MOERT_EIO, "%s: cannot create temp file: %s", path, strerror(e));
    }
    return MOERT_OK;
}

int afile_write(afile *f, const void *buf, size_t len, moert_err *err)
{
    const uint8_t *p = buf;
    while (len) {
        size_t chunk = len > (1u << 30) ? (1u << 30) : len;
        ssize_t k = write(f->fd, p, chunk);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return err_set(err, MOERT_EIO, "%s: write failed: %s", f->path, k < 0 ? strerror(errno) : "no progress");
        p += k;
        len -= (size_t)k;
        f->written += (uint64_t)k;
    }
    if (f->written - f->kicked >= WRITEBACK_STEP) {
        /* a hint: an error here resurfaces at fsync */
        (void)sync_file_range(f->fd, (off64_t)f->kicked, (off64_t)(f->written - f->kicked), SYNC_FILE_RANGE_WRITE);
        f->kicked = f->written;
    }
    return MOERT_OK;
}

int afile_commit(afile *f, moert_err *err)
{
    int st = MOERT_OK;
    if (fsync(f->fd) != 0)
        st = err_set(err, MOERT_EIO, "%s: fsync failed: %s", f->tmp, strerror(errno));
    if (close(f->fd) != 0 && !st)
        st = err_set(err, MOERT_EIO, "%s: close failed: %s", f->tmp, strerror(errno));
    f->fd = -1;
    if (!st && rename(f->tmp, f->path) != 0)
        st = err_set(err, MOERT_EIO, "%s: cannot rename %s into place: %s", f->path, f->tmp, strerror(errno));
    if (st) {
        afile_abort(f);
        return st;
    }
    /* the directory too, so the rename itself is durable */
    char *slash = strrchr(f->path, '/');
    if (slash)
        slash[slash == f->path ? 1 : 0] = '\0';
    const char *dir = slash ? f->path : ".";
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        if (fsync(dfd) != 0 && errno != EINVAL)
            st = err_set(err, MOERT_EIO, "fsync of directory %s failed: %s", dir, strerror(errno));
        close(dfd);
    }
    free(f->tmp);
    free(f->path);
    memset(f, 0, sizeof *f);
    f->fd = -1;
    return st;
}

void afile_abort(afile *f)
{
    if (f->fd >= 0)
        close(f->fd);
    if (f->tmp)
        unlink(f->tmp);
    free(f->tmp);
    free(f->path);
    memset(f, 0, sizeof *f);
    f->fd = -1;
}

int afile_write_whole(const char *path, const void *data, size_t len, moert_err *err)
{
    afile f;
    int st = afile_open(&f, path, err);
    if (st)
        return st;
    if ((st = afile_write(&f, data, len, err))) {
        afile_abort(&f);
        return st;
    }
    return afile_commit(&f, err);
}

int afile_map(const char *path, void **map, size_t *len, moert_err *err)
{
    *map = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return err_set(err, MOERT_EIO, "%s: cannot open: %s", path, strerror(errno));
    int st = MOERT_OK;
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        st = err_set(err, MOERT_EIO, "%s: cannot stat: %s", path, strerror(errno));
    } else if (!S_ISREG(sb.st_mode)) {
        st = err_set(err, MOERT_EIO, "%s: not a regular file", path);
    } else if (sb.st_size > 0) {
        void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            st = err_set(err, MOERT_EIO, "%s: cannot mmap %lld bytes: %s", path, (long long)sb.st_size,
                         strerror(errno));
        } else {
            *map = m;
            *len = (size_t)sb.st_size;
        }
    }
    close(fd);
    return st;
}
