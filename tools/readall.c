/* readall: read every byte of every regular file under PATH (or PATH itself if
 * it is a file), the way a program really consumes files: open, read() into a
 * buffer until EOF, close. Nothing is written anywhere, so no tool can
 * short-circuit the reads (unlike `tar -cf /dev/null` or copy_file_range).
 * Symlinks are not followed. Prints "files N bytes B" on stdout.
 *
 * Build: cc -O2 -o readall tools/readall.c   (tools/bench does this itself)
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define BUFSZ (1 << 20)
static char *buf;
static unsigned long long nfiles, nbytes;
static int errors;

static void read_fd(int fd, const char *name)
{
    for (;;) {
        ssize_t r = read(fd, buf, BUFSZ);
        if (r == 0)
            break;
        if (r < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "readall: read %s: %s\n", name, strerror(errno));
            errors = 1;
            break;
        }
        nbytes += (unsigned long long)r;
    }
    nfiles++;
}

static void walk(int dirfd, const char *name)
{
    DIR *d = fdopendir(dirfd);
    if (!d) {
        fprintf(stderr, "readall: opendir %s: %s\n", name, strerror(errno));
        errors = 1;
        close(dirfd);
        return;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' && (e->d_name[1] == 0 || (e->d_name[1] == '.' && e->d_name[2] == 0)))
            continue;
        unsigned char t = e->d_type;
        if (t == DT_UNKNOWN) {
            struct stat st;
            if (fstatat(dirfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
                continue;
            t = S_ISDIR(st.st_mode) ? DT_DIR : S_ISREG(st.st_mode) ? DT_REG : DT_LNK;
        }
        if (t == DT_DIR) {
            int fd = openat(dirfd, e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (fd < 0) {
                fprintf(stderr, "readall: open %s/%s: %s\n", name, e->d_name, strerror(errno));
                errors = 1;
                continue;
            }
            walk(fd, e->d_name);
        } else if (t == DT_REG) {
            int fd = openat(dirfd, e->d_name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
            if (fd < 0) {
                fprintf(stderr, "readall: open %s/%s: %s\n", name, e->d_name, strerror(errno));
                errors = 1;
                continue;
            }
            read_fd(fd, e->d_name);
            close(fd);
        }
    }
    closedir(d);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: readall PATH...\n");
        return 2;
    }
    buf = malloc(BUFSZ);
    if (!buf)
        return 2;
    for (int i = 1; i < argc; i++) {
        int fd = open(argv[i], O_RDONLY | O_CLOEXEC);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) < 0) {
            fprintf(stderr, "readall: %s: %s\n", argv[i], strerror(errno));
            return 1;
        }
        if (S_ISDIR(st.st_mode))
            walk(fd, argv[i]);
        else {
            read_fd(fd, argv[i]);
            close(fd);
        }
    }
    printf("files %llu bytes %llu\n", nfiles, nbytes);
    return errors;
}
