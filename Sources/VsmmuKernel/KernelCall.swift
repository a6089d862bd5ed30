/// The vocabulary of kernel calls: every call the kernel port makes, with its C name
/// (the ioctl's, or a name for the sysfs / file step), its request number when it is an
/// ioctl (§1.1), and whether it changes kernel state. Plans, errors, traces, hints and
/// VSMMU_SIM_FAIL name calls by these values; `KernelRequest` writes their details.
public struct KernelCall: Hashable, Sendable, CustomStringConvertible {
    /// The C name, e.g. "IOMMU_DESTROY"; non-ioctl steps have names such as "SYSFS_UNBIND".
    public let name: String
    /// The ioctl request number; nil for sysfs writes, opens, closes and memory calls.
    public let request: UInt32?
    /// Counted in `KernelPort.mutatingCalls` (and logged by the simulated kernel).
    public let isMutating: Bool

    init(_ name: String, request: UInt32? = nil, mutating: Bool) {
        self.name = name; self.request = request; self.isMutating = mutating
    }

    public var description: String { name }

    /// The vocabulary's call of that name, or nil.
    public init?(name: String) {
        guard let known = KernelCall.all.first(where: { $0.name == name }) else { return nil }
        self = known
    }

    /// A step below the port (a seam's own system call, e.g. "OPEN" or "REMOTE_CONNECT"),
    /// named for errors only: never planned, hinted or injected.
    public static func system(_ name: String) -> KernelCall { KernelCall(name: name) ?? KernelCall(name, mutating: false) }

    // MARK: iommufd ioctls (§1.1)
    public static let destroy = KernelCall("IOMMU_DESTROY", request: 0x3B80, mutating: true)
    public static let ioasAlloc = KernelCall("IOMMU_IOAS_ALLOC", request: 0x3B81, mutating: true)
    public static let ioasAllowIovas = KernelCall("IOMMU_IOAS_ALLOW_IOVAS", request: 0x3B82, mutating: true)
    public static let ioasCopy = KernelCall("IOMMU_IOAS_COPY", request: 0x3B83, mutating: true)
    public static let ioasIovaRanges = KernelCall("IOMMU_IOAS_IOVA_RANGES", request: 0x3B84, mutating: false)
    public static let ioasMap = KernelCall("IOMMU_IOAS_MAP", request: 0x3B85, mutating: true)
    public static let ioasUnmap = KernelCall("IOMMU_IOAS_UNMAP", request: 0x3B86, mutating: true)
    public static let option = KernelCall("IOMMU_OPTION", request: 0x3B87, mutating: true)
    public static let vfioIoas = KernelCall("IOMMU_VFIO_IOAS", request: 0x3B88, mutating: true)
    public static let hwptAlloc = KernelCall("IOMMU_HWPT_ALLOC", request: 0x3B89, mutating: true)
    public static let getHwInfo = KernelCall("IOMMU_GET_HW_INFO", request: 0x3B8A, mutating: false)
    /// Changes the IOMMU's caches, no iommufd object: not counted as mutating.
    public static let hwptInvalidate = KernelCall("IOMMU_HWPT_INVALIDATE", request: 0x3B8D, mutating: false)
    public static let ioasMapFile = KernelCall("IOMMU_IOAS_MAP_FILE", request: 0x3B8F, mutating: true)
    public static let viommuAlloc = KernelCall("IOMMU_VIOMMU_ALLOC", request: 0x3B90, mutating: true)
    public static let vdeviceAlloc = KernelCall("IOMMU_VDEVICE_ALLOC", request: 0x3B91, mutating: true)
    public static let veventqAlloc = KernelCall("IOMMU_VEVENTQ_ALLOC", request: 0x3B93, mutating: true)
    public static let hwQueueAlloc = KernelCall("IOMMU_HW_QUEUE_ALLOC", request: 0x3B94, mutating: true)
    /// The selftest mock driver's command (CONFIG_IOMMUFD_TEST, §7).
    public static let testCmd = KernelCall("IOMMU_TEST_CMD", request: 0x3BA0, mutating: true)

    // MARK: VFIO cdev ioctls
    public static let bindIommufd = KernelCall("VFIO_DEVICE_BIND_IOMMUFD", request: 0x3B76, mutating: true)
    public static let attach = KernelCall("VFIO_DEVICE_ATTACH_IOMMUFD_PT", request: 0x3B77, mutating: true)
    public static let detach = KernelCall("VFIO_DEVICE_DETACH_IOMMUFD_PT", request: 0x3B78, mutating: true)
    public static let deviceGetInfo = KernelCall("VFIO_DEVICE_GET_INFO", request: 0x3B6B, mutating: false)

    // MARK: files and memory
    public static let openIommufd = KernelCall("OPEN_IOMMUFD", mutating: true)
    public static let closeIommufd = KernelCall("CLOSE_IOMMUFD", mutating: true)
    public static let openVfioDevice = KernelCall("OPEN_VFIO_DEVICE", mutating: true)
    public static let closeVfioDevice = KernelCall("CLOSE_VFIO_DEVICE", mutating: true)
    public static let closeEventFD = KernelCall("CLOSE_EVENT_FD", mutating: true)
    /// close(2) of an fd found by `openFiles` (an orphan).
    public static let closeFD = KernelCall("CLOSE_FD", mutating: true)
    public static let memfdCreate = KernelCall("MEMFD_CREATE", mutating: true)
    public static let mmapAnon = KernelCall("MMAP_ANON", mutating: true)
    public static let munmap = KernelCall("MUNMAP", mutating: true)
    public static let chownVfioDevice = KernelCall("CHOWN_VFIO_DEVICE", mutating: true)
    public static let statVfioDevice = KernelCall("STAT_VFIO_DEVICE", mutating: false)
    /// The holding process exits (the simulated kernel's; the real one just dies).
    public static let processExit = KernelCall("PROCESS_EXIT", mutating: true)
    /// A simulated VMM process starts / takes fds sent to it (SCM_RIGHTS), simulated kernel only.
    public static let processSpawn = KernelCall("PROCESS_SPAWN", mutating: true)
    public static let sendFDs = KernelCall("SCM_RIGHTS", mutating: true)
    /// Who holds a device's VFIO cdev or group open: /proc/<pid>/fd of every process.
    public static let procFDScan = KernelCall("PROC_FD_SCAN", mutating: false)

    // MARK: sysfs (§8)
    public static let sysfsDriverOverride = KernelCall("SYSFS_DRIVER_OVERRIDE", mutating: true)
    public static let sysfsUnbind = KernelCall("SYSFS_UNBIND", mutating: true)
    public static let sysfsDriversProbe = KernelCall("SYSFS_DRIVERS_PROBE", mutating: true)
    public static let sysfsReadPCIDevices = KernelCall("SYSFS_READ_PCI_DEVICES", mutating: false)
    public static let sysfsReadPCIDevice = KernelCall("SYSFS_READ_PCI_DEVICE", mutating: false)
    public static let sysfsReadIOMMUGroup = KernelCall("SYSFS_READ_IOMMU_GROUP", mutating: false)
    public static let sysfsReadIOMMUNames = KernelCall("SYSFS_READ_IOMMU_NAMES", mutating: false)
    public static let sysfsReadReservedRegions = KernelCall("SYSFS_READ_RESERVED_REGIONS", mutating: false)
    public static let sysfsReadDriver = KernelCall("SYSFS_READ_DRIVER", mutating: false)

    /// Every call of the vocabulary.
    public static let all: [KernelCall] = [
        destroy, ioasAlloc, ioasAllowIovas, ioasCopy, ioasIovaRanges, ioasMap, ioasUnmap, option, vfioIoas, hwptAlloc,
        getHwInfo, hwptInvalidate, ioasMapFile, viommuAlloc, vdeviceAlloc, veventqAlloc, hwQueueAlloc, testCmd,
        bindIommufd, attach, detach, deviceGetInfo,
        openIommufd, closeIommufd, openVfioDevice, closeVfioDevice, closeEventFD, closeFD, memfdCreate, mmapAnon, munmap,
        chownVfioDevice, statVfioDevice, processExit, processSpawn, sendFDs, procFDScan,
        sysfsDriverOverride, sysfsUnbind, sysfsDriversProbe, sysfsReadPCIDevices, sysfsReadPCIDevice, sysfsReadIOMMUGroup,
        sysfsReadIOMMUNames, sysfsReadReservedRegions, sysfsReadDriver,
    ]
}

/// One call with its arguments, as both backends describe it in errors and traces (the
/// uAPI struct's field names, numbers as the kernel header writes them).
public enum KernelRequest: Sendable {
    case destroy(fd: Int32, id: ObjectID)
    case ioasAlloc(fd: Int32)
    case ioasIovaRanges(fd: Int32, ioas: ObjectID, numIovas: UInt32?)
    case ioasMap(fd: Int32, ioas: ObjectID, flags: IOASMapFlags, source: MapSource, length: UInt64, iova: UInt64)
    case ioasUnmap(fd: Int32, ioas: ObjectID, iova: UInt64, length: UInt64)
    case hwptAlloc(fd: Int32, flags: HWPTAllocFlags, devID: ObjectID, ptID: ObjectID, dataType: HWPTDataType, dataLength: Int)
    case getHwInfo(fd: Int32, devID: ObjectID, requestType: HWInfoType?)
    case hwptInvalidate(fd: Int32, hwptID: ObjectID, dataType: InvalidateDataType, entryLen: UInt32, entryNum: UInt32)
    case viommuAlloc(fd: Int32, type: VIOMMUType, devID: ObjectID, hwptID: ObjectID, dataLength: Int)
    case vdeviceAlloc(fd: Int32, viommuID: ObjectID, devID: ObjectID, virtID: UInt64)
    case veventqAlloc(fd: Int32, viommuID: ObjectID, type: VEventQType, depth: UInt32)
    case hwQueueAlloc(fd: Int32, viommuID: ObjectID, type: HWQueueType, index: UInt32, iova: UInt64, length: UInt64)
    case mockDomain(fd: Int32, ptID: ObjectID)
    case mockDomainReplace(fd: Int32, stdevID: ObjectID, ptID: ObjectID)
    case bindIommufd(dev: Int32, iommufd: Int32)
    case attach(dev: Int32, ptID: ObjectID)
    case detach(dev: Int32)
    case deviceGetInfo(dev: Int32)
    case openIommufd
    case closeIommufd(fd: Int32)
    case openVfioDevice(index: Int)
    case closeVfioDevice(fd: Int32)
    case closeEventFD(fd: Int32)
    case closeFD(fd: Int32)
    case createGuestMemory(name: String, size: UInt64, backing: GuestMemoryBacking, hugepageSize: UInt64?)
    case releaseGuestMemory(GuestMemory)
    case chownVfioDevice(index: Int, uid: UInt32, gid: UInt32)
    case statVfioDevice(index: Int)
    case processExit
    case option(fd: Int32, option: IommuOption, objectID: ObjectID, value: UInt64?)
    case processSpawn(pid: Int32, command: String)
    case sendFDs(fds: [Int32], process: Int)
    case procFDScan(PCIAddress)
    case writeDriverOverride(address: PCIAddress, driver: String?)
    case unbindDriver(address: PCIAddress, driver: String)
    case driversProbe(address: PCIAddress)
    case readPCIDevices
    case readPCIDevice(PCIAddress)
    case readIOMMUGroup(Int)
    case readIOMMUNames
    case readReservedRegions(group: Int)
    case readDriver(String)

    public var call: KernelCall {
        switch self {
        case .destroy: return .destroy
        case .ioasAlloc: return .ioasAlloc
        case .ioasIovaRanges: return .ioasIovaRanges
        case .ioasMap(_, _, _, let source, _, _):
            if case .file = source { return .ioasMapFile }
            return .ioasMap
        case .ioasUnmap: return .ioasUnmap
        case .hwptAlloc: return .hwptAlloc
        case .getHwInfo: return .getHwInfo
        case .hwptInvalidate: return .hwptInvalidate
        case .viommuAlloc: return .viommuAlloc
        case .vdeviceAlloc: return .vdeviceAlloc
        case .veventqAlloc: return .veventqAlloc
        case .hwQueueAlloc: return .hwQueueAlloc
        case .mockDomain, .mockDomainReplace: return .testCmd
        case .bindIommufd: return .bindIommufd
        case .attach: return .attach
        case .detach: return .detach
        case .deviceGetInfo: return .deviceGetInfo
        case .openIommufd: return .openIommufd
        case .closeIommufd: return .closeIommufd
        case .openVfioDevice: return .openVfioDevice
        case .closeVfioDevice: return .closeVfioDevice
        case .closeEventFD: return .closeEventFD
        case .closeFD: return .closeFD
        case .createGuestMemory(_, _, let backing, _): return backing == .anonymous ? .mmapAnon : .memfdCreate
        case .releaseGuestMemory: return .munmap
        case .chownVfioDevice: return .chownVfioDevice
        case .statVfioDevice: return .statVfioDevice
        case .processExit: return .processExit
        case .option: return .option
        case .processSpawn: return .processSpawn
        case .sendFDs: return .sendFDs
        case .procFDScan: return .procFDScan
        case .writeDriverOverride: return .sysfsDriverOverride
        case .unbindDriver: return .sysfsUnbind
        case .driversProbe: return .sysfsDriversProbe
        case .readPCIDevices: return .sysfsReadPCIDevices
        case .readPCIDevice: return .sysfsReadPCIDevice
        case .readIOMMUGroup: return .sysfsReadIOMMUGroup
        case .readIOMMUNames: return .sysfsReadIOMMUNames
        case .readReservedRegions: return .sysfsReadReservedRegions
        case .readDriver: return .sysfsReadDriver
        }
    }

    /// The arguments, e.g. "fd=3 viommu_id=2 dev_id=1 virt_id=0x1100".
    public var detail: String {
        switch self {
        case .destroy(let fd, let id): return "fd=\(fd) id=\(id)"
        case .ioasAlloc(let fd): return "fd=\(fd)"
        case .ioasIovaRanges(let fd, let ioas, let n): return "fd=\(fd) ioas_id=\(ioas)" + (n.map { " num_iovas=\($0)" } ?? "")
        case .ioasMap(let fd, let ioas, let flags, let source, let length, let iova):
            let from: String
            switch source {
            case .userVA(let va): from = "user_va=\(hex(va))"
            case .file(let file, let offset): from = "memfd=\(file.fd) start=\(hex(offset))"
            }
            return "fd=\(fd) ioas_id=\(ioas) flags=\(hex(flags.rawValue)) \(from) length=\(hex(length)) iova=\(hex(iova))"
        case .ioasUnmap(let fd, let ioas, let iova, let length): return "fd=\(fd) ioas_id=\(ioas) iova=\(hex(iova)) length=\(hex(length))"
        case .hwptAlloc(let fd, let flags, let dev, let pt, let type, let n):
            return "fd=\(fd) flags=\(hex(flags.rawValue)) dev_id=\(dev) pt_id=\(pt) data_type=\(hex(type.rawValue)) data_len=\(n)"
        case .getHwInfo(let fd, let dev, let type): return "fd=\(fd) dev_id=\(dev)" + (type.map { " in_data_type=\(hex($0.rawValue))" } ?? "")
        case .hwptInvalidate(let fd, let hwpt, let type, let len, let num):
            return "fd=\(fd) hwpt_id=\(hwpt) data_type=\(type.rawValue) entry_len=\(len) entry_num=\(num)"
        case .viommuAlloc(let fd, let type, let dev, let hwpt, let n):
            return "fd=\(fd) type=\(hex(type.rawValue)) dev_id=\(dev) hwpt_id=\(hwpt) data_len=\(n)"
        case .vdeviceAlloc(let fd, let viommu, let dev, let virt): return "fd=\(fd) viommu_id=\(viommu) dev_id=\(dev) virt_id=\(hex(virt))"
        case .veventqAlloc(let fd, let viommu, let type, let depth):
            return "fd=\(fd) viommu_id=\(viommu) type=\(hex(type.rawValue)) veventq_depth=\(depth)"
        case .hwQueueAlloc(let fd, let viommu, let type, let index, let iova, let length):
            return "fd=\(fd) viommu_id=\(viommu) type=\(hex(type.rawValue)) index=\(index) nesting_parent_iova=\(hex(iova)) length=\(hex(length))"
        case .mockDomain(let fd, let pt): return "fd=\(fd) op=MOCK_DOMAIN id=\(pt)"
        case .mockDomainReplace(let fd, let stdev, let pt): return "fd=\(fd) op=MOCK_DOMAIN_REPLACE id=\(stdev) pt_id=\(pt)"
        case .bindIommufd(let dev, let iommufd): return "fd=\(dev) iommufd=\(iommufd)"
        case .attach(let dev, let pt): return "fd=\(dev) pt_id=\(pt)"
        case .detach(let dev), .deviceGetInfo(let dev): return "fd=\(dev)"
        case .openIommufd: return "/dev/iommu"
        case .closeIommufd(let fd), .closeVfioDevice(let fd), .closeEventFD(let fd), .closeFD(let fd): return "fd=\(fd)"
        case .openVfioDevice(let index), .statVfioDevice(let index): return "/dev/vfio/devices/vfio\(index)"
        case .createGuestMemory(let name, let size, let backing, let huge):
            return "name=\(name) size=\(hex(size)) backing=\(backing.rawValue)" + (huge.map { " hugepage=\(hex($0))" } ?? "")
        case .releaseGuestMemory(let m): return "user_va=\(hex(m.userVA)) size=\(hex(m.size))" + (m.file.map { " memfd=\($0.fd)" } ?? "")
        case .chownVfioDevice(let index, let uid, let gid): return "/dev/vfio/devices/vfio\(index) -> \(uid):\(gid)"
        case .processExit: return ""
        case .option(let fd, let option, let id, let value):
            return "fd=\(fd) option_id=\(option.rawValue) op=\(value == nil ? "GET" : "SET") object_id=\(id)" + (value.map { " val64=\($0)" } ?? "")
        case .processSpawn(let pid, let command): return "pid=\(pid) comm=\(command)"
        case .sendFDs(let fds, let process): return "fds=\(fds.map(String.init).joined(separator: ",")) to=process#\(process)"
        case .procFDScan(let a): return "/proc/*/fd for \(a)"
        case .writeDriverOverride(let a, let d): return "/sys/bus/pci/devices/\(a)/driver_override <- \(d ?? "(clear)")"
        case .unbindDriver(let a, let d): return "/sys/bus/pci/drivers/\(d)/unbind <- \(a)"
        case .driversProbe(let a): return "/sys/bus/pci/drivers_probe <- \(a)"
        case .readPCIDevices: return "/sys/bus/pci/devices"
        case .readPCIDevice(let a): return "/sys/bus/pci/devices/\(a)"
        case .readIOMMUGroup(let g): return "/sys/kernel/iommu_groups/\(g)/devices"
        case .readIOMMUNames: return "/sys/class/iommu"
        case .readReservedRegions(let g): return "/sys/kernel/iommu_groups/\(g)/reserved_regions"
        case .readDriver(let name): return "/sys/bus/pci/drivers/\(name)"
        }
    }
}
