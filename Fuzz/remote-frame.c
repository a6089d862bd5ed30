// libFuzzer target for vsmmu-remote's frame parser and request handlers (issue 13): the
// input is the byte stream a client sends. Built by scripts/fuzz.sh with
// -fsanitize=fuzzer,address,undefined (LeakSanitizer on: a leak is a finding). --root is
// a small fake tree in a temp dir (no real device or sysfs file is touched), with links
// leading out of it: a file outside that changes is a finding too.
#define main vsmmu_remote_main
#include "../Sources/vsmmu-remote/main.c"
#undef main

static char outside[PATH_MAX];

static void put_file(const char *dir, const char *rel, const char *text) {
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/%s", dir, rel);
    FILE *f = fopen(p, "w");
    if (!f) { perror(p); abort(); }
    fputs(text, f);
    fclose(f);
}

static void mkdirs(const char *dir, const char *rel) {
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/%s", dir, rel);
    for (char *c = p + strlen(dir) + 1; *c; c++) if (*c == '/') { *c = 0; mkdir(p, 0755); *c = '/'; }
    mkdir(p, 0755);
}

static void link_in(const char *dir, const char *rel, const char *target) {
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/%s", dir, rel);
    if (symlink(target, p) != 0) { perror(p); abort(); }
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    static char base[] = "/tmp/vsmmu-fuzz-XXXXXX";
    if (!mkdtemp(base)) { perror("mkdtemp"); abort(); }
    static char rootdir[PATH_MAX];
    snprintf(rootdir, sizeof rootdir, "%s/root", base);
    snprintf(outside, sizeof outside, "%s/outside", base);
    mkdir(rootdir, 0755);
    mkdir(outside, 0755);
    put_file(outside, "driver_override", "keep\n");
    mkdirs(rootdir, "sys/devices/pci0000:00/0000:00:01.0");
    mkdirs(rootdir, "sys/bus/pci/devices");
    mkdirs(rootdir, "sys/bus/pci/drivers/vfio-pci");
    mkdirs(rootdir, "sys/kernel/debug/fail_iommufd");
    mkdirs(rootdir, "dev/vfio/devices");
    link_in(rootdir, "sys/bus/pci/devices/0000:00:01.0", "../../../devices/pci0000:00/0000:00:01.0");
    link_in(rootdir, "sys/bus/pci/devices/0000:00:02.0", outside);                 // absolute, out
    link_in(rootdir, "sys/bus/pci/devices/0000:00:03.0", "../../../../../outside"); // relative, out
    link_in(rootdir, "sys/devices/pci0000:00/0000:00:01.0/driver", "../../../bus/pci/drivers/vfio-pci");
    put_file(rootdir, "sys/devices/pci0000:00/0000:00:01.0/vendor", "0x10de\n");
    put_file(rootdir, "sys/devices/pci0000:00/0000:00:01.0/driver_override", "(null)\n");
    put_file(rootdir, "sys/bus/pci/drivers/vfio-pci/unbind", "");
    put_file(rootdir, "sys/bus/pci/drivers_probe", "");
    put_file(rootdir, "sys/kernel/debug/fail_iommufd/probability", "0\n");
    put_file(rootdir, "dev/iommu", "");
    put_file(rootdir, "dev/vfio/devices/vfio0", "");
    link_in(rootdir, "dev/vfio/devices/vfio1", "../../../../outside/driver_override");
    root = rootdir;
    rootfd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    out_fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    const char *no = getenv("VSMMU_REMOTE_NO_OPENAT2");
    no_openat2 = no && strcmp(no, "1") == 0;
    signal(SIGPIPE, SIG_IGN);
    if (rootfd < 0 || out_fd < 0) abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    int fd = memfd_create("vsmmu-fuzz-frames", MFD_CLOEXEC);
    if (fd < 0) abort();
    for (size_t at = 0; at < size; ) {
        ssize_t w = write(fd, data + at, size - at);
        if (w <= 0) abort();
        at += (size_t)w;
    }
    lseek(fd, 0, SEEK_SET);
    in_fd = fd;
    serve();
    close(fd);
    // What the process would have dropped at exit: the next input starts clean.
    memset(held, 0, sizeof held);
    for (int i = 0; i < MAX_REGIONS; i++)
        if (regions[i].size) { munmap((void *)(uintptr_t)regions[i].addr, (size_t)regions[i].size); regions[i].size = 0; }
    char check[16] = {0};
    int o = open(outside, O_RDONLY | O_DIRECTORY);
    int f = o >= 0 ? openat(o, "driver_override", O_RDONLY) : -1;
    ssize_t n = f >= 0 ? read(f, check, sizeof check - 1) : -1;
    if (f >= 0) close(f);
    if (o >= 0) close(o);
    if (n != 5 || strcmp(check, "keep\n") != 0) { fprintf(stderr, "fuzz finding: a file outside --root changed\n"); abort(); }
    return 0;
}
