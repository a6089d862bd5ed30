// Why this header exists: the build machine's kernel headers are Linux 6.1 and lack
// most of the 7.2 iommufd uAPI (vIOMMU, vDevice, vEVENTQ, HW queues, MAP_FILE), and
// the selftest's iommufd_test.h is never installed. These are vsmmu's own definitions,
// written from docs/kernel-interface.md (sections 1-3, 5, 7); every size and offset is
// pinned by a golden test (Tests/VsmmuLinuxTests/LayoutTests.swift). Prefixed `vsmmu_`
// so they never collide with a system header that has some of them.
#ifndef VSMMU_UAPI_H
#define VSMMU_UAPI_H

#include <stdint.h>

#define VSMMU_ALIGNED_U64 uint64_t __attribute__((aligned(8)))

// Request numbers: every request is _IO(';', nr) = (0x3B << 8) | nr (docs/kernel-interface.md §1.1).
enum {
    VSMMU_IOMMU_DESTROY = 0x3B80,
    VSMMU_IOMMU_IOAS_ALLOC = 0x3B81,
    VSMMU_IOMMU_IOAS_ALLOW_IOVAS = 0x3B82,
    VSMMU_IOMMU_IOAS_COPY = 0x3B83,
    VSMMU_IOMMU_IOAS_IOVA_RANGES = 0x3B84,
    VSMMU_IOMMU_IOAS_MAP = 0x3B85,
    VSMMU_IOMMU_IOAS_UNMAP = 0x3B86,
    VSMMU_IOMMU_OPTION = 0x3B87,
    VSMMU_IOMMU_VFIO_IOAS = 0x3B88,
    VSMMU_IOMMU_HWPT_ALLOC = 0x3B89,
    VSMMU_IOMMU_GET_HW_INFO = 0x3B8A,
    VSMMU_IOMMU_HWPT_INVALIDATE = 0x3B8D,
    VSMMU_IOMMU_IOAS_MAP_FILE = 0x3B8F,
    VSMMU_IOMMU_VIOMMU_ALLOC = 0x3B90,
    VSMMU_IOMMU_VDEVICE_ALLOC = 0x3B91,
    VSMMU_IOMMU_VEVENTQ_ALLOC = 0x3B93,
    VSMMU_IOMMU_HW_QUEUE_ALLOC = 0x3B94,
    VSMMU_IOMMU_TEST_CMD = 0x3BA0,
    VSMMU_VFIO_DEVICE_GET_INFO = 0x3B6B,
    VSMMU_VFIO_DEVICE_BIND_IOMMUFD = 0x3B76,
    VSMMU_VFIO_DEVICE_ATTACH_IOMMUFD_PT = 0x3B77,
    VSMMU_VFIO_DEVICE_DETACH_IOMMUFD_PT = 0x3B78,
};

struct vsmmu_iommu_destroy {            // 8 bytes
    uint32_t size;
    uint32_t id;
};

struct vsmmu_iommu_ioas_alloc {         // 12 bytes
    uint32_t size;
    uint32_t flags;
    uint32_t out_ioas_id;
};

struct vsmmu_iommu_iova_range {         // 16 bytes
    VSMMU_ALIGNED_U64 start;
    VSMMU_ALIGNED_U64 last;
};

struct vsmmu_iommu_ioas_iova_ranges {   // 32 bytes
    uint32_t size;
    uint32_t ioas_id;
    uint32_t num_iovas;
    uint32_t __reserved;
    VSMMU_ALIGNED_U64 allowed_iovas;
    VSMMU_ALIGNED_U64 out_iova_alignment;
};

struct vsmmu_iommu_ioas_map {           // 40 bytes
    uint32_t size;
    uint32_t flags;
    uint32_t ioas_id;
    uint32_t __reserved;
    VSMMU_ALIGNED_U64 user_va;
    VSMMU_ALIGNED_U64 length;
    VSMMU_ALIGNED_U64 iova;
};

struct vsmmu_iommu_ioas_map_file {      // 40 bytes
    uint32_t size;
    uint32_t flags;
    uint32_t ioas_id;
    int32_t fd;
    VSMMU_ALIGNED_U64 start;
    VSMMU_ALIGNED_U64 length;
    VSMMU_ALIGNED_U64 iova;
};

struct vsmmu_iommu_ioas_unmap {         // 24 bytes
    uint32_t size;
    uint32_t ioas_id;
    VSMMU_ALIGNED_U64 iova;
    VSMMU_ALIGNED_U64 length;
};

// IOMMU_OPTION (docs/kernel-interface.md §2.11): vsmmu sets RLIMIT_MODE to per-process
// accounting on the fresh iommufd it hands a VMM, as KubeVirt does.
struct vsmmu_iommu_option {             // 24 bytes
    uint32_t size;
    uint32_t option_id;
    uint16_t op;
    uint16_t __reserved;
    uint32_t object_id;
    VSMMU_ALIGNED_U64 val64;
};

enum {
    VSMMU_IOMMU_OPTION_RLIMIT_MODE = 0,
    VSMMU_IOMMU_OPTION_HUGE_PAGES = 1,
    VSMMU_IOMMU_OPTION_OP_SET = 0,
    VSMMU_IOMMU_OPTION_OP_GET = 1,
};

struct vsmmu_iommu_hwpt_alloc {         // 48 bytes
    uint32_t size;
    uint32_t flags;
    uint32_t dev_id;
    uint32_t pt_id;
    uint32_t out_hwpt_id;
    uint32_t __reserved;
    uint32_t data_type;
    uint32_t data_len;
    VSMMU_ALIGNED_U64 data_uptr;
    uint32_t fault_id;
    uint32_t __reserved2;
};

struct vsmmu_iommu_hwpt_invalidate {    // 32 bytes (docs/kernel-interface.md §2.17)
    uint32_t size;
    uint32_t hwpt_id;
    VSMMU_ALIGNED_U64 data_uptr;
    uint32_t data_type;
    uint32_t entry_len;
    uint32_t entry_num;                 // in: requests; out: requests handled (also on error)
    uint32_t __reserved;
};

struct vsmmu_iommu_hw_info {            // 40 bytes
    uint32_t size;
    uint32_t flags;
    uint32_t dev_id;
    uint32_t data_len;
    VSMMU_ALIGNED_U64 data_uptr;
    uint32_t data_type;                 // in_data_type with INPUT_TYPE, out_data_type on return
    uint8_t out_max_pasid_log2;
    uint8_t __reserved[3];
    VSMMU_ALIGNED_U64 out_capabilities;
};

struct vsmmu_iommu_hw_info_arm_smmuv3 { // 40 bytes
    uint32_t flags;
    uint32_t __reserved;
    uint32_t idr[6];
    uint32_t iidr;
    uint32_t aidr;
};

struct vsmmu_iommu_hw_info_tegra241_cmdqv { // 8 bytes
    uint32_t flags;
    uint8_t version;
    uint8_t log2vcmdqs;
    uint8_t log2vsids;
    uint8_t __reserved;
};

struct vsmmu_iommu_hw_info_vtd {        // 24 bytes
    uint32_t flags;
    uint32_t __reserved;
    VSMMU_ALIGNED_U64 cap_reg;
    VSMMU_ALIGNED_U64 ecap_reg;
};

struct vsmmu_iommu_viommu_alloc {       // 40 bytes
    uint32_t size;
    uint32_t flags;
    uint32_t type;
    uint32_t dev_id;
    uint32_t hwpt_id;
    uint32_t out_viommu_id;
    uint32_t data_len;
    uint32_t __reserved;
    VSMMU_ALIGNED_U64 data_uptr;
};

struct vsmmu_iommu_viommu_tegra241_cmdqv { // 16 bytes
    VSMMU_ALIGNED_U64 out_vintf_mmap_offset;
    VSMMU_ALIGNED_U64 out_vintf_mmap_length;
};

struct vsmmu_iommu_vdevice_alloc {      // 24 bytes
    uint32_t size;
    uint32_t viommu_id;
    uint32_t dev_id;
    uint32_t out_vdevice_id;
    VSMMU_ALIGNED_U64 virt_id;
};

struct vsmmu_iommu_veventq_alloc {      // 32 bytes
    uint32_t size;
    uint32_t flags;
    uint32_t viommu_id;
    uint32_t type;
    uint32_t veventq_depth;
    uint32_t out_veventq_id;
    uint32_t out_veventq_fd;
    uint32_t __reserved;
};

struct vsmmu_iommu_hw_queue_alloc {     // 40 bytes
    uint32_t size;
    uint32_t flags;
    uint32_t viommu_id;
    uint32_t type;
    uint32_t index;
    uint32_t out_hw_queue_id;
    VSMMU_ALIGNED_U64 nesting_parent_iova;
    VSMMU_ALIGNED_U64 length;
};

struct vsmmu_iommu_hwpt_arm_smmuv3 {    // 16 bytes: vSTE words 0 and 1, little-endian
    VSMMU_ALIGNED_U64 ste[2];
};

// IOMMU_TEST_CMD (drivers/iommu/iommufd/iommufd_test.h, not installed: docs/kernel-interface.md §7.2)
enum {
    VSMMU_IOMMU_TEST_OP_MOCK_DOMAIN = 2,
    VSMMU_IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE = 10,
};

struct vsmmu_iommu_test_cmd {           // 72 bytes
    uint32_t size;
    uint32_t op;
    uint32_t id;
    uint32_t __reserved;
    union {
        struct {
            uint32_t out_stdev_id;
            uint32_t out_hwpt_id;
            uint32_t out_idev_id;
        } mock_domain;
        struct {
            uint32_t pt_id;
        } mock_domain_replace;
        uint8_t payload[48];
    };
    uint32_t last;
    uint32_t __pad;                     // the kernel struct is 8-byte aligned: 72 bytes
};

struct vsmmu_vfio_device_bind_iommufd { // 24 bytes
    uint32_t argsz;
    uint32_t flags;
    int32_t iommufd;
    uint32_t out_devid;
    VSMMU_ALIGNED_U64 token_uuid_ptr;
};

struct vsmmu_vfio_device_attach_iommufd_pt { // 16 bytes
    uint32_t argsz;
    uint32_t flags;
    uint32_t pt_id;
    uint32_t pasid;
};

struct vsmmu_vfio_device_detach_iommufd_pt { // 12 bytes
    uint32_t argsz;
    uint32_t flags;
    uint32_t pasid;
};

struct vsmmu_vfio_device_info {         // 24 bytes
    uint32_t argsz;
    uint32_t flags;
    uint32_t num_regions;
    uint32_t num_irqs;
    uint32_t cap_offset;
    uint32_t pad;
};

/// ioctl(2) with a pointer argument, for Swift (which cannot call the variadic ioctl).
/// Returns 0 (or the kernel's non-negative result) on success, -errno on failure. Does
/// not retry EINTR: the Swift wrapper does, so the retry is visible to its trace.
int vsmmu_ioctl(int fd, unsigned long request, void *arg);

/// memfd_create(2) (not exported by Swift's Glibc module). Returns the fd or -errno.
int vsmmu_memfd_create(const char *name, unsigned int flags);

/// MFD_CLOEXEC | MFD_HUGETLB with the huge page size encoded as log2 (flags for memfd_create).
unsigned int vsmmu_memfd_flags(int hugetlb, unsigned int hugepage_log2);

#endif
