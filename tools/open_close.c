/*
 * open_close FILE N [read]: times N × open(O_RDONLY) (+ one 4 KiB read with "read") + close of
 * FILE and prints the mean per iteration. It shows what an OPEN (and the RELEASE after it)
 * costs on a FUSE mount: compare a mount that answers OPEN (`strata mount --io cached`, or
 * `mount --rw --io passthrough`) with one that does not (`--io no-open`) and kernel overlayfs.
 *
 * Build: cc -O2 -o open_close tools/open_close.c
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: open_close FILE N [read]\n");
        return 2;
    }
    long n = atol(argv[2]);
    char buf[4096];
    struct timespec a, z;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            perror("open");
            return 1;
        }
        if (argc > 3 && read(fd, buf, sizeof buf) < 0) {
            perror("read");
            return 1;
        }
        close(fd);
    }
    clock_gettime(CLOCK_MONOTONIC, &z);
    double ns = (z.tv_sec - a.tv_sec) * 1e9 + (z.tv_nsec - a.tv_nsec);
    printf("%.2f us per open+close\n", ns / n / 1000.0);
    return 0;
}
