// SPAWN and WAIT (docs/remote-executor.md, "Starting the VMM"): the executor starts the one
// VMM binary fixed by --vmm with fds it holds, so a guest prepared through the executor can
// be handed to a VMM running on the executor's kernel. Part of main.c's translation unit
// (included once, after the other handlers): it uses main.c's cursor, `held` and `detail`.
// Kept in its own file so the two evolve without merge conflicts.

#define MAX_SPAWN_ARGS 256          // argv entries
#define MAX_SPAWN_ARG 4096          // bytes per argument
#define MAX_SPAWN_FDS 64            // fds handed to the child
#define MAX_CHILDREN 64             // pids remembered for WAIT

static const char *vmm_path;        // --vmm: the only program SPAWN may start (none: SPAWN refused)
static const char *vmm_log_dir = "/tmp"; // --vmm-log: where the child's stdout/stderr go
enum { CHILD_FREE, CHILD_RUNNING, CHILD_EXITED, CHILD_SIGNALED };
static struct { pid_t pid; int state, code; } children[MAX_CHILDREN];

// Options are checked once at start: an absolute, executable VMM and a log directory.
static int vmm_check_options(void) {
    if (!vmm_path) return 0;
    if (vmm_path[0] != '/' || access(vmm_path, X_OK) != 0) {
        fprintf(stderr, "vsmmu-remote: --vmm %s: not an absolute path to an executable\n", vmm_path);
        return -1;
    }
    struct stat st;
    if (vmm_log_dir[0] != '/' || stat(vmm_log_dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "vsmmu-remote: --vmm-log %s: not an absolute path to a directory\n", vmm_log_dir);
        return -1;
    }
    return 0;
}

// In the child, between fork and exec: stdio, the listed fds (same numbers, CLOEXEC
// cleared), nothing else. Reports a failure's errno on `report` (CLOEXEC: closed by a
// successful exec) and exits 127.
static void spawn_child(char **argv, const int32_t *fds, uint32_t nfds, int report) {
    int e = 0;
    setsid(); // its own session: no signal meant for the executor's group reaches it
    signal(SIGPIPE, SIG_DFL); // ignored dispositions survive exec; the VMM gets the default
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    char logpath[PATH_MAX];
    snprintf(logpath, sizeof logpath, "%s/vsmmu-vmm-%d.log", vmm_log_dir, (int)getpid());
    int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int log = open(logpath, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (null < 0 || log < 0 || dup2(null, 0) < 0 || dup2(log, 1) < 0 || dup2(log, 2) < 0) e = errno;
    for (int fd = 0; !e && fd < 3; fd++) if (fcntl(fd, F_SETFD, 0) < 0) e = errno; // dup2 onto itself keeps CLOEXEC
    // Guest RAM is pinned for DMA: as `vsmmu launch` does locally, the soft limit goes up to the hard one.
    struct rlimit ml;
    if (!e && getrlimit(RLIMIT_MEMLOCK, &ml) == 0 && ml.rlim_cur != ml.rlim_max) {
        ml.rlim_cur = ml.rlim_max;
        setrlimit(RLIMIT_MEMLOCK, &ml);
    }
    for (int fd = 3; !e && fd < MAX_FDS; fd++) {
        if (fd == report) continue;
        int keep = 0;
        for (uint32_t i = 0; i < nfds; i++) keep |= fds[i] == fd;
        if (!keep) close(fd); // also the stream, the log and /dev/null copies
        else if (fcntl(fd, F_SETFD, 0) < 0) e = errno;
    }
    if (!e) { execv(vmm_path, argv); e = errno; }
    ssize_t w = write(report, &e, sizeof e);
    (void)w;
    _exit(127);
}

// SPAWN: u32 argc, argc × str, u32 nfds, nfds × i32 fd -> the child's pid.
static int op_spawn(struct in *c, struct out *o) {
    (void)o;
    uint32_t argc = get_u32(c), n;
    if (c->bad || argc == 0 || argc > MAX_SPAWN_ARGS) return c->bad ? MALFORMED : -EINVAL;
    struct { uint8_t *p; uint32_t n; } args[MAX_SPAWN_ARGS];
    for (uint32_t i = 0; i < argc && !c->bad; i++) { args[i].p = get_bytes(c, &n); args[i].n = n; }
    uint32_t nfds = get_u32(c);
    if (c->bad) return MALFORMED;
    if (nfds > MAX_SPAWN_FDS) return -EINVAL;
    int32_t fds[MAX_SPAWN_FDS];
    for (uint32_t i = 0; i < nfds; i++) fds[i] = (int32_t)get_u32(c);
    if (!args_ok(c)) return MALFORMED;
    int k = snprintf(detail, sizeof detail, "argc=%u nfds=%u ", argc, nfds); // argv[0], unprintable bytes as '?'
    for (uint32_t i = 0; i < args[0].n && i < 100; i++, k++) detail[k] = args[0].p[i] >= 0x20 && args[0].p[i] < 0x7f ? (char)args[0].p[i] : '?';
    detail[k] = 0;
    if (!vmm_path) return -EPERM;
    for (uint32_t i = 0; i < argc; i++)
        if (args[i].n > MAX_SPAWN_ARG || memchr(args[i].p, 0, args[i].n)) return -EINVAL;
    if (args[0].n != strlen(vmm_path) || memcmp(args[0].p, vmm_path, args[0].n) != 0) return -EPERM;
    for (uint32_t i = 0; i < nfds; i++) {
        if (fds[i] < 3) return -EINVAL; // 0-2 are the child's stdio
        if (!is_held(fds[i])) return -EBADF;
        for (uint32_t j = 0; j < i; j++) if (fds[j] == fds[i]) return -EINVAL;
    }
    int slot = -1;
    for (int i = 0; i < MAX_CHILDREN && slot < 0; i++) if (children[i].state == CHILD_FREE) slot = i;
    for (int i = 0; i < MAX_CHILDREN && slot < 0; i++) if (children[i].state != CHILD_RUNNING) slot = i;
    if (slot < 0) return -EAGAIN;

    char **argv = calloc(argc + 1, sizeof *argv);
    int e = argv ? 0 : -ENOMEM;
    for (uint32_t i = 0; !e && i < argc; i++) {
        if (!(argv[i] = malloc(args[i].n + 1))) { e = -ENOMEM; break; }
        memcpy(argv[i], args[i].p, args[i].n);
        argv[i][args[i].n] = 0;
    }
    int report[2] = {-1, -1};
    if (!e && pipe2(report, O_CLOEXEC) < 0) e = -errno;
    pid_t pid = -1;
    if (!e) {
        pid = fork();
        if (pid == 0) spawn_child(argv, fds, nfds, report[1]);
        if (pid < 0) e = -errno;
    }
    if (report[1] >= 0) close(report[1]);
    if (!e) { // EOF: exec succeeded; an errno: it did not, and the child is reaped here
        int child_errno = 0;
        ssize_t r;
        do r = read(report[0], &child_errno, sizeof child_errno); while (r < 0 && errno == EINTR);
        if (r == (ssize_t)sizeof child_errno) {
            while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
            e = -child_errno;
        }
    }
    if (report[0] >= 0) close(report[0]);
    for (uint32_t i = 0; argv && i < argc; i++) free(argv[i]);
    free(argv);
    if (e) return e;
    children[slot].pid = pid;
    children[slot].state = CHILD_RUNNING;
    children[slot].code = 0;
    snprintf(detail + strlen(detail), sizeof detail - strlen(detail), " pid=%d", (int)pid);
    return (int)pid;
}

// WAIT: i32 pid -> 0, payload u32 state (0 running, 1 exited, 2 killed by a signal), i32
// code (exit status or signal number). Only pids SPAWN returned; never blocks.
static int op_wait(struct in *c, struct out *o) {
    int32_t pid = (int32_t)get_u32(c);
    if (!args_ok(c)) return MALFORMED;
    snprintf(detail, sizeof detail, "pid=%d", pid);
    int slot = -1;
    for (int i = 0; i < MAX_CHILDREN && slot < 0; i++)
        if (children[i].state != CHILD_FREE && pid > 0 && children[i].pid == pid) slot = i;
    if (slot < 0) return -ESRCH;
    if (children[slot].state == CHILD_RUNNING) {
        int status;
        pid_t r;
        do r = waitpid(pid, &status, WNOHANG); while (r < 0 && errno == EINTR);
        if (r < 0) return -errno;
        if (r == pid && WIFEXITED(status)) children[slot].state = CHILD_EXITED, children[slot].code = WEXITSTATUS(status);
        else if (r == pid && WIFSIGNALED(status)) children[slot].state = CHILD_SIGNALED, children[slot].code = WTERMSIG(status);
    }
    static const uint32_t wire[] = {[CHILD_RUNNING] = 0, [CHILD_EXITED] = 1, [CHILD_SIGNALED] = 2};
    put_u32(o, wire[children[slot].state]);
    put_u32(o, (uint32_t)children[slot].code);
    return 0;
}
