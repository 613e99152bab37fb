/* Escape attempts run inside a container by fuse-tests/sandbox.rs (built there with
 * `cc -static`, bind-mounted into the container). Each mode prints one line the test reads:
 *
 *   attack local udp|tcp IFACE DST_MAC PORT   a frame to the bridge's MAC with destination
 *                                             127.0.0.1:PORT (the CVE-2020-8558 pattern);
 *                                             tcp waits 1 s for any answer from 127.0.0.1
 *                                             and prints REPLY or NOREPLY; udp prints SENT.
 *   attack syscall NAME                        tries one syscall the seccomp profile governs;
 *                                             prints "NAME ok" or "NAME errno N".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/ip.h>
#include <netinet/tcp.h>
#include <netinet/udp.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

static uint16_t csum(const void *data, size_t len, uint32_t sum) {
    const uint8_t *p = data;
    for (; len > 1; len -= 2, p += 2) sum += (uint32_t)p[0] << 8 | p[1];
    if (len) sum += (uint32_t)p[0] << 8;
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return htons((uint16_t)~sum);
}

static int parse_mac(const char *s, uint8_t mac[6]) {
    unsigned v[6];
    if (sscanf(s, "%x:%x:%x:%x:%x:%x", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5]) != 6) return -1;
    for (int i = 0; i < 6; i++) mac[i] = (uint8_t)v[i];
    return 0;
}

static int local(int argc, char **argv) {
    if (argc != 6) return 2;
    int tcp = strcmp(argv[2], "tcp") == 0;
    const char *ifname = argv[3];
    uint8_t dst[6], src[6];
    if (parse_mac(argv[4], dst)) return 2;
    uint16_t port = (uint16_t)atoi(argv[5]);

    int s = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_IP));
    if (s < 0) { printf("socket errno %d\n", errno); return 1; }
    struct ifreq ifr = {0};
    strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
    if (ioctl(s, SIOCGIFINDEX, &ifr) < 0) { printf("ifindex errno %d\n", errno); return 1; }
    int ifindex = ifr.ifr_ifindex;
    if (ioctl(s, SIOCGIFHWADDR, &ifr) < 0) { printf("hwaddr errno %d\n", errno); return 1; }
    memcpy(src, ifr.ifr_hwaddr.sa_data, 6);
    int u = socket(AF_INET, SOCK_DGRAM, 0);
    if (ioctl(u, SIOCGIFADDR, &ifr) < 0) { printf("ifaddr errno %d\n", errno); return 1; }
    struct in_addr me = ((struct sockaddr_in *)&ifr.ifr_addr)->sin_addr;

    uint8_t frame[128] = {0};
    struct ether_header *eth = (void *)frame;
    memcpy(eth->ether_dhost, dst, 6);
    memcpy(eth->ether_shost, src, 6);
    eth->ether_type = htons(ETHERTYPE_IP);
    struct iphdr *ip = (void *)(frame + sizeof *eth);
    ip->version = 4;
    ip->ihl = 5;
    ip->ttl = 64;
    ip->id = htons(0x5151);
    ip->saddr = me.s_addr;
    ip->daddr = htonl(INADDR_LOOPBACK);
    uint8_t *l4 = (uint8_t *)ip + sizeof *ip;
    size_t l4len;
    uint16_t sport = 40000 + (uint16_t)(getpid() % 20000);
    if (tcp) {
        struct tcphdr *t = (void *)l4;
        l4len = sizeof *t;
        t->source = htons(sport);
        t->dest = htons(port);
        t->seq = htonl(0x01020304);
        t->doff = 5;
        t->syn = 1;
        t->window = htons(65535);
        ip->protocol = IPPROTO_TCP;
    } else {
        struct udphdr *d = (void *)l4;
        const char msg[] = "ESCAPE";
        l4len = sizeof *d + sizeof msg - 1;
        memcpy(l4 + sizeof *d, msg, sizeof msg - 1);
        d->source = htons(sport);
        d->dest = htons(port);
        d->len = htons((uint16_t)l4len);
        ip->protocol = IPPROTO_UDP;
    }
    /* The L4 checksum covers a pseudo-header of addresses, protocol and length. */
    uint32_t pseudo = 0;
    const uint8_t *a = (const uint8_t *)&ip->saddr;
    for (int i = 0; i < 8; i += 2) pseudo += (uint32_t)a[i] << 8 | a[i + 1];
    pseudo += ip->protocol + (uint32_t)l4len;
    uint16_t c = csum(l4, l4len, pseudo);
    if (tcp) ((struct tcphdr *)l4)->check = c;
    else ((struct udphdr *)l4)->check = c;
    ip->tot_len = htons((uint16_t)(sizeof *ip + l4len));
    ip->check = csum(ip, sizeof *ip, 0);

    struct sockaddr_ll to = {0};
    to.sll_family = AF_PACKET;
    to.sll_ifindex = ifindex;
    to.sll_halen = 6;
    memcpy(to.sll_addr, dst, 6);
    size_t n = sizeof *eth + sizeof *ip + l4len;
    for (int i = 0; i < 3; i++) {
        if (sendto(s, frame, n, 0, (struct sockaddr *)&to, sizeof to) < 0) {
            printf("sendto errno %d\n", errno);
            return 1;
        }
    }
    if (!tcp) { printf("SENT\n"); return 0; }
    struct timeval tv = {.tv_sec = 0, .tv_usec = 100000};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    for (int i = 0; i < 10; i++) {
        uint8_t buf[2048];
        ssize_t r = recv(s, buf, sizeof buf, 0);
        if (r < (ssize_t)(sizeof *eth + sizeof *ip + sizeof(struct tcphdr))) continue;
        struct iphdr *rip = (void *)(buf + sizeof *eth);
        struct tcphdr *rt = (void *)((uint8_t *)rip + rip->ihl * 4);
        if (rip->protocol == IPPROTO_TCP && rip->saddr == htonl(INADDR_LOOPBACK) &&
            rt->source == htons(port) && rt->dest == htons(sport)) {
            printf("REPLY\n");
            return 0;
        }
    }
    printf("NOREPLY\n");
    return 0;
}

static long try_syscall(const char *name) {
    if (!strcmp(name, "unshare-user")) return syscall(SYS_unshare, CLONE_NEWUSER);
    if (!strcmp(name, "unshare-mount")) return syscall(SYS_unshare, CLONE_NEWNS);
    if (!strcmp(name, "clone-newuser")) {
        long pid = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
        if (pid == 0) _exit(0);
        if (pid > 0) waitpid((pid_t)pid, NULL, 0);
        return pid < 0 ? -1 : 0;
    }
    if (!strcmp(name, "keyctl")) return syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3, 0);
    if (!strcmp(name, "add_key")) return syscall(SYS_add_key, "user", "strata", "x", 1, -3);
    if (!strcmp(name, "bpf")) return syscall(SYS_bpf, 0, NULL, 0);
    if (!strcmp(name, "perf_event_open")) return syscall(SYS_perf_event_open, NULL, 0, -1, -1, 0);
    if (!strcmp(name, "mount")) return mount("none", "/mnt", "tmpfs", 0, NULL);
    if (!strcmp(name, "getpid")) return syscall(SYS_getpid) > 0 ? 0 : -1;
    errno = EINVAL;
    return -2;
}

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "local")) return local(argc, argv);
    if (argc == 3 && !strcmp(argv[1], "syscall")) {
        errno = 0;
        long r = try_syscall(argv[2]);
        if (r == -2) { fprintf(stderr, "unknown syscall test %s\n", argv[2]); return 2; }
        if (r < 0) printf("%s errno %d\n", argv[2], errno);
        else printf("%s ok\n", argv[2]);
        return 0;
    }
    fprintf(stderr, "usage: attack local udp|tcp IFACE MAC PORT | attack syscall NAME\n");
    return 2;
}
