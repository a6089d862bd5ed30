/// The kernel port: every call vsmmu makes into the kernel, shaped after the real
/// interface (iommufd ioctls on /dev/iommu, VFIO cdev ioctls, sysfs reads and the
/// binding writes). Two implementations: the Linux backend (real ioctls) and the
/// simulated kernel. Nothing above this protocol knows which one runs.
///
/// Each throwing call throws `KernelCallError` carrying the errno the real kernel
/// would return (docs/kernel-interface.md §2, §3, §8).

/// An open /dev/iommu file (one iommufd context).
public struct IommufdHandle: Hashable, Sendable, Codable { public var fd: Int32; public init(fd: Int32) { self.fd = fd } }
/// An open VFIO cdev, /dev/vfio/devices/vfioN.
public struct DeviceHandle: Hashable, Sendable, Codable { public var fd: Int32; public init(fd: Int32) { self.fd = fd } }
/// An fd the kernel handed out for an object (vEVENTQ) or a memfd. (Not Foundation.FileHandle.)
public struct KernelFile: Hashable, Sendable, Codable { public var fd: Int32; public init(fd: Int32) { self.fd = fd } }

public struct IovaRange: Hashable, Sendable, Codable {
    public var start: UInt64
    public var last: UInt64   // inclusive
    public init(start: UInt64, last: UInt64) { self.start = start; self.last = last }
}

public struct HwInfo: Hashable, Sendable, Codable {
    public var dataType: HWInfoType
    public var data: [UInt8]          // driver payload (ARM: 40 bytes of IDRs), decoded by HardwareInfo.swift
    public var maxPasidLog2: UInt8
    public var capabilities: HWInfoCapabilities
    public init(dataType: HWInfoType, data: [UInt8], maxPasidLog2: UInt8, capabilities: HWInfoCapabilities) {
        self.dataType = dataType; self.data = data; self.maxPasidLog2 = maxPasidLog2; self.capabilities = capabilities
    }
}

/// Where IOAS memory comes from: IOMMU_IOAS_MAP (a user VA) or IOMMU_IOAS_MAP_FILE (fd + offset).
public enum MapSource: Hashable, Sendable, Codable {
    case userVA(UInt64)
    case file(KernelFile, offset: UInt64)
}

public enum GuestMemoryBacking: String, Hashable, Sendable, Codable {
    case memfd, anonymous, hugetlbfs
}

/// Guest RAM made by the kernel port: a memfd (memfd / hugetlbfs backing), not mapped in
/// this process (userVA 0; it goes into the IOAS by IOAS_MAP_FILE), or an anonymous
/// mapping at `userVA`.
public struct GuestMemory: Hashable, Sendable, Codable {
    public var file: KernelFile?
    public var userVA: UInt64
    public var size: UInt64
    public init(file: KernelFile?, userVA: UInt64, size: UInt64) { self.file = file; self.userVA = userVA; self.size = size }
}

/// One PCI device as sysfs shows it (docs/kernel-interface.md §8).
public struct SysfsPCIDevice: Hashable, Sendable, Codable {
    public var address: PCIAddress
    public var vendor: UInt16
    public var device: UInt16
    public var classCode: UInt32
    public var driver: String?            // `driver` link target name, nil when unbound
    public var driverOverride: String?    // nil when unset
    public var iommuGroup: Int?           // nil: no IOMMU
    public var iommu: String?             // /sys/class/iommu/<name>
    public var numaNode: Int
    public var vfioDevIndex: Int?         // vfio-dev/vfioN while a VFIO driver is bound
    public init(address: PCIAddress, vendor: UInt16, device: UInt16, classCode: UInt32, driver: String?,
                driverOverride: String?, iommuGroup: Int?, iommu: String?, numaNode: Int, vfioDevIndex: Int?) {
        self.address = address; self.vendor = vendor; self.device = device; self.classCode = classCode
        self.driver = driver; self.driverOverride = driverOverride; self.iommuGroup = iommuGroup
        self.iommu = iommu; self.numaNode = numaNode; self.vfioDevIndex = vfioDevIndex
    }
}

/// Result of the selftest mock driver's MOCK_DOMAIN command (docs/kernel-interface.md §7.2).
public struct MockDevice: Hashable, Sendable, Codable {
    public var stdevID: ObjectID
    public var hwptID: ObjectID
    public var idevID: ObjectID
    public init(stdevID: ObjectID, hwptID: ObjectID, idevID: ObjectID) { self.stdevID = stdevID; self.hwptID = hwptID; self.idevID = idevID }
}

/// An fd this process holds, as /proc/self/fd and fdinfo show it.
public struct OpenFileInfo: Hashable, Sendable, Codable {
    public enum Kind: Hashable, Sendable, Codable {
        case iommufd
        /// A VFIO cdev (fdinfo `vfio-device-syspath:` names the device).
        case vfioDevice(PCIAddress?)
        case eventQueue
        case memfd
        case other
    }
    public var fd: Int32
    public var kind: Kind
    public init(fd: Int32, kind: Kind) { self.fd = fd; self.kind = kind }
}

/// A process that holds a file open, as /proc/<pid>/fd shows it.
public struct FileHolder: Hashable, Sendable, Codable, CustomStringConvertible {
    public var pid: Int32
    /// /proc/<pid>/comm ("?" when it could not be read).
    public var command: String
    public init(pid: Int32, command: String) { self.pid = pid; self.command = command }
    public var description: String { "pid \(pid) (\(command))" }
}

/// IOMMU_OPTION's options (docs/kernel-interface.md §2.11).
public enum IommuOption: UInt32, Sendable, Codable {
    /// 0: pinned pages are charged to the user, 1: to the process (mm). Global; SET needs
    /// CAP_SYS_RESOURCE and a context that holds no object yet.
    case rlimitMode = 0
    /// Per IOAS: 0 maps in PAGE_SIZE pieces.
    case hugePages = 1
}

/// A driver_override read on its own.
public enum DriverOverrideRead: Hashable, Sendable {
    /// The device is not in sysfs (any more).
    case noDevice
    /// The override, nil when unset.
    case value(String?)
}

public enum ChangeFeedOpening {
    case opened(KernelChangeFeed)
    /// Why this port gives no change signal.
    case unavailable(String)
}

public protocol KernelPort: AnyObject {
    // MARK: facts
    /// /dev/iommu exists (kernel with IOMMUFD).
    var hasIommufd: Bool { get }
    /// /dev/vfio/devices exists (VFIO_DEVICE_CDEV).
    var hasVfioCdev: Bool { get }
    /// Number of mutating calls made through this port since it was created.
    var mutatingCalls: Int { get }
    /// Names the process whose fds hold the iommufd contexts (this process, a remote
    /// executor's connection, the simulated process): contexts live exactly as long as it.
    var holderIdentity: String { get }

    // MARK: iommufd context
    func openIommufd() throws(KernelCallError) -> IommufdHandle
    func close(_ iommufd: IommufdHandle)

    // MARK: iommufd ioctls
    func destroy(_ fd: IommufdHandle, id: ObjectID) throws(KernelCallError)
    func ioasAlloc(_ fd: IommufdHandle) throws(KernelCallError) -> ObjectID
    func ioasIovaRanges(_ fd: IommufdHandle, ioas: ObjectID) throws(KernelCallError) -> (ranges: [IovaRange], alignment: UInt64)
    /// IOMMU_IOAS_MAP (source .userVA) or IOMMU_IOAS_MAP_FILE (source .file); returns the IOVA.
    func ioasMap(_ fd: IommufdHandle, ioas: ObjectID, flags: IOASMapFlags, source: MapSource, length: UInt64, iova: UInt64) throws(KernelCallError) -> UInt64
    /// Returns the number of bytes unmapped.
    func ioasUnmap(_ fd: IommufdHandle, ioas: ObjectID, iova: UInt64, length: UInt64) throws(KernelCallError) -> UInt64
    func hwptAlloc(_ fd: IommufdHandle, flags: HWPTAllocFlags, devID: ObjectID, ptID: ObjectID, dataType: HWPTDataType, data: [UInt8]) throws(KernelCallError) -> ObjectID
    /// `requestType` non-nil sets IOMMU_HW_INFO_FLAG_INPUT_TYPE with that type.
    func getHwInfo(_ fd: IommufdHandle, devID: ObjectID, requestType: HWInfoType?) throws(KernelCallError) -> HwInfo
    /// Returns the vIOMMU id and the driver data written back (Tegra241: mmap offset/length, 16 bytes).
    func viommuAlloc(_ fd: IommufdHandle, type: VIOMMUType, devID: ObjectID, hwptID: ObjectID, data: [UInt8]) throws(KernelCallError) -> (id: ObjectID, dataOut: [UInt8])
    func vdeviceAlloc(_ fd: IommufdHandle, viommuID: ObjectID, devID: ObjectID, virtID: UInt64) throws(KernelCallError) -> ObjectID
    func veventqAlloc(_ fd: IommufdHandle, viommuID: ObjectID, type: VEventQType, depth: UInt32) throws(KernelCallError) -> (id: ObjectID, eventFD: KernelFile)
    /// Closes a vEVENTQ fd (its DESTROY is EBUSY while it is open).
    func closeEventFD(_ fd: IommufdHandle, _ eventFD: KernelFile)
    func hwQueueAlloc(_ fd: IommufdHandle, viommuID: ObjectID, type: HWQueueType, index: UInt32, iova: UInt64, length: UInt64) throws(KernelCallError) -> ObjectID

    /// IOMMU_HWPT_INVALIDATE (docs/kernel-interface.md §2.17, ARM §5.5) on a nested HWPT or a vIOMMU: `entries`
    /// holds `entryNum` requests of `entryLen` bytes each. Returns the number handled.
    func hwptInvalidate(_ fd: IommufdHandle, hwptID: ObjectID, dataType: InvalidateDataType, entryLen: UInt32, entryNum: UInt32, entries: [UInt8]) throws(KernelCallError) -> UInt32

    /// IOMMU_OPTION (docs/kernel-interface.md §2.11): SET (`value` non-nil) or GET; returns val64 as the kernel wrote it back.
    @discardableResult
    func iommuOption(_ fd: IommufdHandle, option: IommuOption, objectID: ObjectID, set value: UInt64?) throws(KernelCallError) -> UInt64

    // MARK: selftest mock devices (CONFIG_IOMMUFD_TEST, docs/kernel-interface.md §7)
    func mockDomain(_ fd: IommufdHandle, ptID: ObjectID) throws(KernelCallError) -> MockDevice
    func mockDomainReplace(_ fd: IommufdHandle, stdevID: ObjectID, ptID: ObjectID) throws(KernelCallError) -> ObjectID

    // MARK: VFIO cdev
    func openVfioDevice(index: Int) throws(KernelCallError) -> DeviceHandle
    func bindIommufd(_ dev: DeviceHandle, iommufd: IommufdHandle) throws(KernelCallError) -> ObjectID
    /// Returns the HWPT actually attached.
    func attach(_ dev: DeviceHandle, ptID: ObjectID) throws(KernelCallError) -> ObjectID
    func detach(_ dev: DeviceHandle) throws(KernelCallError)
    func close(_ dev: DeviceHandle)

    // MARK: guest memory
    func createGuestMemory(name: String, size: UInt64, backing: GuestMemoryBacking, hugepageSize: UInt64?) throws(KernelCallError) -> GuestMemory
    func releaseGuestMemory(_ memory: GuestMemory)

    // MARK: sysfs reads
    func pciDevices() throws(KernelCallError) -> [SysfsPCIDevice]
    func pciDevice(_ address: PCIAddress) throws(KernelCallError) -> SysfsPCIDevice?
    func iommuGroupMembers(_ group: Int) throws(KernelCallError) -> [PCIAddress]
    /// Names under /sys/class/iommu.
    func iommuNames() throws(KernelCallError) -> [String]
    /// Lines of /sys/kernel/iommu_groups/<G>/reserved_regions as (start, last, type).
    func reservedRegions(group: Int) throws(KernelCallError) -> [(start: UInt64, last: UInt64, type: String)]
    /// /sys/bus/pci/drivers/<name> exists.
    func driverLoaded(_ name: String) throws(KernelCallError) -> Bool
    /// One device's driver_override alone (what no uevent signals, docs/kernel-interface.md §12).
    func driverOverride(_ address: PCIAddress) throws(KernelCallError) -> DriverOverrideRead

    // MARK: change signals (docs/kernel-interface.md §12)
    /// A feed of what changed since the last observation, proven to work, or why there is
    /// none (then every observation reads everything).
    func openChangeFeed() -> ChangeFeedOpening

    // MARK: sysfs binding writes (docs/kernel-interface.md §8, "Safe move to vfio-pci")
    /// Writes `driver` (or "\n" to clear when nil) to driver_override.
    func writeDriverOverride(_ address: PCIAddress, _ driver: String?) throws(KernelCallError)
    /// Writes the address to /sys/bus/pci/drivers/<driver>/unbind.
    func unbindDriver(_ address: PCIAddress, driver: String) throws(KernelCallError)
    /// Writes the address to /sys/bus/pci/drivers_probe.
    func driversProbe(_ address: PCIAddress) throws(KernelCallError)

    // MARK: who holds a device
    /// Every process that holds the device's VFIO cdev (or its VFIO group) open, this one
    /// included: writing `unbind` for such a device blocks in the kernel until the fd
    /// closes (docs/contract.md §7), so vsmmu asks first.
    func deviceHolders(_ address: PCIAddress) throws(KernelCallError) -> [FileHolder]

    // MARK: this process's files
    /// Every fd this process holds that the kernel port cares about. After an interrupted
    /// apply, fds the holdings do not record (opened by a step that never finished) are
    /// found here and closed, so that the device they bind can be bound again.
    func openFiles() throws(KernelCallError) -> [OpenFileInfo]
    /// close(2) on an fd found by `openFiles`.
    func closeFile(_ fd: Int32)

    // MARK: locked memory
    /// This process's RLIMIT_MEMLOCK (soft) set to `bytes` with CAP_IPC_LOCK dropped from its
    /// effective set, so that pinning is charged against the limit; nil puts back the limit
    /// and the capability it had (docs/kernel-interface.md §2.6). The differential corpora's
    /// `memlock`; on the simulated kernel, the holder's limit (nil: nothing is charged).
    func limitLockedMemory(_ bytes: UInt64?) throws(KernelCallError)

    // MARK: ownership
    /// chown of /dev/vfio/devices/vfioN to the VMM's user.
    func chownVfioDevice(index: Int, uid: UInt32, gid: UInt32) throws(KernelCallError)
    func vfioDeviceOwner(index: Int) throws(KernelCallError) -> (uid: UInt32, gid: UInt32)?
}

extension KernelPort {
    public func driverOverride(_ address: PCIAddress) throws(KernelCallError) -> DriverOverrideRead {
        try pciDevice(address).map { .value($0.driverOverride) } ?? .noDevice
    }

    public func openChangeFeed() -> ChangeFeedOpening { .unavailable("this kernel port gives no change signal") }
}
