#define _GNU_SOURCE
#include "vsmmu_process.h"
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434  // the same number on x86_64 and aarch64
#endif

int vsmmu_pidfd_open(int pid) {
    long r = syscall(SYS_pidfd_open, pid, 0);
    if (r < 0) return -errno;
    int fd = (int)r;
    // pidfd_open sets O_CLOEXEC itself since 5.3; keep it explicit.
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    return fd;
}

int vsmmu_wait_readable(int fd, int timeout_ms) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int r;
    do { r = poll(&p, 1, timeout_ms); } while (r < 0 && errno == EINTR);
    if (r < 0) return -errno;
    return r > 0 ? 1 : 0;
}

int vsmmu_clear_cloexec(int fd) {
    int flags = fcntl(fd, F_GETFD);
    if (flags < 0) return -errno;
    if (fcntl(fd, F_SETFD, flags & ~FD_CLOEXEC) < 0) return -errno;
    return 0;
}

int vsmmu_raise_memlock(int pid, uint64_t bytes) {
    struct rlimit old;
    if (prlimit(pid, RLIMIT_MEMLOCK, NULL, &old) != 0) return -errno;
    struct rlimit want = old;
    if (want.rlim_cur != RLIM_INFINITY && want.rlim_cur < bytes) want.rlim_cur = bytes;
    if (want.rlim_max != RLIM_INFINITY && want.rlim_max < want.rlim_cur) want.rlim_max = want.rlim_cur;
    if (want.rlim_cur == old.rlim_cur && want.rlim_max == old.rlim_max) return 0;
    if (prlimit(pid, RLIMIT_MEMLOCK, &want, NULL) != 0) return -errno;
    return 0;
}

int vsmmu_exec(char *const argv[]) {
    execvp(argv[0], argv);
    return -errno;
}

#include <linux/capability.h>

// Drops (restore == 0) or gives back (restore != 0) this thread's CAP_IPC_LOCK in its
// effective set; it stays permitted, so it can be raised again.
static int ipc_lock_effective(int on) {
    struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct d[2];
    if (syscall(SYS_capget, &h, d) != 0) return -errno;
    if (on) {
        if (!(d[0].permitted & (1u << CAP_IPC_LOCK))) return 0;
        d[0].effective |= 1u << CAP_IPC_LOCK;
    } else {
        d[0].effective &= ~(1u << CAP_IPC_LOCK);
    }
    if (syscall(SYS_capset, &h, d) != 0) return -errno;
    return 0;
}

static struct rlimit memlock_saved;
static int memlock_have_saved;

int vsmmu_limit_memlock(int restore, uint64_t bytes) {
    if (restore) {
        if (memlock_have_saved && setrlimit(RLIMIT_MEMLOCK, &memlock_saved) != 0) return -errno;
        memlock_have_saved = 0;
        return ipc_lock_effective(1);
    }
    if (!memlock_have_saved) {
        if (getrlimit(RLIMIT_MEMLOCK, &memlock_saved) != 0) return -errno;
        memlock_have_saved = 1;
    }
    struct rlimit r = memlock_saved;
    r.rlim_cur = bytes;
    if (r.rlim_max != RLIM_INFINITY && r.rlim_max < bytes) r.rlim_max = bytes;
    if (setrlimit(RLIMIT_MEMLOCK, &r) != 0) return -errno;
    return ipc_lock_effective(0);
}
