/// The vocabulary of kernel calls: every call the kernel port makes, by its C name (the
/// ioctl's, or a name for the sysfs / file step), with its request number when it is an
/// ioctl (docs/kernel-interface.md §1.1) and whether it changes kernel state. Plans, errors, traces, hints and
/// VSMMU_SIM_FAIL name calls by these values; `KernelRequest` writes their details. A new
/// case is pointed at by the compiler in `request`, `isMutating` and KernelRequest, and
/// by the tests in vsmmu-remote's table.
public enum KernelCall: String, CaseIterable, Hashable, Sendable, CustomStringConvertible {
    // iommufd ioctls (docs/kernel-interface.md §1.1)
    case destroy = "IOMMU_DESTROY"
    case ioasAlloc = "IOMMU_IOAS_ALLOC"
    case ioasIovaRanges = "IOMMU_IOAS_IOVA_RANGES"
    case ioasMap = "IOMMU_IOAS_MAP"
    case ioasUnmap = "IOMMU_IOAS_UNMAP"
    /// RLIMIT_MODE on the fresh iommufd a launch hands a VMM (docs/kernel-interface.md §2.11).
    case option = "IOMMU_OPTION"
    case hwptAlloc = "IOMMU_HWPT_ALLOC"
    case getHwInfo = "IOMMU_GET_HW_INFO"
    case hwptInvalidate = "IOMMU_HWPT_INVALIDATE"
    case ioasMapFile = "IOMMU_IOAS_MAP_FILE"
    case viommuAlloc = "IOMMU_VIOMMU_ALLOC"
    case vdeviceAlloc = "IOMMU_VDEVICE_ALLOC"
    case veventqAlloc = "IOMMU_VEVENTQ_ALLOC"
    case hwQueueAlloc = "IOMMU_HW_QUEUE_ALLOC"
    /// The selftest mock driver's command (CONFIG_IOMMUFD_TEST, docs/kernel-interface.md §7).
    case testCmd = "IOMMU_TEST_CMD"
    // VFIO cdev ioctls
    case bindIommufd = "VFIO_DEVICE_BIND_IOMMUFD"
    case attach = "VFIO_DEVICE_ATTACH_IOMMUFD_PT"
    case detach = "VFIO_DEVICE_DETACH_IOMMUFD_PT"
    case deviceGetInfo = "VFIO_DEVICE_GET_INFO"
    // files and memory
    case openIommufd = "OPEN_IOMMUFD"
    case closeIommufd = "CLOSE_IOMMUFD"
    case openVfioDevice = "OPEN_VFIO_DEVICE"
    case closeVfioDevice = "CLOSE_VFIO_DEVICE"
    case closeEventFD = "CLOSE_EVENT_FD"
    /// close(2) of an fd found by `openFiles` (an orphan).
    case closeFD = "CLOSE_FD"
    case memfdCreate = "MEMFD_CREATE"
    case mmapAnon = "MMAP_ANON"
    case munmap = "MUNMAP"
    case chownVfioDevice = "CHOWN_VFIO_DEVICE"
    case statVfioDevice = "STAT_VFIO_DEVICE"
    /// The holding process exits (the simulated kernel's; the real one just dies).
    case processExit = "PROCESS_EXIT"
    /// A simulated VMM process starts / takes fds sent to it (SCM_RIGHTS): simulated kernel only.
    case processSpawn = "PROCESS_SPAWN"
    case sendFDs = "SCM_RIGHTS"
    /// Who holds a device's VFIO cdev or group open: /proc/<pid>/fd of every process.
    case procFDScan = "PROC_FD_SCAN"
    // sysfs (docs/kernel-interface.md §8)
    case sysfsDriverOverride = "SYSFS_DRIVER_OVERRIDE"
    case sysfsUnbind = "SYSFS_UNBIND"
    case sysfsDriversProbe = "SYSFS_DRIVERS_PROBE"
    case sysfsReadPCIDevices = "SYSFS_READ_PCI_DEVICES"
    case sysfsReadPCIDevice = "SYSFS_READ_PCI_DEVICE"
    case sysfsReadIOMMUGroup = "SYSFS_READ_IOMMU_GROUP"
    case sysfsReadIOMMUNames = "SYSFS_READ_IOMMU_NAMES"
    case sysfsReadReservedRegions = "SYSFS_READ_RESERVED_REGIONS"
    case sysfsReadDriver = "SYSFS_READ_DRIVER"
    /// One device's driver_override alone: the one fact the kernel never signals (docs/kernel-interface.md §12).
    case sysfsReadDriverOverride = "SYSFS_READ_DRIVER_OVERRIDE"

    /// The C name, e.g. "IOMMU_DESTROY".
    public var name: String { rawValue }
    public var description: String { rawValue }
    /// The vocabulary's call of that name, or nil.
    public init?(name: String) { self.init(rawValue: name) }

    /// The ioctl request number; nil for sysfs writes, opens, closes and memory calls.
    public var request: UInt32? {
        switch self {
        case .destroy: return 0x3B80
        case .ioasAlloc: return 0x3B81
        case .ioasIovaRanges: return 0x3B84
        case .ioasMap: return 0x3B85
        case .ioasUnmap: return 0x3B86
        case .option: return 0x3B87
        case .hwptAlloc: return 0x3B89
        case .getHwInfo: return 0x3B8A
        case .hwptInvalidate: return 0x3B8D
        case .ioasMapFile: return 0x3B8F
        case .viommuAlloc: return 0x3B90
        case .vdeviceAlloc: return 0x3B91
        case .veventqAlloc: return 0x3B93
        case .hwQueueAlloc: return 0x3B94
        case .testCmd: return 0x3BA0
        case .bindIommufd: return 0x3B76
        case .attach: return 0x3B77
        case .detach: return 0x3B78
        case .deviceGetInfo: return 0x3B6B
        case .openIommufd, .closeIommufd, .openVfioDevice, .closeVfioDevice, .closeEventFD, .closeFD, .memfdCreate, .mmapAnon,
             .munmap, .chownVfioDevice, .statVfioDevice, .processExit, .processSpawn, .sendFDs, .procFDScan,
             .sysfsDriverOverride, .sysfsUnbind, .sysfsDriversProbe, .sysfsReadPCIDevices, .sysfsReadPCIDevice, .sysfsReadIOMMUGroup, .sysfsReadIOMMUNames, .sysfsReadReservedRegions,
             .sysfsReadDriver, .sysfsReadDriverOverride:
            return nil
        }
    }

    /// Counted in `KernelPort.mutatingCalls` (and logged by the simulated kernel).
    public var isMutating: Bool {
        switch self {
        // Reads; and INVALIDATE changes the IOMMU's caches, no iommufd object.
        case .ioasIovaRanges, .getHwInfo, .hwptInvalidate, .deviceGetInfo, .statVfioDevice, .sysfsReadPCIDevices,
             .sysfsReadPCIDevice, .sysfsReadIOMMUGroup, .sysfsReadIOMMUNames, .sysfsReadReservedRegions, .sysfsReadDriver,
             .sysfsReadDriverOverride, .procFDScan:
            return false
        case .destroy, .ioasAlloc, .ioasMap, .ioasUnmap, .option, .hwptAlloc, .ioasMapFile, .viommuAlloc, .vdeviceAlloc,
             .veventqAlloc, .hwQueueAlloc, .testCmd, .bindIommufd, .attach, .detach, .openIommufd, .closeIommufd,
             .openVfioDevice, .closeVfioDevice, .closeEventFD, .closeFD, .memfdCreate, .mmapAnon, .munmap, .chownVfioDevice,
             .processExit, .processSpawn, .sendFDs, .sysfsDriverOverride, .sysfsUnbind, .sysfsDriversProbe:
            return true
        }
    }
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
    case readDriverOverride(PCIAddress)

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
        case .readDriverOverride: return .sysfsReadDriverOverride
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
        case .readDriverOverride(let a): return "/sys/bus/pci/devices/\(a)/driver_override"
        }
    }
}
