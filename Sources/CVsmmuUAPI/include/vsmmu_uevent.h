// Why this header exists: the kernel's change signals (docs/kernel-interface.md §12) need
// struct sockaddr_nl and struct inotify_event, which Swift cannot use from Glibc's module.
#ifndef VSMMU_UEVENT_H
#define VSMMU_UEVENT_H

#include <stddef.h>

/// A NETLINK_KOBJECT_UEVENT socket bound to the kernel's group (1), non-blocking, with a
/// receive buffer of at least `rcvbuf` bytes where allowed. Returns the fd or -errno.
int vsmmu_uevent_open(int rcvbuf);

/// One queued datagram into `buf`: its length; -EAGAIN when none is queued; -ENOBUFS once
/// after datagrams were dropped; -EPERM for a datagram not sent by the kernel (dropped).
long vsmmu_uevent_recv(int fd, void *buf, size_t len);

/// Waits up to `ms` milliseconds for a datagram. Returns 1 when one is queued, 0 on timeout, -errno.
int vsmmu_uevent_wait(int fd, int ms);

/// inotify_init1(IN_NONBLOCK | IN_CLOEXEC). Returns the fd or -errno.
int vsmmu_inotify_open(void);

/// A watch of directory `path` for attribute changes, creation, deletion and moves of its
/// entries and for its own removal. Returns the watch descriptor or -errno.
int vsmmu_inotify_watch(int fd, const char *path);

/// read(2) of the queued events into `buf`: bytes read, -EAGAIN when none is queued, -errno.
long vsmmu_inotify_read(int fd, void *buf, size_t len);

/// The event at `*offset` of what vsmmu_inotify_read returned: its name into `name`
/// (NUL-terminated, cut to `namelen` - 1 bytes) and its mask; `*offset` moves past it.
/// Returns 1, or 0 when no whole event is left.
int vsmmu_inotify_event(const void *buf, size_t len, size_t *offset, char *name, size_t namelen, unsigned int *mask);

/// IN_Q_OVERFLOW, IN_IGNORED, IN_DELETE_SELF | IN_MOVE_SELF, in that order.
void vsmmu_inotify_flags(unsigned int *overflow, unsigned int *ignored, unsigned int *gone);

#endif
