/* hip_host: parallel staging copies and the upload progress bar (see hip_host.h). */
#include "hip_host.h"

#include <omp.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

void hip_host_memcpy(void *dst, const void *src, size_t n)
{
    const size_t piece = (size_t)4 << 20;
    size_t pieces = (n + piece - 1) / piece;
    if (pieces < 2) {
        memcpy(dst, src, n);
        return;
    }
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < pieces; i++) {
        size_t off = i * piece, len = n - off < piece ? n - off : piece;
        memcpy((char *)dst + off, (const char *)src + off, len);
    }
}

static void x4_group(unsigned char *dst, const unsigned char *src, int bb, int d_off)
{
    unsigned char *body = dst + 8;
    for (int b = 0; b < 4; b++, src += bb) {
        memcpy(dst + 2 * b, src + d_off, 2);
        memcpy(body, src, (size_t)d_off);
        body += d_off;
        memcpy(body, src + d_off + 2, (size_t)(bb - d_off - 2));
        body += bb - d_off - 2;
    }
}

void hip_host_x4_pack(unsigned char *dst, const unsigned char *src, size_t groups, int block_bytes, int d_off)
{
    const size_t gb = 4 * (size_t)block_bytes, per = ((size_t)1 << 20) / gb + 1;
    const size_t pieces = (groups + per - 1) / per;
#pragma omp parallel for schedule(static) if (pieces > 1)
    for (size_t i = 0; i < pieces; i++) {
        size_t g1 = (i + 1) * per < groups ? (i + 1) * per : groups;
        for (size_t g = i * per; g < g1; g++)
            x4_group(dst + g * gb, src + g * gb, block_bytes, d_off);
    }
}

void hip_host_progress(uint64_t done, uint64_t total, double seconds)
{
    static int last_pct = -1;
    if (total < ((uint64_t)256 << 20))
        return;
    int pct = (int)(done * 100 / total);
    bool tty = isatty(2);
    if (!tty && done < total)
        return;
    if (tty && pct == last_pct && done < total)
        return;
    last_pct = done < total ? pct : -1;
    char bar[21];
    int fill = pct / 5;
    for (int i = 0; i < 20; i++)
        bar[i] = i < fill ? '#' : ' ';
    bar[20] = 0;
    fprintf(stderr, "%suploading weights [%s] %3d%% %.1f/%.1f GB", tty ? "\r" : "", bar, pct,
            (double)done / 1e9, (double)total / 1e9);
    if (done >= total)
        fprintf(stderr, " (%.1f s)\n", seconds);
    fflush(stderr);
}
