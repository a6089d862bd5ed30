// no-ipc-lock KIB COMMAND...: runs COMMAND with RLIMIT_MEMLOCK (soft and hard) set to KIB
// KiB and without CAP_IPC_LOCK (dropped from the bounding, inheritable and effective sets,
// so a root COMMAND does not get it back at exec): the kernel then charges what COMMAND
// pins to that limit (docs/kernel-interface.md §2.6). The lab guest's busybox has no
// setpriv/capsh that can do this. Static, for the x86 lab (scenario vsmmu-launch).
#include <errno.h>
#include <linux/capability.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: no-ipc-lock KIB COMMAND...\n"); return 2; }
    unsigned long long kib = strtoull(argv[1], NULL, 0);
    struct rlimit r = {.rlim_cur = kib * 1024, .rlim_max = kib * 1024};
    if (setrlimit(RLIMIT_MEMLOCK, &r) != 0) { perror("no-ipc-lock: setrlimit"); return 2; }
    if (prctl(PR_CAPBSET_DROP, CAP_IPC_LOCK, 0, 0, 0) != 0) { perror("no-ipc-lock: PR_CAPBSET_DROP"); return 2; }
    struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct d[2];
    if (syscall(SYS_capget, &h, d) != 0) { perror("no-ipc-lock: capget"); return 2; }
    d[0].effective &= ~(1u << CAP_IPC_LOCK);
    d[0].inheritable &= ~(1u << CAP_IPC_LOCK);
    if (syscall(SYS_capset, &h, d) != 0) { perror("no-ipc-lock: capset"); return 2; }
    execvp(argv[2], argv + 2);
    fprintf(stderr, "no-ipc-lock: exec %s: %s\n", argv[2], strerror(errno));
    return 127;
}
