/* afile: whole files, as moert reads and writes them.  Reading maps a regular file
 * read-only (weights stay in the page cache, never copied).  Writing is atomic.  Bytes go to PATH.tmp.PID; commit fsyncs it, renames it
 * over PATH and fsyncs the directory, so a reader sees the old file or the whole new one,
 * never half of one; abort (and any failed step) removes the temp file and leaves PATH as
 * it was.  Every writer of user-visible files (safetensors, GGUF, traces, reports) uses it.
 *
 * An existing PATH that is not a regular file (a directory, /dev/null, a FIFO) is refused
 * at open: renaming over it would replace it. */
#ifndef MOERT_AFILE_H
#define MOERT_AFILE_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

typedef struct afile {
    int fd;
    char *path, *tmp;
    uint64_t written, kicked; /* bytes written; bytes handed to writeback so far */
} afile;

int afile_open(afile *f, const char *path, moert_err *err);
/* Appends len bytes (large writes start writeback as they go, so the final fsync finds
 * little left).  After an error, call afile_abort. */
int afile_write(afile *f, const void *buf, size_t len, moert_err *err);
/* fsync, close, rename into place, fsync the directory; releases f in every case. */
int afile_commit(afile *f, moert_err *err);
/* Closes and removes the temp file; releases f.  Safe on a zeroed afile. */
void afile_abort(afile *f);

/* Maps `path` read-only (MAP_PRIVATE): *map and *len, or NULL and 0 for an empty file.
 * MOERT_EIO naming the file when it cannot be opened, is not a regular file, or cannot be
 * mapped.  Release with munmap(*map, *len). */
int afile_map(const char *path, void **map, size_t *len, moert_err *err);

/* The whole of data to path, atomically. */
int afile_write_whole(const char *path, const void *data, size_t len, moert_err *err);

#endif
