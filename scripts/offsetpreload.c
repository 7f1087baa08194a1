/*
 * Replacement for Apptainer's offsetpreload.so, built by setup-apptainer.sh.
 *
 * Apptainer preloads this library into the host's fuse2fs when an ordinary
 * user mounts an ext3 overlay that is embedded in a SIF file: the file system
 * starts OFFSETPRELOAD_OFFSET bytes into the file named by OFFSETPRELOAD_FILE,
 * so every positioned read and write on that one file is shifted by that much.
 *
 * The copy shipped in Debian sid's apptainer package needs glibc >= 2.38, which
 * Debian bookworm does not have, and fuse2fs runs with the host's glibc; hence
 * this small rebuild with the host compiler:
 *     gcc -O2 -shared -fPIC -o offsetpreload.so offsetpreload.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

static int target_fd = -1; /* descriptor of OFFSETPRELOAD_FILE, once opened */
static off_t shift;        /* value of OFFSETPRELOAD_OFFSET */

static void *next_symbol(const char *name)
{
    return dlsym(RTLD_NEXT, name);
}

/* Note the descriptor if this open was of the file we must shift. */
static void remember(const char *path, int fd)
{
    const char *want = getenv("OFFSETPRELOAD_FILE");
    const char *value = getenv("OFFSETPRELOAD_OFFSET");

    if (fd < 0 || want == NULL || path == NULL || strcmp(want, path) != 0)
        return;
    shift = value != NULL ? (off_t)strtoll(value, NULL, 10) : 0;
    target_fd = fd;
}

/* open() only reads a third (mode) argument when it may create a file. */
static int needs_mode(int flags)
{
    return (flags & O_CREAT) != 0 || (flags & O_TMPFILE) == O_TMPFILE;
}

#define OPEN_WRAPPER(name)                                                   \
    int name(const char *path, int flags, ...)                               \
    {                                                                        \
        static int (*real)(const char *, int, ...);                          \
        mode_t mode = 0;                                                     \
        int fd;                                                              \
        if (needs_mode(flags)) {                                             \
            va_list ap;                                                      \
            va_start(ap, flags);                                             \
            mode = (mode_t)va_arg(ap, int);                                  \
            va_end(ap);                                                      \
        }                                                                    \
        if (real == NULL)                                                    \
            real = (int (*)(const char *, int, ...))next_symbol(#name);      \
        fd = real(path, flags, mode);                                        \
        remember(path, fd);                                                  \
        return fd;                                                           \
    }

/* The _FORTIFY_SOURCE variants: no mode argument. */
#define FORTIFIED_OPEN_WRAPPER(name)                                         \
    int name(const char *path, int flags)                                    \
    {                                                                        \
        static int (*real)(const char *, int);                               \
        int fd;                                                              \
        if (real == NULL)                                                    \
            real = (int (*)(const char *, int))next_symbol(#name);           \
        fd = real(path, flags);                                              \
        remember(path, fd);                                                  \
        return fd;                                                           \
    }

#define POSITIONED_IO_WRAPPER(name, buffer_type)                             \
    ssize_t name(int fd, buffer_type buf, size_t count, off_t offset)        \
    {                                                                        \
        static ssize_t (*real)(int, buffer_type, size_t, off_t);             \
        if (real == NULL)                                                    \
            real = (ssize_t (*)(int, buffer_type, size_t, off_t))            \
                next_symbol(#name);                                          \
        if (fd == target_fd)                                                 \
            offset += shift;                                                 \
        return real(fd, buf, count, offset);                                 \
    }

OPEN_WRAPPER(open)
OPEN_WRAPPER(open64)
FORTIFIED_OPEN_WRAPPER(__open_2)
FORTIFIED_OPEN_WRAPPER(__open64_2)
POSITIONED_IO_WRAPPER(pread, void *)
POSITIONED_IO_WRAPPER(pread64, void *)
POSITIONED_IO_WRAPPER(pwrite, const void *)
POSITIONED_IO_WRAPPER(pwrite64, const void *)

/* A closed descriptor number may be reused for another file: forget it. */
int close(int fd)
{
    static int (*real)(int);

    if (real == NULL)
        real = (int (*)(int))next_symbol("close");
    if (fd == target_fd)
        target_fd = -1;
    return real(fd);
}
