// mock-floor: the floor for the lab's benchmark (scenario vsmmu-bench). A minimal static C
// program issuing the same ioctl sequence that `vsmmu apply` runs for the mock-host topology
// of scenarios/vsmmu-mock (one guest, 64 MiB memfd RAM at 0x40000000, one selftest vSMMU
// with selftest:0 and selftest:1, vSIDs 0x1100/0x1200), in the order and with the arguments
// of `vsmmu plan --ops` (the scenario logs that listing beside the figures):
//
//   open /dev/iommu; IOMMU_IOAS_ALLOC; IOMMU_TEST_CMD(MOCK_DOMAIN, ioas) x2;
//   IOMMU_HWPT_ALLOC(NEST_PARENT, dev0, ioas); IOMMU_TEST_CMD(MOCK_DOMAIN_REPLACE, -> s2) x2;
//   memfd_create + ftruncate 64 MiB; IOMMU_IOAS_MAP_FILE(fixed iova 0x40000000, RW);
//   IOMMU_GET_HW_INFO(dev0); IOMMU_VIOMMU_ALLOC(SELFTEST, dev0, s2);
//   IOMMU_VDEVICE_ALLOC(dev0, 0x1100), (dev1, 0x1200); IOMMU_HWPT_ALLOC(SELFTEST nested) x2
//   (abort, bypass); IOMMU_VEVENTQ_ALLOC(SELFTEST); IOMMU_TEST_CMD(MOCK_DOMAIN_REPLACE,
//   -> bypass) x2.
//
// Built by scenarios' caller (vsmmu-lab.sh) with gcc -static against the project's shim
// header Sources/CVsmmuUAPI/include/vsmmu_uapi.h (structs and request numbers only).
//
//   mock-floor run N        N times in this process: the sequence (timed), then close
//                           every fd (not timed; the kernel destroys the objects). Prints
//                           one "floor-us <µs>" line per run. Exit 1 on any failed call.
//   mock-floor time CMD...  run CMD once (stdout/stderr kept), print "time-us <µs>" on
//                           stderr (fork to wait, CLOCK_MONOTONIC); exit with CMD's code.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "vsmmu_uapi.h"

#define RAM_IOVA 0x40000000ull
#define RAM_SIZE (64ull << 20)
#define HWPT_ALLOC_NEST_PARENT 0x1
#define MAP_FIXED_IOVA_RW 0x7 /* FIXED_IOVA | WRITEABLE | READABLE */
#define HW_INFO_SELFTEST 0xfeedbeefu
#define VIOMMU_SELFTEST 0xdeadbeefu
#define HWPT_DATA_SELFTEST 0xdeadu
#define VEVENTQ_SELFTEST 0xbeefbeefu
#define VEVENTQ_DEPTH 128 /* vsmmu's eventQueueDepth; the scenario logs `plan --ops` beside the figures */

static const char *failed;
static int failed_errno;

#define CALL(name, fd, req, arg)                                                   \
	do {                                                                           \
		if (ioctl((fd), (req), (arg)) < 0) { failed = name; failed_errno = errno; return -1; } \
	} while (0)

static uint64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static int mock_domain(int ifd, uint32_t pt, uint32_t *stdev, uint32_t *idev)
{
	struct vsmmu_iommu_test_cmd c = { .size = sizeof(c), .op = VSMMU_IOMMU_TEST_OP_MOCK_DOMAIN, .id = pt };
	CALL("IOMMU_TEST_CMD(MOCK_DOMAIN)", ifd, VSMMU_IOMMU_TEST_CMD, &c);
	*stdev = c.mock_domain.out_stdev_id;
	*idev = c.mock_domain.out_idev_id;
	return 0;
}

static int mock_replace(int ifd, uint32_t stdev, uint32_t pt)
{
	struct vsmmu_iommu_test_cmd c = { .size = sizeof(c), .op = VSMMU_IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, .id = stdev };
	c.mock_domain_replace.pt_id = pt;
	CALL("IOMMU_TEST_CMD(MOCK_DOMAIN_REPLACE)", ifd, VSMMU_IOMMU_TEST_CMD, &c);
	return 0;
}

static int nested(int ifd, uint32_t dev, uint32_t viommu, uint32_t *out)
{
	uint8_t data[8] = { 0 }; /* iommu_hwpt_selftest {iotlb, pagetable_type} */
	struct vsmmu_iommu_hwpt_alloc h = { .size = sizeof(h), .dev_id = dev, .pt_id = viommu,
		.data_type = HWPT_DATA_SELFTEST, .data_len = sizeof(data), .data_uptr = (uintptr_t)data };
	CALL("IOMMU_HWPT_ALLOC(nested)", ifd, VSMMU_IOMMU_HWPT_ALLOC, &h);
	*out = h.out_hwpt_id;
	return 0;
}

/* fds[0] iommufd, fds[1] memfd, fds[2] veventq fd: closed by the caller */
static int sequence(int fds[3])
{
	uint32_t ioas, stdev0, stdev1, dev0, dev1, s2, viommu, vdev0, vdev1, abort_hwpt, bypass_hwpt;
	int ifd = open("/dev/iommu", O_RDWR | O_CLOEXEC);
	if (ifd < 0) { failed = "open /dev/iommu"; failed_errno = errno; return -1; }
	fds[0] = ifd;

	struct vsmmu_iommu_ioas_alloc a = { .size = sizeof(a) };
	CALL("IOMMU_IOAS_ALLOC", ifd, VSMMU_IOMMU_IOAS_ALLOC, &a);
	ioas = a.out_ioas_id;

	if (mock_domain(ifd, ioas, &stdev0, &dev0) || mock_domain(ifd, ioas, &stdev1, &dev1)) return -1;

	struct vsmmu_iommu_hwpt_alloc p = { .size = sizeof(p), .flags = HWPT_ALLOC_NEST_PARENT, .dev_id = dev0, .pt_id = ioas };
	CALL("IOMMU_HWPT_ALLOC(nest parent)", ifd, VSMMU_IOMMU_HWPT_ALLOC, &p);
	s2 = p.out_hwpt_id;

	if (mock_replace(ifd, stdev0, s2) || mock_replace(ifd, stdev1, s2)) return -1;

	int mfd = memfd_create("ram0", MFD_CLOEXEC);
	if (mfd < 0) { failed = "memfd_create"; failed_errno = errno; return -1; }
	fds[1] = mfd;
	if (ftruncate(mfd, RAM_SIZE) < 0) { failed = "ftruncate"; failed_errno = errno; return -1; }
	struct vsmmu_iommu_ioas_map_file m = { .size = sizeof(m), .flags = MAP_FIXED_IOVA_RW, .ioas_id = ioas,
		.fd = mfd, .start = 0, .length = RAM_SIZE, .iova = RAM_IOVA };
	CALL("IOMMU_IOAS_MAP_FILE", ifd, VSMMU_IOMMU_IOAS_MAP_FILE, &m);

	uint8_t info[64] = { 0 };
	struct vsmmu_iommu_hw_info hi = { .size = sizeof(hi), .dev_id = dev0, .data_len = sizeof(info), .data_uptr = (uintptr_t)info };
	CALL("IOMMU_GET_HW_INFO", ifd, VSMMU_IOMMU_GET_HW_INFO, &hi);
	if (hi.data_type != HW_INFO_SELFTEST) { failed = "IOMMU_GET_HW_INFO type"; failed_errno = EPROTO; return -1; }

	struct vsmmu_iommu_viommu_alloc v = { .size = sizeof(v), .type = VIOMMU_SELFTEST, .dev_id = dev0, .hwpt_id = s2 };
	CALL("IOMMU_VIOMMU_ALLOC", ifd, VSMMU_IOMMU_VIOMMU_ALLOC, &v);
	viommu = v.out_viommu_id;

	struct vsmmu_iommu_vdevice_alloc d0 = { .size = sizeof(d0), .viommu_id = viommu, .dev_id = dev0, .virt_id = 0x1100 };
	CALL("IOMMU_VDEVICE_ALLOC", ifd, VSMMU_IOMMU_VDEVICE_ALLOC, &d0);
	vdev0 = d0.out_vdevice_id;
	struct vsmmu_iommu_vdevice_alloc d1 = { .size = sizeof(d1), .viommu_id = viommu, .dev_id = dev1, .virt_id = 0x1200 };
	CALL("IOMMU_VDEVICE_ALLOC", ifd, VSMMU_IOMMU_VDEVICE_ALLOC, &d1);
	vdev1 = d1.out_vdevice_id;
	(void)vdev0; (void)vdev1;

	if (nested(ifd, dev0, viommu, &abort_hwpt) || nested(ifd, dev0, viommu, &bypass_hwpt)) return -1;

	struct vsmmu_iommu_veventq_alloc q = { .size = sizeof(q), .viommu_id = viommu, .type = VEVENTQ_SELFTEST,
		.veventq_depth = VEVENTQ_DEPTH };
	CALL("IOMMU_VEVENTQ_ALLOC", ifd, VSMMU_IOMMU_VEVENTQ_ALLOC, &q);
	fds[2] = (int)q.out_veventq_fd;

	if (mock_replace(ifd, stdev0, bypass_hwpt) || mock_replace(ifd, stdev1, bypass_hwpt)) return -1;
	(void)abort_hwpt;
	return 0;
}

static int run(int n)
{
	for (int i = 0; i < n; i++) {
		int fds[3] = { -1, -1, -1 };
		uint64_t t0 = now_ns();
		int rc = sequence(fds);
		uint64_t t1 = now_ns();
		for (int k = 2; k >= 0; k--)
			if (fds[k] >= 0) close(fds[k]);
		if (rc) {
			fprintf(stderr, "mock-floor: %s failed: %s (errno %d)\n", failed, strerror(failed_errno), failed_errno);
			return 1;
		}
		printf("floor-us %llu\n", (unsigned long long)((t1 - t0) / 1000));
	}
	return 0;
}

static int timed(char **argv)
{
	uint64_t t0 = now_ns();
	pid_t pid = fork();
	if (pid < 0) { perror("fork"); return 127; }
	if (pid == 0) {
		execvp(argv[0], argv);
		perror(argv[0]);
		_exit(127);
	}
	int st = 0;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
	uint64_t t1 = now_ns();
	fprintf(stderr, "time-us %llu\n", (unsigned long long)((t1 - t0) / 1000));
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int main(int argc, char **argv)
{
	if (argc >= 3 && !strcmp(argv[1], "run")) return run(atoi(argv[2]));
	if (argc >= 3 && !strcmp(argv[1], "time")) return timed(argv + 2);
	fprintf(stderr, "usage: mock-floor run N | mock-floor time CMD [ARG...]\n");
	return 2;
}
