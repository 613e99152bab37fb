/* bench_wops: the timed write-path operations of tools/bench, each in one process so that
 * process start-up and shell loops do not blur the figures. Every subcommand times only
 * the operation itself (CLOCK_MONOTONIC), prints the elapsed seconds ("0.001234") on
 * stdout, then checks the result untimed; a failed operation or check prints a message on
 * stderr and exits 1.
 *
 *   create DIR N        mkdir DIR (untimed); time N x open(DIR/fNNNNNN, O_CREAT|O_EXCL) + close;
 *                       check DIR lists N entries
 *   unlink DIR N        time N x unlink(DIR/fNNNNNN); check DIR is empty
 *   mkdir DIR N         mkdir DIR (untimed); time N x mkdir(DIR/dNNNNNN); check DIR lists N
 *   pwrite1 FILE OFF    time open(FILE, O_WRONLY) (no O_TRUNC) + pwrite of 1 byte at OFF + close;
 *                       check the size is unchanged, the byte is there and its neighbours
 *                       are not changed
 *   rename SRC DST      time rename(SRC, DST) of a directory; prints "exdev" and exits 3 on
 *                       EXDEV; check DST is a directory with as many entries as SRC had and
 *                       SRC is gone
 *   seqwrite FILE MIB   time open(FILE, O_CREAT|O_EXCL|O_WRONLY) + MIB x write(1 MiB) + fsync
 *                       + close (like dd bs=1M conv=fsync, with non-zero data); check the size
 *
 * Build: cc -O2 -o bench_wops tools/bench_wops.c   (tools/bench does this itself)
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int fail(const char *what, const char *path)
{
    fprintf(stderr, "bench_wops: %s %s: %s\n", what, path, strerror(errno));
    return 1;
}

static long count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    long n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (!(e->d_name[0] == '.' && (e->d_name[1] == 0 || (e->d_name[1] == '.' && e->d_name[2] == 0))))
            n++;
    closedir(d);
    return n;
}

static int check_count(const char *dir, long want)
{
    long n = count_entries(dir);
    if (n < 0)
        return fail("opendir", dir);
    if (n != want) {
        fprintf(stderr, "bench_wops: %s lists %ld entries, expected %ld\n", dir, n, want);
        return 1;
    }
    return 0;
}

static void report(double t0, double t1) { printf("%.6f\n", t1 - t0); fflush(stdout); }

static int do_names(const char *op, const char *dir, long n)
{
    int dfd;
    if (strcmp(op, "unlink") != 0 && mkdir(dir, 0755) < 0)
        return fail("mkdir", dir);
    if ((dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
        return fail("open", dir);
    char name[32];
    double t0 = now();
    for (long i = 0; i < n; i++) {
        snprintf(name, sizeof name, "%c%06ld", op[0] == 'm' ? 'd' : 'f', i);
        if (op[0] == 'c') {
            int fd = openat(dfd, name, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
            if (fd < 0 || close(fd) < 0)
                return fail("create", name);
        } else if (op[0] == 'u') {
            if (unlinkat(dfd, name, 0) < 0)
                return fail("unlink", name);
        } else if (mkdirat(dfd, name, 0755) < 0) {
            return fail("mkdir", name);
        }
    }
    double t1 = now();
    close(dfd);
    report(t0, t1);
    return check_count(dir, op[0] == 'u' ? 0 : n);
}

static int do_pwrite1(const char *path, long long off)
{
    unsigned char before[3], after[3];
    struct stat st0, st1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st0) < 0)
        return fail("open", path);
    if (off < 1 || off + 1 >= st0.st_size) {
        fprintf(stderr, "bench_wops: offset %lld outside %s (%lld bytes)\n", off, path, (long long)st0.st_size);
        return 1;
    }
    if (pread(fd, before, 3, off - 1) != 3)
        return fail("pread", path);
    close(fd);
    unsigned char x = (unsigned char)(before[1] ^ 0x5a);

    double t0 = now();
    fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return fail("open O_WRONLY", path);
    if (pwrite(fd, &x, 1, off) != 1)
        return fail("pwrite", path);
    if (close(fd) < 0)
        return fail("close", path);
    double t1 = now();
    report(t0, t1);

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st1) < 0)
        return fail("reopen", path);
    if (pread(fd, after, 3, off - 1) != 3)
        return fail("pread after", path);
    close(fd);
    if (st1.st_size != st0.st_size) {
        fprintf(stderr, "bench_wops: %s: size %lld after the write, was %lld\n", path,
                (long long)st1.st_size, (long long)st0.st_size);
        return 1;
    }
    if (after[0] != before[0] || after[1] != x || after[2] != before[2]) {
        fprintf(stderr, "bench_wops: %s: bytes %lld..%lld read back %02x %02x %02x, expected %02x %02x %02x\n",
                path, off - 1, off + 1, after[0], after[1], after[2], before[0], x, before[2]);
        return 1;
    }
    return 0;
}

static int do_rename(const char *src, const char *dst)
{
    long n = count_entries(src);
    if (n < 0)
        return fail("opendir", src);
    double t0 = now();
    if (rename(src, dst) < 0) {
        if (errno == EXDEV) {
            printf("exdev\n");
            fprintf(stderr, "bench_wops: rename %s %s: %s\n", src, dst, strerror(errno));
            return 3;
        }
        return fail("rename", src);
    }
    double t1 = now();
    report(t0, t1);
    struct stat st;
    if (lstat(src, &st) == 0 || errno != ENOENT) {
        fprintf(stderr, "bench_wops: %s still there after the rename\n", src);
        return 1;
    }
    if (lstat(dst, &st) < 0)
        return fail("lstat", dst);
    if (!S_ISDIR(st.st_mode)) {
        fprintf(stderr, "bench_wops: %s is not a directory after the rename\n", dst);
        return 1;
    }
    return check_count(dst, n);
}

static int do_seqwrite(const char *path, long mib)
{
    size_t bs = 1 << 20;
    unsigned char *buf = malloc(bs);
    if (!buf)
        return 1;
    unsigned long long s = 0x9e3779b97f4a7c15ULL;
    for (size_t i = 0; i < bs; i++) {  /* xorshift: non-zero, not compressible */
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        buf[i] = (unsigned char)(s | 1);
    }
    double t0 = now();
    int fd = open(path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0)
        return fail("create", path);
    for (long i = 0; i < mib; i++) {
        size_t done = 0;
        while (done < bs) {
            ssize_t w = write(fd, buf + done, bs - done);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                return fail("write", path);
            done += (size_t)w;
        }
    }
    if (fsync(fd) < 0)
        return fail("fsync", path);
    if (close(fd) < 0)
        return fail("close", path);
    double t1 = now();
    report(t0, t1);
    struct stat st;
    if (stat(path, &st) < 0)
        return fail("stat", path);
    if (st.st_size != (off_t)mib << 20) {
        fprintf(stderr, "bench_wops: %s: size %lld, expected %lld\n", path, (long long)st.st_size,
                (long long)mib << 20);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 4 && (!strcmp(argv[1], "create") || !strcmp(argv[1], "unlink") || !strcmp(argv[1], "mkdir")))
        return do_names(argv[1], argv[2], atol(argv[3]));
    if (argc == 4 && !strcmp(argv[1], "pwrite1"))
        return do_pwrite1(argv[2], atoll(argv[3]));
    if (argc == 4 && !strcmp(argv[1], "rename"))
        return do_rename(argv[2], argv[3]);
    if (argc == 4 && !strcmp(argv[1], "seqwrite"))
        return do_seqwrite(argv[2], atol(argv[3]));
    fprintf(stderr, "usage: bench_wops create|unlink|mkdir DIR N | pwrite1 FILE OFFSET | "
                    "rename SRC DST | seqwrite FILE MIB\n");
    return 2;
}
