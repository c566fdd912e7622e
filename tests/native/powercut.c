/* LD_PRELOAD shim for power-loss tests: remember what each file held when it was last synced.
 *
 * For every regular file under $POWERCUT_DIR, fsync()/fdatasync() first copies the file's
 * whole current content to "<file>.durable". A simulated power cut is then: SIGKILL the
 * process and replace every file by its .durable copy (a file never synced loses its content).
 * That is the harshest case a disk with a volatile cache allows: not one write that was not
 * followed by a sync reaches the platter. Directories are not tracked (their fsyncs pass).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void snapshot(int fd) {
    const char *dir = getenv("POWERCUT_DIR");
    char link[64], path[PATH_MAX], tmp[PATH_MAX + 32], dst[PATH_MAX + 32];
    char buf[1 << 16];
    struct stat st;
    ssize_t n, r;
    off_t off = 0;
    size_t dl;
    int out;

    if (dir == NULL || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        return;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    n = readlink(link, path, sizeof path - 1);
    if (n <= 0)
        return;
    path[n] = 0;
    dl = strlen(dir);
    if (strncmp(path, dir, dl) != 0 || path[dl] != '/' || strstr(path, ".durable"))
        return;
    snprintf(dst, sizeof dst, "%s.durable", path);
    snprintf(tmp, sizeof tmp, "%s.durable.tmp", path);
    out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (out < 0)
        return;
    while ((r = pread(fd, buf, sizeof buf, off)) > 0) {
        if (write(out, buf, (size_t)r) != r)
            break;
        off += r;
    }
    close(out);
    rename(tmp, dst);
}

int fsync(int fd) {
    static int (*real)(int);
    if (real == NULL)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    snapshot(fd);
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (real == NULL)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    snapshot(fd);
    return real(fd);
}
