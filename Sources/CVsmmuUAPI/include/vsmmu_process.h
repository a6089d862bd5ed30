// Why this header exists: the guest lifecycle watches and starts VMM processes with calls
// Glibc's Swift module does not expose usably: pidfd_open(2) has no libc wrapper on the
// build machine's glibc, fcntl(2) and prlimit(2) are variadic or take C structs.
#ifndef VSMMU_PROCESS_H
#define VSMMU_PROCESS_H

#include <stdint.h>

/// pidfd_open(2) (Linux 5.3): an fd that becomes readable when process `pid` exits.
/// Returns the fd (close-on-exec) or -errno (ESRCH: no such process; ENOSYS: old kernel).
int vsmmu_pidfd_open(int pid);

/// poll(2) on one fd for POLLIN, `timeout_ms` (-1: forever). Returns 1 readable, 0 timeout, -errno.
int vsmmu_wait_readable(int fd, int timeout_ms);

/// Clears FD_CLOEXEC so that the fd survives execve(2). Returns 0 or -errno.
int vsmmu_clear_cloexec(int fd);

/// Raises RLIMIT_MEMLOCK of process `pid` (0: this one) to at least `bytes` (soft and hard;
/// needs CAP_SYS_RESOURCE to raise the hard limit, or another process's). Never lowers.
/// Returns 0 or -errno.
int vsmmu_raise_memlock(int pid, uint64_t bytes);

/// Sets this process's soft RLIMIT_MEMLOCK to `bytes` and drops CAP_IPC_LOCK from the
/// calling thread's effective set, so that the kernel charges pinned pages against the
/// limit (the differential corpora's `memlock`); with `restore`, puts back the limit seen
/// before the first call and raises CAP_IPC_LOCK again if it is permitted. 0 or -errno.
int vsmmu_limit_memlock(int restore, uint64_t bytes);

/// execvp(3) of argv[0] with the NULL-terminated `argv`. Returns only on failure: -errno.
int vsmmu_exec(char *const argv[]);

#endif
