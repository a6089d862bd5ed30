/// uAPI values from reference/iommufd-uapi.md (Linux 7.2). Numbers only; struct
/// layouts live with the Linux backend's C shim.
public typealias ObjectID = UInt32

public enum UAPI {
    // Request numbers (§1.1), used to name operations in plans, errors and VSMMU_SIM_FAIL.
    public static let requests: [String: UInt32] = [
        "IOMMU_DESTROY": 0x3B80, "IOMMU_IOAS_ALLOC": 0x3B81, "IOMMU_IOAS_ALLOW_IOVAS": 0x3B82,
        "IOMMU_IOAS_COPY": 0x3B83, "IOMMU_IOAS_IOVA_RANGES": 0x3B84, "IOMMU_IOAS_MAP": 0x3B85,
        "IOMMU_IOAS_UNMAP": 0x3B86, "IOMMU_OPTION": 0x3B87, "IOMMU_VFIO_IOAS": 0x3B88,
        "IOMMU_HWPT_ALLOC": 0x3B89, "IOMMU_GET_HW_INFO": 0x3B8A, "IOMMU_HWPT_INVALIDATE": 0x3B8D,
        "IOMMU_IOAS_MAP_FILE": 0x3B8F, "IOMMU_VIOMMU_ALLOC": 0x3B90, "IOMMU_VDEVICE_ALLOC": 0x3B91,
        "IOMMU_VEVENTQ_ALLOC": 0x3B93, "IOMMU_HW_QUEUE_ALLOC": 0x3B94, "IOMMU_TEST_CMD": 0x3BA0,
        "VFIO_DEVICE_BIND_IOMMUFD": 0x3B76, "VFIO_DEVICE_ATTACH_IOMMUFD_PT": 0x3B77,
        "VFIO_DEVICE_DETACH_IOMMUFD_PT": 0x3B78,
    ]

    // IOMMU_HWPT_ALLOC flags (§2.13)
    public static let hwptAllocNestParent: UInt32 = 0x1
    public static let hwptAllocDirtyTracking: UInt32 = 0x2
    public static let hwptAllocFaultIDValid: UInt32 = 0x4
    public static let hwptAllocPASID: UInt32 = 0x8

    // HWPT data types
    public static let hwptDataNone: UInt32 = 0
    public static let hwptDataVTDS1: UInt32 = 1
    public static let hwptDataARMSMMUv3: UInt32 = 2
    public static let hwptDataSelftest: UInt32 = 0xdead

    // IOAS_MAP flags (§2.6)
    public static let ioasMapFixedIOVA: UInt32 = 0x1
    public static let ioasMapWriteable: UInt32 = 0x2
    public static let ioasMapReadable: UInt32 = 0x4

    // GET_HW_INFO types (§2.14)
    public static let hwInfoNone: UInt32 = 0
    public static let hwInfoIntelVTD: UInt32 = 1
    public static let hwInfoARMSMMUv3: UInt32 = 2
    public static let hwInfoTegra241CMDQV: UInt32 = 3
    public static let hwInfoAMD: UInt32 = 4
    public static let hwInfoSelftest: UInt32 = 0xfeedbeef
    public static let hwInfoFlagInputType: UInt32 = 0x1
    public static let hwCapPCIATSNotSupported: UInt64 = 0x8

    // IOMMU_HWPT_INVALIDATE data types (§2.17) and the ARM command entry (§5.5)
    public static let invalidateDataVTDS1: UInt32 = 0
    public static let invalidateDataARMSMMUv3: UInt32 = 1
    public static let armInvalidateEntrySize: UInt32 = 16

    // vIOMMU types (§2.19, §7.3)
    public static let viommuARMSMMUv3: UInt32 = 1
    public static let viommuTegra241CMDQV: UInt32 = 2
    public static let viommuSelftest: UInt32 = 0xdeadbeef

    // vEVENTQ types (§2.21, §7.3)
    public static let veventqARMSMMUv3: UInt32 = 1
    public static let veventqTegra241CMDQV: UInt32 = 2
    public static let veventqSelftest: UInt32 = 0xbeefbeef
    public static let veventqMaxDepth: UInt32 = 524_288

    // HW queue types (§2.22)
    public static let hwQueueTegra241CMDQV: UInt32 = 1
    public static let hwQueueSelftest: UInt32 = 0xdeadbeef

    // vSTE words for the nested HWPTs that exist before the guest runs (§5.3)
    public static let vsteAbort: (UInt64, UInt64) = (0x1, 0x0)
    public static let vsteBypass: (UInt64, UInt64) = (0x9, 0x0)

    /// The ARM SMMUv3 software-MSI window every attached device reserves (§9.17).
    public static let armMSIWindowStart: UInt64 = 0x800_0000
    public static let armMSIWindowSize: UInt64 = 0x10_0000
}

/// Lower-case hex with 0x, for call details and errors (one definition for every backend).
public func hex<T: BinaryInteger>(_ value: T) -> String { "0x" + String(value, radix: 16) }
