#define _GNU_SOURCE
#include "vsmmu_uevent.h"

#include <errno.h>
#include <linux/netlink.h>
#include <poll.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <unistd.h>

int vsmmu_uevent_open(int rcvbuf) {
    int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, NETLINK_KOBJECT_UEVENT);
    if (fd < 0) return -errno;
    // As root the buffer may exceed net.core.rmem_max; otherwise take what is allowed.
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf)) != 0)
        (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    struct sockaddr_nl addr = { .nl_family = AF_NETLINK, .nl_pid = 0, .nl_groups = 1 };
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

long vsmmu_uevent_recv(int fd, void *buf, size_t len) {
    struct sockaddr_nl from;
    struct iovec iov = { .iov_base = buf, .iov_len = len };
    struct msghdr msg = { .msg_name = &from, .msg_namelen = sizeof(from), .msg_iov = &iov, .msg_iovlen = 1 };
    ssize_t n;
    do { n = recvmsg(fd, &msg, 0); } while (n < 0 && errno == EINTR);
    if (n < 0) return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    // Only the kernel (port 0) speaks on group 1; anything else is not a uevent.
    if (msg.msg_namelen != sizeof(from) || from.nl_pid != 0) return -EPERM;
    return n;
}

int vsmmu_uevent_wait(int fd, int ms) {
    struct pollfd p = { .fd = fd, .events = POLLIN };
    int r;
    do { r = poll(&p, 1, ms); } while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : (r > 0 ? 1 : 0);
}

int vsmmu_inotify_open(void) {
    int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int vsmmu_inotify_watch(int fd, const char *path) {
    int wd = inotify_add_watch(fd, path, IN_ATTRIB | IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO |
                                         IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR);
    return wd < 0 ? -errno : wd;
}

long vsmmu_inotify_read(int fd, void *buf, size_t len) {
    ssize_t n;
    do { n = read(fd, buf, len); } while (n < 0 && errno == EINTR);
    if (n < 0) return (errno == EAGAIN || errno == EWOULDBLOCK) ? -EAGAIN : -errno;
    return n;
}

int vsmmu_inotify_event(const void *buf, size_t len, size_t *offset, char *name, size_t namelen, unsigned int *mask) {
    struct inotify_event e;
    if (*offset + sizeof(e) > len || namelen == 0) return 0;
    memcpy(&e, (const char *)buf + *offset, sizeof(e));
    if (*offset + sizeof(e) + e.len > len) return 0;
    const char *n = (const char *)buf + *offset + sizeof(e);
    size_t copy = strnlen(n, e.len);
    if (copy >= namelen) copy = namelen - 1;
    memcpy(name, n, copy);
    name[copy] = 0;
    *mask = e.mask;
    *offset += sizeof(e) + e.len;
    return 1;
}

void vsmmu_inotify_flags(unsigned int *overflow, unsigned int *ignored, unsigned int *gone) {
    *overflow = IN_Q_OVERFLOW;
    *ignored = IN_IGNORED;
    *gone = IN_DELETE_SELF | IN_MOVE_SELF;
}
