#define _GNU_SOURCE
#include "vsmmu_uapi.h"

#include <errno.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

int vsmmu_ioctl(int fd, unsigned long request, void *arg) {
    int r = ioctl(fd, request, arg);
    return r < 0 ? -errno : r;
}

int vsmmu_memfd_create(const char *name, unsigned int flags) {
    int fd = (int)syscall(SYS_memfd_create, name, flags);
    return fd < 0 ? -errno : fd;
}

unsigned int vsmmu_memfd_flags(int hugetlb, unsigned int hugepage_log2) {
    unsigned int flags = 0x0001U; // MFD_CLOEXEC
    if (hugetlb) {
        flags |= 0x0004U;         // MFD_HUGETLB
        flags |= (hugepage_log2 & 0x3fU) << 26; // MFD_HUGE_SHIFT
    }
    return flags;
}
