// vsmmu-remote: the strict remote executor. docs/remote-executor.md is the contract; this
// file only implements it. It runs on the lab guest (static, aarch64) and performs the
// kernel calls of a vsmmu that runs elsewhere. Strict on purpose: only listed requests,
// only listed paths, only fds it opened itself, and every read of a request is
// bounds-checked, so no input can crash it or make it touch something it should not.
#define _GNU_SOURCE
#include "vsmmu_uapi.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#define PROTOCOL_VERSION 1
#define MAX_FRAME (16u << 20)      // frame length limit (both directions)
#define MAX_ARG 256                // ioctl struct limit
#define MAX_READ (1u << 20)        // READ returns at most this much
#define MAX_FDINFO (16u << 10)     // fdinfo text per fd in FDS
#define MAX_INVALIDATE (64u << 10) // HWPT_INVALIDATE entry array limit
#define MAX_FDS 1024               // RLIMIT_NOFILE is capped to this, so held[] covers every fd
#define MAX_REGIONS 256
#define MALFORMED INT_MIN          // handler result: -EPROTO and no payload, even for IOCTL
#define TEST_OP_TRIGGER_VEVENT 17  // not in vsmmu_uapi.h (docs/kernel-interface.md §7.2)

enum { OP_HELLO, OP_OPEN, OP_CLOSE, OP_IOCTL, OP_READ, OP_READLINK, OP_LISTDIR, OP_WRITE,
       OP_MEMFD, OP_STAT, OP_CHOWN, OP_MMAP_ANON, OP_MUNMAP, OP_FDS, OP_BYE, OP_SPAWN, OP_WAIT, OP_MEMLOCK, OP_COUNT };
static const char *const op_names[OP_COUNT] = {
    "HELLO", "OPEN", "CLOSE", "IOCTL", "READ", "READLINK", "LISTDIR", "WRITE",
    "MEMFD", "STAT", "CHOWN", "MMAP_ANON", "MUNMAP", "FDS", "BYE", "SPAWN", "WAIT", "MEMLOCK"};

static const char *root = "";       // --root: the directory every /dev and /sys path is beneath
static int rootfd = -1;              // O_PATH of root ("/" without --root); paths never leave it
static int no_openat2;               // VSMMU_REMOTE_NO_OPENAT2=1 (tests), or the kernel lacks it
static FILE *logfile;                  // --log: one line per request
static char detail[160];             // what the current request was about, for the log
static unsigned char held[MAX_FDS];  // the fds held for the client: the only ones it may use
static struct { uint64_t addr, size; } regions[MAX_REGIONS]; // MMAP_ANON regions (size 0 = free)

// ---- Request parsing: a cursor that refuses to read past the body ----

struct in { uint8_t *p; size_t n; int bad; };

static uint8_t *take(struct in *c, size_t n) {
    if (c->bad || c->n < n) { c->bad = 1; return NULL; }
    uint8_t *r = c->p;
    c->p += n;
    c->n -= n;
    return r;
}
static uint32_t le32(const uint8_t *b) {
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}
static uint32_t get_u32(struct in *c) { uint8_t *b = take(c, 4); return b ? le32(b) : 0; }
static uint64_t get_u64(struct in *c) { uint64_t lo = get_u32(c); return lo | (uint64_t)get_u32(c) << 32; }
static uint8_t *get_bytes(struct in *c, uint32_t *n) {
    *n = get_u32(c);
    uint8_t *b = take(c, *n);
    if (!b) *n = 0;
    return b;
}
// Every argument read and nothing left over: anything else is a malformed request.
static int args_ok(const struct in *c) { return !c->bad && c->n == 0; }

// ---- Response building ----

struct out { uint8_t *p; size_t n, cap; int oom; };

static void put(struct out *o, const void *d, size_t n) {
    if (o->oom) return;
    if (o->n + n > o->cap) {
        size_t cap = o->cap ? o->cap : 256;
        while (cap < o->n + n) cap *= 2;
        uint8_t *p = realloc(o->p, cap);
        if (!p) { o->oom = 1; return; }
        o->p = p;
        o->cap = cap;
    }
    if (n) memcpy(o->p + o->n, d, n);
    o->n += n;
}
static void put_u32(struct out *o, uint32_t v) {
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    put(o, b, 4);
}
static void put_u64(struct out *o, uint64_t v) { put_u32(o, (uint32_t)v); put_u32(o, (uint32_t)(v >> 32)); }
static void put_bytes(struct out *o, const void *d, size_t n) { put_u32(o, (uint32_t)n); put(o, d, n); }
static void patch_u32(struct out *o, size_t at, uint32_t v) {
    if (!o->oom) for (unsigned i = 0; i < 4; i++) o->p[at + i] = (uint8_t)(v >> (8 * i));
}

// ---- The fd set ----

static int is_held(int32_t fd) { return fd >= 0 && fd < MAX_FDS && held[fd]; }
static int hold(int fd) {
    if (fd >= MAX_FDS) { close(fd); return -EMFILE; } // cannot happen with the rlimit; be safe
    held[fd] = 1;
    return fd;
}

// ---- Paths ----

// A clean absolute path: starts with '/', no NUL, no empty, "." or ".." component.
// Rejecting "." and "//" too keeps the allowlist matching below exact.
static int clean_path(const uint8_t *s, uint32_t n, char *out, size_t outsz) {
    if (n == 0 || n >= outsz || s[0] != '/' || memchr(s, 0, n)) return 0;
    memcpy(out, s, n);
    out[n] = 0;
    for (const char *c = out; *c; ) {              // c at a '/'
        const char *e = strchr(c + 1, '/');
        size_t len = e ? (size_t)(e - c - 1) : strlen(c + 1);
        if (len == 0 || (len == 1 && c[1] == '.') || (len == 2 && c[1] == '.' && c[2] == '.')) return 0;
        if (!e) break;
        c = e;
    }
    return 1;
}
static int starts(const char *p, const char *pre) { return strncmp(p, pre, strlen(pre)) == 0; }
// prefix + one component (no '/', chars from `set` if given) + suffix.
static int one_component(const char *p, const char *pre, const char *suf, const char *set) {
    size_t lp = strlen(pre), ls = strlen(suf), n = strlen(p);
    if (n <= lp + ls || !starts(p, pre) || strcmp(p + n - ls, suf) != 0) return 0;
    for (size_t i = lp; i < n - ls; i++)
        if (p[i] == '/' || (set && !strchr(set, p[i]))) return 0;
    return 1;
}
static int vfio_cdev(const char *p) { return one_component(p, "/dev/vfio/devices/vfio", "", "0123456789"); }

// /proc/<pid>/<rest>: the reads that find which process holds a VFIO device open
// (docs/remote-executor.md: a device is never unbound while a process holds it).
static int proc_pid(const char *p, const char *rest) {
    if (!starts(p, "/proc/")) return 0;
    const char *q = p + 6;
    size_t digits = strspn(q, "0123456789");
    if (digits == 0 || digits > 10) return 0;
    return strcmp(q + digits, rest) == 0;
}
static int proc_fd_link(const char *p) {
    if (!starts(p, "/proc/")) return 0;
    const char *q = p + 6;
    size_t digits = strspn(q, "0123456789");
    if (digits == 0 || digits > 10 || strncmp(q + digits, "/fd/", 4) != 0) return 0;
    const char *fd = q + digits + 4;
    return *fd && strspn(fd, "0123456789") == strlen(fd) && strlen(fd) <= 10;
}
static int allow_open(const char *p) { return strcmp(p, "/dev/iommu") == 0 || vfio_cdev(p); }
static int allow_sys(const char *p) { return starts(p, "/sys/"); }
// /proc/self/smaps: the kernel's page size (KernelPageSize:) for discovery's kernel.pageSize.
static int allow_read(const char *p) {
    return allow_sys(p) || proc_pid(p, "/comm") || proc_pid(p, "/stat") || strcmp(p, "/proc/self/smaps") == 0;
}
static int allow_link(const char *p) { return allow_sys(p) || proc_fd_link(p); }
static int allow_listdir(const char *p) {
    return allow_sys(p) || strcmp(p, "/dev/vfio/devices") == 0 || strcmp(p, "/proc") == 0 || proc_pid(p, "/fd");
}
static int allow_write(const char *p) {
    return one_component(p, "/sys/bus/pci/devices/", "/driver_override", "0123456789abcdefABCDEF:.") ||
           one_component(p, "/sys/bus/pci/drivers/", "/unbind", NULL) ||
           strcmp(p, "/sys/bus/pci/drivers_probe") == 0 ||
           one_component(p, "/sys/kernel/debug/fail_iommufd/", "", NULL);
}
static int allow_stat(const char *p) { return starts(p, "/dev/") || starts(p, "/sys/"); }

// Checks the client's path against `allow` and writes it relative to root (no leading
// '/') to rel. 0 or -errno.
static int resolve(const uint8_t *s, uint32_t n, int (*allow)(const char *), char *rel) {
    char path[PATH_MAX];
    int ok = clean_path(s, n, path, sizeof path);
    size_t k = 0; // the log gets the path with unprintable bytes as '?'
    for (; k < n && k < 120; k++) detail[k] = s[k] >= 0x20 && s[k] < 0x7f ? (char)s[k] : '?';
    detail[k] = 0;
    if (!ok || !allow(path)) return -EACCES;
    memcpy(rel, path + 1, strlen(path)); // drops the '/', keeps the NUL
    return 0;
}

// ---- Resolution beneath root: a link inside the tree (sysfs is full of relative ones)
// is followed, but nothing resolves outside root — not an absolute link, not "..". ----

#ifndef RESOLVE_BENEATH
#define RESOLVE_NO_MAGICLINKS 0x02
#define RESOLVE_BENEATH 0x08
#endif
#ifndef SYS_openat2
#define SYS_openat2 437 // the same number on every architecture
#endif
struct vsmmu_open_how { uint64_t flags, mode, resolve; };

#define MAX_WALK_DEPTH 128
#define MAX_LINKS 40

// openat2's fallback (kernels before 5.6): one component at a time from root, each
// directory opened O_PATH|O_NOFOLLOW from the one before (nothing can be swapped under
// it), a link expanded by hand: absolute -> EXDEV, ".." at root -> EXDEV.
static int walk_beneath(const char *rel, int flags) {
    char rest[2 * PATH_MAX], name[NAME_MAX + 1], target[PATH_MAX], tmp[2 * PATH_MAX];
    int dirs[MAX_WALK_DEPTH];
    int depth = 0, links = 0, result;
    if (strlen(rel) >= sizeof rest) return -ENAMETOOLONG;
    strcpy(rest, rel);
    dirs[0] = rootfd;
    const char *p = rest;
    for (;;) {
        while (*p == '/') p++;
        if (!*p) { result = openat(dirs[depth], ".", flags); result = result < 0 ? -errno : result; break; }
        size_t len = strcspn(p, "/");
        if (len > NAME_MAX) { result = -ENAMETOOLONG; break; }
        memcpy(name, p, len);
        name[len] = 0;
        p += len;
        const char *after = p;
        while (*after == '/') after++;
        int last = *after == 0;
        if (strcmp(name, ".") == 0) continue;
        if (strcmp(name, "..") == 0) {
            if (depth == 0) { result = -EXDEV; break; }
            close(dirs[depth--]);
            continue;
        }
        ssize_t n = readlinkat(dirs[depth], name, target, sizeof target - 1);
        if (n >= 0) {
            target[n] = 0;
            if (++links > MAX_LINKS) { result = -ELOOP; break; }
            if (target[0] == '/') { result = -EXDEV; break; }
            if ((size_t)snprintf(tmp, sizeof tmp, "%s%s", target, p) >= sizeof tmp) { result = -ENAMETOOLONG; break; }
            strcpy(rest, tmp);
            p = rest;
            continue;
        }
        int fd = last ? openat(dirs[depth], name, flags | O_NOFOLLOW)
                      : openat(dirs[depth], name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0) {
            // ELOOP/ENOTDIR: it became a link after readlinkat looked; look again.
            if ((errno == ELOOP || errno == ENOTDIR) && ++links <= MAX_LINKS) { p -= len; continue; }
            result = -errno;
            break;
        }
        struct stat st;
        if ((flags & O_PATH) && last && fstat(fd, &st) == 0 && S_ISLNK(st.st_mode)) { // O_PATH opened the link itself
            close(fd);
            if (++links > MAX_LINKS) { result = -ELOOP; break; }
            p -= len;
            continue;
        }
        if (last) { result = fd; break; }
        if (depth + 1 >= MAX_WALK_DEPTH) { close(fd); result = -ENAMETOOLONG; break; }
        dirs[++depth] = fd;
    }
    while (depth > 0) close(dirs[depth--]);
    return result;
}

// open(2) of rel beneath root. fd or -errno.
static int open_beneath(const char *rel, int flags) {
    flags |= O_CLOEXEC;
    if (!(flags & O_PATH)) flags |= O_NOCTTY; // openat2 refuses O_PATH with other flags
    if (!*rel) rel = ".";
    if (!no_openat2) {
        struct vsmmu_open_how how = {.flags = (uint64_t)flags, .resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS};
        int fd;
        do fd = (int)syscall(SYS_openat2, rootfd, rel, &how, sizeof how); while (fd < 0 && errno == EINTR);
        if (fd >= 0) return fd;
        if (errno != ENOSYS && errno != EPERM) return -errno; // EPERM: a seccomp filter
        no_openat2 = 1;
    }
    int fd;
    do fd = walk_beneath(rel, flags); while (fd == -EINTR);
    return fd;
}

// The directory holding rel's last component (opened beneath root), and that component,
// for calls that must not follow it (READLINK, CHOWN). fd or -errno.
static int parent_beneath(const char *rel, const char **last) {
    const char *slash = strrchr(rel, '/');
    char dir[PATH_MAX];
    if (!slash) { *last = rel; return open_beneath("", O_PATH | O_DIRECTORY); }
    memcpy(dir, rel, (size_t)(slash - rel));
    dir[slash - rel] = 0;
    *last = slash + 1;
    return open_beneath(dir, O_PATH | O_DIRECTORY);
}

// ---- File operations ----

static int op_open(struct in *c, struct out *o) {
    (void)o;
    uint32_t n, flags;
    uint8_t *s = get_bytes(c, &n);
    flags = get_u32(c);
    if (!args_ok(c)) return MALFORMED;
    char rel[PATH_MAX];
    int e = resolve(s, n, allow_open, rel);
    if (e) return e;
    // Only bits with the same value on x86_64 and aarch64 (O_DIRECTORY etc. differ), and
    // never O_CREAT/O_TRUNC on a device path.
    if (flags & ~(uint32_t)(O_ACCMODE | O_NONBLOCK | O_CLOEXEC)) return -EINVAL;
    int fd = open_beneath(rel, (int)flags);
    return fd < 0 ? fd : hold(fd);
}

static int op_close(struct in *c, struct out *o) {
    (void)o;
    int32_t fd = (int32_t)get_u32(c);
    if (!args_ok(c)) return MALFORMED;
    snprintf(detail, sizeof detail, "fd=%d", fd);
    if (!is_held(fd)) return -EBADF;
    held[fd] = 0; // gone whatever close says (Linux frees the fd even on EINTR)
    return close(fd) < 0 && errno != EINTR ? -errno : 0;
}

// Reads up to max bytes of an open fd, then closes it; returns bytes read or -errno.
static int read_fd(int fd, uint8_t *buf, size_t max) {
    if (fd < 0) return fd;
    size_t got = 0;
    while (got < max) {
        ssize_t r = read(fd, buf + got, max - got);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) { int e = errno; close(fd); return -e; }
        if (r == 0) break;
        got += (size_t)r;
    }
    close(fd);
    return (int)got;
}

// Reads up to max bytes of an absolute path of this machine (/proc/self: the executor's own).
static int read_file(const char *path, uint8_t *buf, size_t max) {
    int fd;
    do fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY); while (fd < 0 && errno == EINTR);
    return read_fd(fd < 0 ? -errno : fd, buf, max);
}

static int op_read(struct in *c, struct out *o) {
    uint32_t n;
    uint8_t *s = get_bytes(c, &n);
    if (!args_ok(c)) return MALFORMED;
    char rel[PATH_MAX];
    int e = resolve(s, n, allow_read, rel);
    if (e) return e;
    int fd = open_beneath(rel, O_RDONLY);
    if (fd < 0) return fd;
    uint8_t *buf = malloc(MAX_READ);
    if (!buf) { close(fd); return -ENOMEM; }
    int r = read_fd(fd, buf, MAX_READ);
    if (r >= 0) put_bytes(o, buf, (size_t)r);
    free(buf);
    return r;
}

static int op_readlink(struct in *c, struct out *o) {
    uint32_t n;
    uint8_t *s = get_bytes(c, &n);
    if (!args_ok(c)) return MALFORMED;
    char rel[PATH_MAX], target[PATH_MAX];
    int e = resolve(s, n, allow_link, rel);
    if (e) return e;
    const char *last;
    int dir = parent_beneath(rel, &last);
    if (dir < 0) return dir;
    ssize_t r = readlinkat(dir, last, target, sizeof target);
    e = errno;
    close(dir);
    if (r < 0) return -e;
    put_bytes(o, target, (size_t)r);
    return 0;
}

static int op_listdir(struct in *c, struct out *o) {
    uint32_t n;
    uint8_t *s = get_bytes(c, &n);
    if (!args_ok(c)) return MALFORMED;
    char rel[PATH_MAX];
    int e = resolve(s, n, allow_listdir, rel);
    if (e) return e;
    int fd = open_beneath(rel, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return fd;
    DIR *d = fdopendir(fd);
    if (!d) { e = errno; close(fd); return -e; }
    size_t at = o->n;
    uint32_t count = 0;
    put_u32(o, 0);
    struct dirent *ent;
    while ((ent = readdir(d))) {
        if (strcmp(ent->d_name, ".") == 0 || strcmp(ent->d_name, "..") == 0) continue;
        put_bytes(o, ent->d_name, strlen(ent->d_name));
        count++;
    }
    closedir(d);
    patch_u32(o, at, count);
    return (int)count;
}

static int op_write(struct in *c, struct out *o) {
    (void)o;
    uint32_t n, dn;
    uint8_t *s = get_bytes(c, &n);
    uint8_t *data = get_bytes(c, &dn);
    if (!args_ok(c)) return MALFORMED;
    char rel[PATH_MAX];
    int e = resolve(s, n, allow_write, rel);
    if (e) return e;
    int fd = open_beneath(rel, O_WRONLY | O_TRUNC); // no O_CREAT: only existing attributes are written
    if (fd < 0) return fd;
    ssize_t r;
    do r = write(fd, data ? data : (uint8_t *)"", dn); while (r < 0 && errno == EINTR);
    e = r < 0 ? -errno : (int)r;
    close(fd);
    return e;
}

static int op_memfd(struct in *c, struct out *o) {
    (void)o;
    uint32_t n;
    uint8_t *s = get_bytes(c, &n);
    uint64_t size = get_u64(c);
    uint32_t flags = get_u32(c);
    if (!args_ok(c)) return MALFORMED;
    char name[250]; // memfd names are at most 249 bytes
    if (n >= sizeof name || (n && memchr(s, 0, n)) || size > (uint64_t)INT64_MAX) return -EINVAL;
    if (n) memcpy(name, s, n);
    name[n] = 0;
    snprintf(detail, sizeof detail, "%.100s size=%llu", name, (unsigned long long)size);
    int fd = memfd_create(name, flags | MFD_CLOEXEC);
    if (fd < 0) return -errno;
    int r;
    do r = ftruncate(fd, (off_t)size); while (r < 0 && errno == EINTR);
    if (r < 0) { int e = errno; close(fd); return -e; }
    return hold(fd);
}

static int op_stat(struct in *c, struct out *o) {
    uint32_t n;
    uint8_t *s = get_bytes(c, &n);
    if (!args_ok(c)) return MALFORMED;
    char rel[PATH_MAX];
    int e = resolve(s, n, allow_stat, rel);
    if (e) return e;
    int fd = open_beneath(rel, O_PATH);
    if (fd < 0) return fd;
    struct stat st;
    e = fstat(fd, &st) < 0 ? -errno : 0;
    close(fd);
    if (e) return e;
    put_u32(o, st.st_mode);
    put_u32(o, st.st_uid);
    put_u32(o, st.st_gid);
    return 0;
}

static int op_chown(struct in *c, struct out *o) {
    (void)o;
    uint32_t n;
    uint8_t *s = get_bytes(c, &n);
    uint32_t uid = get_u32(c), gid = get_u32(c);
    if (!args_ok(c)) return MALFORMED;
    char rel[PATH_MAX];
    int e = resolve(s, n, vfio_cdev, rel);
    if (e) return e;
    const char *last;
    int dir = parent_beneath(rel, &last);
    if (dir < 0) return dir;
    // NOFOLLOW: change the node itself, never what a planted symlink points at.
    e = fchownat(dir, last, uid, gid, AT_SYMLINK_NOFOLLOW) < 0 ? -errno : 0;
    close(dir);
    return e;
}

// ---- Memory for IOAS_MAP ----

static int op_mmap_anon(struct in *c, struct out *o) {
    uint64_t size = get_u64(c);
    if (!args_ok(c)) return MALFORMED;
    snprintf(detail, sizeof detail, "size=%llu", (unsigned long long)size);
    if (size == 0 || size > SIZE_MAX / 2) return -EINVAL;
    int slot = -1;
    for (int i = 0; i < MAX_REGIONS && slot < 0; i++) if (!regions[i].size) slot = i;
    if (slot < 0) return -ENOMEM;
    void *p = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return -errno;
    regions[slot].addr = (uintptr_t)p;
    regions[slot].size = size;
    put_u64(o, (uintptr_t)p);
    return 0;
}

static int op_munmap(struct in *c, struct out *o) {
    (void)o;
    uint64_t addr = get_u64(c), size = get_u64(c);
    if (!args_ok(c)) return MALFORMED;
    snprintf(detail, sizeof detail, "addr=0x%llx size=%llu", (unsigned long long)addr, (unsigned long long)size);
    // Exactly a region MMAP_ANON returned: never unmap the executor's own memory.
    for (int i = 0; i < MAX_REGIONS; i++) {
        if (regions[i].size && regions[i].addr == addr && regions[i].size == size) {
            if (munmap((void *)(uintptr_t)addr, (size_t)size) < 0) return -errno;
            regions[i].size = 0;
            return 0;
        }
    }
    return -EINVAL;
}

// [va, va+len) inside one region.
static int in_region(uint64_t va, uint64_t len) {
    for (int i = 0; i < MAX_REGIONS; i++)
        if (regions[i].size && va >= regions[i].addr && len <= regions[i].size &&
            va - regions[i].addr <= regions[i].size - len) return 1;
    return 0;
}

// ---- IOCTL: the table of accepted requests ----

// How the one pointer field's buffer length follows from the struct.
enum ptr_len { NO_PTR, LEN_U32, LEN_IOVAS, LEN_ENTRIES };
// Checks beyond sizes, done before the call.
enum extra { NONE, MAP_IN_REGION, MAPFILE_FD, VEVENTQ_FD, TEST_OP, BIND };

struct ioctl_rule {
    uint32_t request;
    const char *name;
    uint32_t min_size;        // = the struct size (the doc's "min size" column)
    enum ptr_len len;
    size_t ptr_off;           // u64 pointer field
    size_t len_off, num_off;  // u32 fields giving its length: len, or len × num
    enum extra extra;
};

#define R(req, st, ...) {VSMMU_##req, #req, sizeof(struct vsmmu_##st), __VA_ARGS__}
#define F(st, f) offsetof(struct vsmmu_##st, f)
static const struct ioctl_rule rules[] = {
    R(IOMMU_DESTROY, iommu_destroy, NO_PTR, 0, 0, 0, NONE),
    R(IOMMU_IOAS_ALLOC, iommu_ioas_alloc, NO_PTR, 0, 0, 0, NONE),
    R(IOMMU_IOAS_IOVA_RANGES, iommu_ioas_iova_ranges, LEN_IOVAS, F(iommu_ioas_iova_ranges, allowed_iovas),
      F(iommu_ioas_iova_ranges, num_iovas), 0, NONE),
    R(IOMMU_IOAS_MAP, iommu_ioas_map, NO_PTR, 0, 0, 0, MAP_IN_REGION),
    R(IOMMU_IOAS_UNMAP, iommu_ioas_unmap, NO_PTR, 0, 0, 0, NONE),
    R(IOMMU_OPTION, iommu_option, NO_PTR, 0, 0, 0, NONE),
    R(IOMMU_HWPT_ALLOC, iommu_hwpt_alloc, LEN_U32, F(iommu_hwpt_alloc, data_uptr), F(iommu_hwpt_alloc, data_len), 0, NONE),
    R(IOMMU_GET_HW_INFO, iommu_hw_info, LEN_U32, F(iommu_hw_info, data_uptr), F(iommu_hw_info, data_len), 0, NONE),
    R(IOMMU_HWPT_INVALIDATE, iommu_hwpt_invalidate, LEN_ENTRIES, F(iommu_hwpt_invalidate, data_uptr),
      F(iommu_hwpt_invalidate, entry_len), F(iommu_hwpt_invalidate, entry_num), NONE),
    R(IOMMU_IOAS_MAP_FILE, iommu_ioas_map_file, NO_PTR, 0, 0, 0, MAPFILE_FD),
    R(IOMMU_VIOMMU_ALLOC, iommu_viommu_alloc, LEN_U32, F(iommu_viommu_alloc, data_uptr), F(iommu_viommu_alloc, data_len), 0, NONE),
    R(IOMMU_VDEVICE_ALLOC, iommu_vdevice_alloc, NO_PTR, 0, 0, 0, NONE),
    R(IOMMU_VEVENTQ_ALLOC, iommu_veventq_alloc, NO_PTR, 0, 0, 0, VEVENTQ_FD),
    R(IOMMU_HW_QUEUE_ALLOC, iommu_hw_queue_alloc, NO_PTR, 0, 0, 0, NONE),
    R(IOMMU_TEST_CMD, iommu_test_cmd, NO_PTR, 0, 0, 0, TEST_OP),
    R(VFIO_DEVICE_GET_INFO, vfio_device_info, NO_PTR, 0, 0, 0, NONE),
    R(VFIO_DEVICE_BIND_IOMMUFD, vfio_device_bind_iommufd, NO_PTR, 0, 0, 0, BIND),
    R(VFIO_DEVICE_ATTACH_IOMMUFD_PT, vfio_device_attach_iommufd_pt, NO_PTR, 0, 0, 0, NONE),
    R(VFIO_DEVICE_DETACH_IOMMUFD_PT, vfio_device_detach_iommufd_pt, NO_PTR, 0, 0, 0, NONE),
};

static uint32_t at32(const uint8_t *a, size_t off) { uint32_t v; memcpy(&v, a + off, 4); return v; }
static uint64_t at64(const uint8_t *a, size_t off) { uint64_t v; memcpy(&v, a + off, 8); return v; }

static int check_extra(const struct ioctl_rule *r, const uint8_t *a) {
    switch (r->extra) {
    case MAP_IN_REGION:
        return in_region(at64(a, F(iommu_ioas_map, user_va)), at64(a, F(iommu_ioas_map, length))) ? 0 : -EFAULT;
    case MAPFILE_FD:
        return is_held((int32_t)at32(a, F(iommu_ioas_map_file, fd))) ? 0 : -EBADF;
    case TEST_OP: {
        uint32_t op = at32(a, F(iommu_test_cmd, op));
        return op == VSMMU_IOMMU_TEST_OP_MOCK_DOMAIN || op == VSMMU_IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE ||
               op == TEST_OP_TRIGGER_VEVENT ? 0 : -EINVAL;
    }
    case BIND:
        if (at32(a, F(vfio_device_bind_iommufd, flags)) != 0) return -EINVAL; // no token pointer
        return is_held((int32_t)at32(a, F(vfio_device_bind_iommufd, iommufd))) ? 0 : -EBADF;
    default:
        return 0;
    }
}

// Checks and performs one ioctl. `a` (alen bytes) and `buf` (blen bytes, the caller's
// buffer) are updated in place with what the kernel wrote; pointer fields keep the
// caller's values.
static int do_ioctl(int32_t fd, uint32_t req, uint8_t *a, uint32_t alen, uint32_t nbuf, uint8_t *buf, uint32_t blen) {
    snprintf(detail, sizeof detail, "fd=%d request=0x%x", fd, req);
    if (!is_held(fd)) return -EBADF;
    const struct ioctl_rule *r = NULL;
    for (size_t i = 0; i < sizeof rules / sizeof rules[0]; i++) if (rules[i].request == req) r = &rules[i];
    if (!r) return -ENOTTY;
    snprintf(detail, sizeof detail, "fd=%d %s", fd, r->name);
    if (alen < r->min_size || alen > MAX_ARG) return -EINVAL;
    // The kernel trusts the leading size/argsz (VFIO writes capabilities up to argsz):
    // it must not exceed our copy.
    if (at32(a, 0) > alen) return -EINVAL;
    if (nbuf != (r->len != NO_PTR)) return -EINVAL;
    if (r->len != NO_PTR) {
        uint64_t want = at32(a, r->len_off);
        if (r->len == LEN_IOVAS) want *= sizeof(struct vsmmu_iommu_iova_range);
        if (r->len == LEN_ENTRIES) want *= at32(a, r->num_off);
        if (want != blen || (r->len == LEN_ENTRIES && want > MAX_INVALIDATE)) return -EINVAL;
    }
    int e = check_extra(r, a);
    if (e) return e;

    // Our own aligned copies; the struct copy is MAX_ARG so whatever the kernel writes
    // (at most size/argsz bytes) stays inside it.
    uint8_t arg[MAX_ARG] __attribute__((aligned(8))) = {0};
    memcpy(arg, a, alen);
    uint8_t *kbuf = NULL;
    uint64_t user_ptr = 0;
    if (r->len != NO_PTR) {
        user_ptr = at64(arg, r->ptr_off);
        kbuf = malloc(blen ? blen : 1);
        if (!kbuf) return -ENOMEM;
        memcpy(kbuf, buf, blen);
        // An empty buffer stays NULL if the caller's was NULL (the kernel may tell them apart).
        uint64_t kptr = blen || user_ptr ? (uintptr_t)kbuf : 0;
        memcpy(arg + r->ptr_off, &kptr, 8);
    }
    int ret = ioctl(fd, (unsigned long)req, arg);
    int err = errno;
    if (kbuf) {
        memcpy(buf, kbuf, blen);
        free(kbuf);
        memcpy(arg + r->ptr_off, &user_ptr, 8);
    }
    memcpy(a, arg, alen);
    if (ret < 0) return -err;
    if (r->extra == VEVENTQ_FD) {
        int evfd = (int)at32(a, F(iommu_veventq_alloc, out_veventq_fd));
        if (evfd >= 0) hold(evfd);
    }
    return ret;
}

static int op_ioctl(struct in *c, struct out *o) {
    int32_t fd = (int32_t)get_u32(c);
    uint32_t req = get_u32(c), alen, blen = 0, n;
    uint8_t *a = get_bytes(c, &alen);
    uint8_t *tail = c->p; // "u32 nbuf, nbuf × bytes": echoed back as it is after the call
    uint32_t nbuf = get_u32(c);
    uint8_t *buf = NULL;
    for (uint32_t i = 0; i < nbuf && !c->bad; i++) {
        uint8_t *b = get_bytes(c, &n);
        if (i == 0) { buf = b; blen = n; }
    }
    if (!args_ok(c)) return MALFORMED;
    size_t tail_len = (size_t)(c->p - tail);
    int r = do_ioctl(fd, req, a, alen, nbuf, buf, blen);
    put_bytes(o, a, alen); // the payload is present even on failure
    put(o, tail, tail_len);
    return r;
}

// ---- HELLO, FDS ----

static int op_hello(struct in *c, struct out *o) {
    if (!args_ok(c)) return MALFORMED;
    struct utsname u;
    char d[2 * sizeof u.release + 2];
    if (uname(&u) < 0) return -errno;
    int n = snprintf(d, sizeof d, "%s %s", u.release, u.machine);
    put_bytes(o, d, (size_t)n);
    return PROTOCOL_VERSION;
}

static int op_fds(struct in *c, struct out *o) {
    if (!args_ok(c)) return MALFORMED;
    uint8_t *info = malloc(MAX_FDINFO);
    if (!info) return -ENOMEM;
    size_t at = o->n;
    uint32_t count = 0;
    put_u32(o, 0);
    for (int fd = 0; fd < MAX_FDS; fd++) {
        if (!held[fd]) continue;
        char p[64], target[PATH_MAX];
        // The real /proc (not --root): these are the executor's own fds.
        snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
        ssize_t t = readlink(p, target, sizeof target);
        snprintf(p, sizeof p, "/proc/self/fdinfo/%d", fd);
        int i = read_file(p, info, MAX_FDINFO);
        put_u32(o, (uint32_t)fd);
        put_bytes(o, target, t > 0 ? (size_t)t : 0);
        put_bytes(o, info, i > 0 ? (size_t)i : 0);
        count++;
    }
    free(info);
    patch_u32(o, at, count);
    return (int)count;
}

static int op_bye(struct in *c, struct out *o) { (void)o; return args_ok(c) ? 0 : MALFORMED; }

#include "spawn.h"

// ---- MEMLOCK: the executor's own RLIMIT_MEMLOCK and CAP_IPC_LOCK (the corpora's `memlock`) ----

#include "vsmmu_process.h"   // vsmmu_limit_memlock, shared with the in-process kernel port

static int op_memlock(struct in *c, struct out *o) {
    (void)o;
    uint32_t restore = get_u32(c);
    uint64_t bytes = get_u64(c);
    if (!args_ok(c)) return MALFORMED;
    snprintf(detail, sizeof detail, restore ? "restore" : "limit=%llu", (unsigned long long)bytes);
    return vsmmu_limit_memlock((int)restore, bytes);
}

static int (*const handlers[OP_COUNT])(struct in *, struct out *) = {
    op_hello, op_open, op_close, op_ioctl, op_read, op_readlink, op_listdir, op_write,
    op_memfd, op_stat, op_chown, op_mmap_anon, op_munmap, op_fds, op_bye, op_spawn, op_wait, op_memlock};

// ---- The stream ----

static int in_fd = 0, out_fd = 1;

// Waits instead of failing if the stream fd happens to be non-blocking.
static int wait_fd(int fd, short ev) {
    struct pollfd p = {.fd = fd, .events = ev};
    return poll(&p, 1, -1) < 0 && errno != EINTR ? -1 : 0;
}
// 0 when all n bytes arrived; -1 on EOF or error (the client is gone: exit cleanly).
static int read_full(void *b, size_t n) {
    while (n) {
        ssize_t r = read(in_fd, b, n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 && errno == EAGAIN) { if (wait_fd(in_fd, POLLIN)) return -1; continue; }
        if (r <= 0) return -1;
        b = (uint8_t *)b + r;
        n -= (size_t)r;
    }
    return 0;
}
static int write_full(const void *b, size_t n) {
    while (n) {
        ssize_t r = write(out_fd, b, n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 && errno == EAGAIN) { if (wait_fd(out_fd, POLLOUT)) return -1; continue; }
        if (r <= 0) return -1;
        b = (const uint8_t *)b + r;
        n -= (size_t)r;
    }
    return 0;
}

static void serve(void);

static void usage(void) {
    fprintf(stderr, "usage: vsmmu-remote [--root DIR] [--log FILE] [--vmm PATH [--vmm-log DIR]] [PORT]\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *port = NULL, *logpath = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--root") == 0 && i + 1 < argc) root = argv[++i];
        else if (strcmp(argv[i], "--log") == 0 && i + 1 < argc) logpath = argv[++i];
        else if (strcmp(argv[i], "--vmm") == 0 && i + 1 < argc) vmm_path = argv[++i];
        else if (strcmp(argv[i], "--vmm-log") == 0 && i + 1 < argc) vmm_log_dir = argv[++i];
        else if (argv[i][0] != '-' && !port) port = argv[i];
        else usage();
    }
    static char rootbuf[PATH_MAX];
    snprintf(rootbuf, sizeof rootbuf, "%s", root);
    for (size_t n = strlen(rootbuf); n > 0 && rootbuf[n - 1] == '/'; n--) rootbuf[n - 1] = 0;
    root = rootbuf;
    no_openat2 = getenv("VSMMU_REMOTE_NO_OPENAT2") != NULL && strcmp(getenv("VSMMU_REMOTE_NO_OPENAT2"), "1") == 0;
    if ((rootfd = open(root[0] ? root : "/", O_PATH | O_DIRECTORY | O_CLOEXEC)) < 0) { perror(root); return 1; }
    if (logpath) {
        if (!(logfile = fopen(logpath, "ae"))) { perror(logpath); return 1; }
        setvbuf(logfile, NULL, _IOLBF, 0);
    }
    if (port) {
        do in_fd = open(port, O_RDWR | O_CLOEXEC | O_NOCTTY); while (in_fd < 0 && errno == EINTR);
        if (in_fd < 0) { perror(port); return 1; }
        out_fd = in_fd;
    }
    if (vmm_check_options()) return 2;
    signal(SIGPIPE, SIG_IGN); // a vanished client shows up as a write error, not a kill
    struct rlimit rl;         // keeps every fd below MAX_FDS, the size of held[]
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur > MAX_FDS) {
        rl.rlim_cur = MAX_FDS;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    serve();
    return 0;
}

// Serves frames from in_fd until BYE, the end of the stream or a write error, then closes
// every fd it holds (the guest kernel tears their objects down). Fuzz/remote-frame.c
// runs it on each fuzzed stream.
static void serve(void) {
    for (int bye = 0; !bye; ) {
        uint8_t hdr[8];
        if (read_full(hdr, 4)) break;
        uint32_t len = le32(hdr), seq = 0;
        int op = -1, res;
        struct out o = {0};
        put(&o, hdr, 8); // room for length and seq; result follows
        put_u32(&o, 0);
        detail[0] = 0;
        if (len > MAX_FRAME) {
            // Skip the body so the next frame is read from the right place.
            uint8_t chunk[4096];
            uint32_t left = len;
            if (read_full(hdr, 8)) { free(o.p); break; }
            seq = le32(hdr + 4);
            for (left -= 8; left; ) {
                uint32_t k = left < sizeof chunk ? left : (uint32_t)sizeof chunk;
                if (read_full(chunk, k)) { free(o.p); goto out; } // the reply being built too
                left -= k;
            }
            snprintf(detail, sizeof detail, "length %u over the limit", len);
            res = MALFORMED;
        } else {
            uint8_t *body = malloc(len ? len : 1);
            if (!body || read_full(body, len)) { free(body); free(o.p); break; }
            struct in c = {body, len, 0};
            uint32_t op32 = get_u32(&c);
            seq = get_u32(&c);
            if (c.bad) { seq = 0; res = MALFORMED; snprintf(detail, sizeof detail, "short frame (%u bytes)", len); }
            else if (op32 >= OP_COUNT) { res = MALFORMED; snprintf(detail, sizeof detail, "unknown op %u", op32); }
            else { op = (int)op32; res = handlers[op](&c, &o); }
            free(body);
        }
        // Payload only on success, except IOCTL's; none for a malformed request.
        if (res == MALFORMED) res = -EPROTO, o.n = 12;
        else if (res < 0 && op != OP_IOCTL) o.n = 12;
        if (!o.p) break; // not even 12 bytes of memory: nothing sensible left to do
        if (o.oom || o.n - 4 > MAX_FRAME) {
            res = o.oom ? -ENOMEM : -EOVERFLOW;
            o.n = 12;
            o.oom = 0;
        }
        patch_u32(&o, 0, (uint32_t)(o.n - 4));
        patch_u32(&o, 4, seq);
        patch_u32(&o, 8, (uint32_t)res);
        if (logfile) fprintf(logfile, "%s seq=%u result=%d%s%s\n", op >= 0 ? op_names[op] : "MALFORMED", seq, res,
                          detail[0] ? " " : "", detail);
        int w = write_full(o.p, o.n);
        free(o.p);
        if (w) break;
        bye = op == OP_BYE && res == 0;
    }
out:
    for (int fd = 0; fd < MAX_FDS; fd++) if (held[fd]) close(fd); // the guest kernel tears down
}
