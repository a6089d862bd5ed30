import VsmmuKernel

// The whole simulated kernel as plain Codable values: kernel.json is exactly this
// (SimStore), so nothing the simulation knows lives outside `SimState`.

extension SimulatedKernel {
    /// PAGE_SIZE of the simulated kernel (the host's kernel.pageSize): pinning, IOVA
    /// alignment, the smallest mapping and VA placement follow it.
    var simPageSize: UInt64 { state.kernel.effectivePageSize }
}

/// An IOMMU group: a PCI `iommu_group` number, or the private group each selftest mock
/// device gets (docs/kernel-interface.md §7.1: "each in its own IOMMU group").
enum GroupKey: Hashable, Codable {
    case pci(Int)
    case mock(Int)
}

/// Owner of `/dev/vfio/devices/vfioN` (docs/kernel-interface.md §8: created root:root).
struct VfioOwner: Hashable, Codable {
    var uid: UInt32
    var gid: UInt32
    static let root = VfioOwner(uid: 0, gid: 0)
}

/// One PCI device in the simulated sysfs.
struct SimPCIDevice: Hashable, Codable {
    var address: PCIAddress
    var vendor: UInt16
    var device: UInt16
    var classCode: UInt32
    var driver: String?
    var driverOverride: String?
    var iommuGroup: Int?
    var iommu: String?
    var numaNode: Int
    /// vfio-dev/vfioN, present while vfio-pci is bound (docs/kernel-interface.md §3.1).
    var vfioIndex: Int?
    /// The driver `drivers_probe` binds when no override is set: the host description's
    /// driver unless that was vfio-pci (then nil: the device stays unbound).
    var nativeDriver: String?
    /// Owner of the cdev node; reset to root:root whenever the node is re-created.
    var owner: VfioOwner
    /// The host description's per-device facts (docs/contract.md §3), kept as written (optional so
    /// that kernel.json saved before them decodes): nil means the IOMMU's value.
    var vfioDriver: String?
    var ats: Bool?
    var pasidWidth: Int?
    var canwbs: Bool?
    var bars: [PCIBar]?
    var unknownFacts: [DeviceFact]?
    /// A bridge's place in the hierarchy and ACS Control, as the host description states them.
    var secondaryBus: Int?
    var acsControl: UInt16?

    /// PCI class 0x0604xx: a PCI-to-PCI bridge (vfio-pci refuses non type-0 headers, docs/kernel-interface.md §8).
    var isBridge: Bool { (classCode >> 8) == 0x0604 }

    var hostDevice: HostPCIDevice {
        var d = HostPCIDevice(address: address, vendor: vendor, device: device, classCode: classCode, driver: driver,
                              iommuGroup: iommuGroup, iommu: iommu, numaNode: numaNode, vfioDriver: vfioDriver, ats: ats,
                              pasidWidth: pasidWidth, canwbs: canwbs, bars: bars, unknown: unknownFacts ?? [])
        d.secondaryBus = secondaryBus
        d.acsControl = acsControl
        return d
    }

    mutating func takeFacts(of host: HostPCIDevice) {
        vfioDriver = host.vfioDriver; ats = host.ats; pasidWidth = host.pasidWidth; canwbs = host.canwbs
        bars = host.bars; unknownFacts = host.unknown.isEmpty ? nil : host.unknown
        secondaryBus = host.secondaryBus; acsControl = host.acsControl
    }
}

// MARK: iommufd objects (docs/kernel-interface.md §4.1)

enum DeviceOrigin: Hashable, Codable {
    /// Bound through a VFIO cdev of this PCI device.
    case vfio(PCIAddress)
    /// A selftest mock device wrapped by the SELFTEST object `stdev` (docs/kernel-interface.md §7.2).
    case mock(serial: Int, stdev: ObjectID)
}

struct DeviceObject: Hashable, Codable {
    var origin: DeviceOrigin
    /// Name of the physical IOMMU instance (/sys/class/iommu/<name>).
    var iommu: String
    var group: GroupKey
    /// The HWPT the device is attached to (main attachment, no PASIDs).
    var attached: ObjectID?
}

struct PagingHWPT: Hashable, Codable {
    var ioas: ObjectID
    /// The IOMMU instance whose driver made the domain (the dev_id's IOMMU).
    var iommu: String
    var flags: HWPTAllocFlags
    /// Created by attach-to-IOAS; destroyed with its last device (docs/kernel-interface.md §3.3).
    var automatic: Bool
    /// The domain's input range; everything outside is reserved in the IOAS.
    var aperture: IovaRange
    /// ARM: the domain enforces cache coherency (made or upgraded through a CANWBS
    /// device): a non-CANWBS master cannot attach (docs/kernel-interface.md §5.2, §9.24). nil: false.
    var enforcesCoherency: Bool?
    var nestParent: Bool { flags.contains(.nestParent) }
}

enum NestedParent: Hashable, Codable {
    /// ARM SMMUv3 / selftest style: allocated on a vIOMMU.
    case viommu(ObjectID)
    /// Intel VT-d / selftest style: allocated directly on the nest-parent HWPT.
    case paging(ObjectID)
}

/// What a nested HWPT's data says about translation (ARM vSTE Config, docs/kernel-interface.md §5.3).
enum NestedConfig: String, Hashable, Codable {
    case abort, bypass, stage1
    /// Non-ARM driver data (VT-d S1, selftest): no vSTE.
    case driverData
}

struct NestedHWPT: Hashable, Codable {
    var parent: NestedParent
    var iommu: String
    var config: NestedConfig
    /// The stored vSTE words (V=0 stored as zeros, EATS removed), ARM only.
    var vste: [UInt64]?
}

enum MappingSource: Hashable, Codable {
    /// IOMMU_IOAS_MAP: a user VA; `memory` is set once pinned.
    case userVA(UInt64, memory: Int?)
    /// IOMMU_IOAS_MAP_FILE: the file is referenced at MAP time; `memory` nil = not a memfd.
    case file(memory: Int?, offset: UInt64)
}

struct Mapping: Hashable, Codable {
    var iova: UInt64
    var length: UInt64
    var readable: Bool
    var writable: Bool
    var source: MappingSource
    /// Pages pinned: happens when the IOAS holds a HWPT (docs/kernel-interface.md §2.6 "Pinning is lazy").
    var pinned: Bool
    /// The process that made the mapping (its mm and RLIMIT_MEMLOCK); nil: the holder.
    var mappedBy: Int?
    /// Whose RLIMIT_MEMLOCK budget the pinned pages are charged to; nil: nobody.
    var charged: MemlockAccount?
    /// Made with CAP_IPC_LOCK: never charged, whatever the limit when it is pinned (the
    /// kernel decides at IOAS_MAP, pages.c iopt_alloc_pages; seen in the x86 lab,
    /// selftest memlock-decided-at-map).
    var uncharged: Bool? = nil
    var last: UInt64 { iova &+ (length &- 1) }

    /// Offset of the mapping's first byte inside its backing memory.
    var sourceOffset: UInt64? {
        switch source {
        case .userVA: return nil
        case .file(_, let offset): return offset
        }
    }
    var memoryID: Int? {
        switch source {
        case .userVA(_, let memory): return memory
        case .file(let memory, _): return memory
        }
    }
}

struct IOASObject: Hashable, Codable {
    /// Kept sorted by IOVA.
    var mappings: [Mapping] = []
    /// IOMMU_OPTION_HUGE_PAGES set to 0 (io_pagetable.c iopt_disable_large_pages): the IOAS
    /// alignment is at least PAGE_SIZE. Optional so that older saved states still decode.
    var largePagesDisabled: Bool? = nil
}

/// A region of the iommufd fd's mmap space (vIOMMU MMIO pages, docs/kernel-interface.md §5.7).
struct MmapRegion: Hashable, Codable {
    var offset: UInt64
    var length: UInt64
}

struct VIOMMUObject: Hashable, Codable {
    var type: VIOMMUType
    var parent: ObjectID
    var iommu: String
    var mmap: MmapRegion?
}

struct VDeviceObject: Hashable, Codable {
    var viommu: ObjectID
    var device: ObjectID
    var virtID: UInt64
}

struct VEventQObject: Hashable, Codable {
    var viommu: ObjectID
    var type: VEventQType
    var depth: UInt32
    /// The event fd while it is open (it blocks this object's DESTROY, docs/kernel-interface.md §4.2).
    var fd: Int32?
}

struct HWQueueObject: Hashable, Codable {
    var viommu: ObjectID
    var type: HWQueueType
    var index: UInt32
    var iova: UInt64
    var length: UInt64
    /// The IOAS whose pages the queue pins and locks.
    var ioas: ObjectID
    /// The ID of the internal access that pins them (reserved, not an object).
    var accessID: ObjectID? = nil
    var last: UInt64 { iova &+ (length &- 1) }
}

struct SelftestObject: Hashable, Codable {
    var device: ObjectID
    var serial: Int
}

enum SimObject: Hashable, Codable {
    case device(DeviceObject)
    case hwptPaging(PagingHWPT)
    case hwptNested(NestedHWPT)
    case ioas(IOASObject)
    case viommu(VIOMMUObject)
    case vdevice(VDeviceObject)
    case veventq(VEventQObject)
    case hwQueue(HWQueueObject)
    case selftest(SelftestObject)

    /// The kernel's internal type name (docs/kernel-interface.md §4.1), for error details.
    var typeName: String {
        switch self {
        case .device: return "DEVICE"
        case .hwptPaging: return "HWPT_PAGING"
        case .hwptNested: return "HWPT_NESTED"
        case .ioas: return "IOAS"
        case .viommu: return "VIOMMU"
        case .vdevice: return "VDEVICE"
        case .veventq: return "VEVENTQ"
        case .hwQueue: return "HW_QUEUE"
        case .selftest: return "SELFTEST"
        }
    }
}

/// One iommufd context (the open file of /dev/iommu): its objects and ID space (docs/kernel-interface.md §4.1).
struct IommufdContext: Hashable, Codable {
    var objects: [ObjectID: SimObject] = [:]
    /// IDs of vDevices force-destroyed with their device: never reused (docs/kernel-interface.md §4.5).
    var tombstones: Set<ObjectID> = []
    var mmapRegions: [MmapRegion] = []
    /// IOMMU_OPTION RLIMIT_MODE: pinned pages charged to the process (mm), not the user.
    var accountPerProcess = false

    init() {}

    // Encoded with sorted arrays so that kernel.json is stable across saves.
    private struct Entry: Codable { var id: ObjectID; var object: SimObject }
    private enum CodingKeys: String, CodingKey { case objects, tombstones, mmapRegions, accountPerProcess }

    init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        for entry in try c.decode([Entry].self, forKey: .objects) { objects[entry.id] = entry.object }
        tombstones = Set(try c.decode([ObjectID].self, forKey: .tombstones))
        mmapRegions = try c.decode([MmapRegion].self, forKey: .mmapRegions)
        accountPerProcess = try c.decodeIfPresent(Bool.self, forKey: .accountPerProcess) ?? false
    }

    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(objects.sorted { $0.key < $1.key }.map { Entry(id: $0.key, object: $0.value) }, forKey: .objects)
        try c.encode(tombstones.sorted(), forKey: .tombstones)
        try c.encode(mmapRegions.sorted { $0.offset < $1.offset }, forKey: .mmapRegions)
        if accountPerProcess { try c.encode(true, forKey: .accountPerProcess) }
    }
}

/// An open VFIO cdev file.
struct VfioFile: Hashable, Codable {
    var address: PCIAddress
    /// Set by VFIO_DEVICE_BIND_IOMMUFD.
    var context: Int?
    var device: ObjectID?
}

/// What an fd number of the holding process refers to.
enum OpenFile: Hashable, Codable {
    case iommufd(context: Int)
    case vfioDevice(VfioFile)
    case veventq(context: Int, object: ObjectID)
    case memfd(memory: Int)
}

/// Guest RAM made by createGuestMemory: its VA range in the process, its memfd if any.
struct GuestMemoryRecord: Hashable, Codable {
    var id: Int
    var name: String
    var size: UInt64
    var backing: GuestMemoryBacking
    /// Backing page size: 4 KiB, or the huge page size.
    var pageSize: UInt64
    var userVA: UInt64
    /// Still mapped in the process (releaseGuestMemory / process exit unmap it).
    var vaMapped: Bool
    /// The memfd while open.
    var fd: Int32?
    var lastVA: UInt64 { userVA &+ (size &- 1) }
}

/// A process other than the holder (process 0: vsmmu or its agent) that holds fds of
/// the simulated kernel: a VMM started by `vsmmu launch`, standing for the real process
/// `pid`. fd numbers are unique across the simulated processes (a simplification: the
/// numbers are handles, and one table keeps the system-wide bind rules in one place).
struct SimProcess: Hashable, Codable {
    var pid: Int32
    var command: String
    /// CAP_SYS_RESOURCE (IOMMU_OPTION RLIMIT_MODE SET): a VMM runs without it.
    var capSysResource: Bool
    /// RLIMIT_MEMLOCK in bytes; nil: unlimited or CAP_IPC_LOCK (nothing charged).
    var memlockLimit: UInt64?
    /// The user whose locked_vm is charged in user mode; nil: root.
    var uid: UInt32?
}

struct SimState: Hashable, Codable {
    static let formatVersion = 1
    var formatVersion: Int = SimState.formatVersion
    var hostName: String
    var kernel: KernelFacts
    var iommus: [HostIOMMU]
    var devices: [PCIAddress: SimPCIDevice] = [:]
    /// Host-description devices behind the selftest IOMMU: not in sysfs, kept for host.yaml.
    var ignoredHostDevices: [HostPCIDevice] = []
    var files: [Int32: OpenFile] = [:]
    var contexts: [Int: IommufdContext] = [:]
    var nextContext: Int = 1
    var memories: [Int: GuestMemoryRecord] = [:]
    var nextMemory: Int = 1
    var nextMockSerial: Int = 0
    /// Sequence number of the last logged call folded into this state (SimStore).
    var appliedSequence: UInt64 = 0
    /// How many times the simulated holding process exited: names the current one.
    var processGeneration: Int = 0
    /// The host description last written to host.yaml: the base against which user
    /// edits of host.yaml are detected (SimStore).
    var savedHost: HostDescription?
    /// Owner of each fd that is not the holder's (process 0).
    var fileOwners: [Int32: Int] = [:]
    /// Processes besides the holder, by number (never reused).
    var processes: [Int: SimProcess] = [:]
    var nextProcess: Int = 1
    /// The process whose calls the kernel is answering now (0 between scoped runs).
    var currentProcess: Int = 0
    /// RLIMIT_MEMLOCK of the holder (process 0); nil: CAP_IPC_LOCK (root's vsmmu).
    var holderMemlockLimit: UInt64?
}

extension SimState {
    // Encoded with sorted arrays instead of dictionaries so that kernel.json is stable
    // across saves (JSONEncoder writes non-String-keyed dictionaries in hash order).
    private struct FileEntry: Codable { var fd: Int32; var file: OpenFile }
    private struct ContextEntry: Codable { var id: Int; var context: IommufdContext }
    private enum CodingKeys: String, CodingKey {
        case formatVersion, hostName, kernel, iommus, devices, ignoredHostDevices, files, contexts, nextContext
        case memories, nextMemory, nextMockSerial, appliedSequence, savedHost, processGeneration
        case fileOwners, processes, nextProcess, currentProcess, holderMemlockLimit
    }
    private struct OwnerEntry: Codable { var fd: Int32; var process: Int }
    private struct ProcessEntry: Codable { var id: Int; var process: SimProcess }

    init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        formatVersion = try c.decode(Int.self, forKey: .formatVersion)
        hostName = try c.decode(String.self, forKey: .hostName)
        kernel = try c.decode(KernelFacts.self, forKey: .kernel)
        iommus = try c.decode([HostIOMMU].self, forKey: .iommus)
        for device in try c.decode([SimPCIDevice].self, forKey: .devices) { devices[device.address] = device }
        ignoredHostDevices = try c.decode([HostPCIDevice].self, forKey: .ignoredHostDevices)
        for entry in try c.decode([FileEntry].self, forKey: .files) { files[entry.fd] = entry.file }
        for entry in try c.decode([ContextEntry].self, forKey: .contexts) { contexts[entry.id] = entry.context }
        nextContext = try c.decode(Int.self, forKey: .nextContext)
        for memory in try c.decode([GuestMemoryRecord].self, forKey: .memories) { memories[memory.id] = memory }
        nextMemory = try c.decode(Int.self, forKey: .nextMemory)
        nextMockSerial = try c.decode(Int.self, forKey: .nextMockSerial)
        appliedSequence = try c.decode(UInt64.self, forKey: .appliedSequence)
        savedHost = try c.decodeIfPresent(HostDescription.self, forKey: .savedHost)
        processGeneration = try c.decodeIfPresent(Int.self, forKey: .processGeneration) ?? 0
        for e in try c.decodeIfPresent([OwnerEntry].self, forKey: .fileOwners) ?? [] { fileOwners[e.fd] = e.process }
        for e in try c.decodeIfPresent([ProcessEntry].self, forKey: .processes) ?? [] { processes[e.id] = e.process }
        nextProcess = try c.decodeIfPresent(Int.self, forKey: .nextProcess) ?? 1
        currentProcess = try c.decodeIfPresent(Int.self, forKey: .currentProcess) ?? 0
        holderMemlockLimit = try c.decodeIfPresent(UInt64.self, forKey: .holderMemlockLimit)
    }

    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(formatVersion, forKey: .formatVersion)
        try c.encode(hostName, forKey: .hostName)
        try c.encode(kernel, forKey: .kernel)
        try c.encode(iommus, forKey: .iommus)
        try c.encode(devices.values.sorted { $0.address < $1.address }, forKey: .devices)
        try c.encode(ignoredHostDevices, forKey: .ignoredHostDevices)
        try c.encode(files.sorted { $0.key < $1.key }.map { FileEntry(fd: $0.key, file: $0.value) }, forKey: .files)
        try c.encode(contexts.sorted { $0.key < $1.key }.map { ContextEntry(id: $0.key, context: $0.value) }, forKey: .contexts)
        try c.encode(nextContext, forKey: .nextContext)
        try c.encode(memories.values.sorted { $0.id < $1.id }, forKey: .memories)
        try c.encode(nextMemory, forKey: .nextMemory)
        try c.encode(nextMockSerial, forKey: .nextMockSerial)
        try c.encode(appliedSequence, forKey: .appliedSequence)
        try c.encodeIfPresent(savedHost, forKey: .savedHost)
        try c.encode(processGeneration, forKey: .processGeneration)
        // Written only once a second process exists, so single-process kernel.json files stay as they were.
        if !fileOwners.isEmpty { try c.encode(fileOwners.sorted { $0.key < $1.key }.map { OwnerEntry(fd: $0.key, process: $0.value) }, forKey: .fileOwners) }
        if !processes.isEmpty { try c.encode(processes.sorted { $0.key < $1.key }.map { ProcessEntry(id: $0.key, process: $0.value) }, forKey: .processes) }
        if nextProcess != 1 { try c.encode(nextProcess, forKey: .nextProcess) }
        if currentProcess != 0 { try c.encode(currentProcess, forKey: .currentProcess) }
        try c.encodeIfPresent(holderMemlockLimit, forKey: .holderMemlockLimit)
    }
}
