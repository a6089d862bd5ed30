import VsmmuKernel
import VsmmuModel

/// What the executor holds in the kernel, per guest: fds and object IDs. The kernel has
/// no ioctl that lists iommufd objects (docs/kernel-interface.md §9.6): the holder's own record is the
/// only account of what exists, so it is kept in the state directory (through the
/// journal) and checked for liveness before it is trusted.
public struct Holdings: Codable, Hashable, Sendable {
    public static let formatVersion = 1
    public var formatVersion = Holdings.formatVersion
    public var guests: [String: GuestHolding] = [:]
    /// The driver each device had before vsmmu moved it to vfio-pci (nil: none), kept
    /// until the device is given back, so `destroy` restores it.
    public var originalDrivers: [PCIAddress: String?] = [:]
    /// Guests a VMM holds now (docs/contract.md §6): vsmmu holds none of their iommufd
    /// objects, only watches the process and the host state of their devices.
    public var running: [String: RunningGuest] = [:]
    /// Devices vsmmu holds on vfio-pci whose driver before that is not known (the record
    /// was lost and rebuilt): left on vfio-pci at destroy, never given to a guess.
    /// Optional: absent in files written before it existed.
    public var unknownOriginalDrivers: Set<PCIAddress>?
    public init() {}

    /// Whether vsmmu must not give `a` back to any driver (it does not know which).
    public func originalUnknown(_ a: PCIAddress) -> Bool { unknownOriginalDrivers?.contains(a) ?? false }

    private enum CodingKeys: String, CodingKey { case formatVersion, guests, originalDrivers, running, unknownOriginalDrivers }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        formatVersion = try c.decode(Int.self, forKey: .formatVersion)
        guests = try c.decode([String: GuestHolding].self, forKey: .guests)
        originalDrivers = try c.decode([PCIAddress: String?].self, forKey: .originalDrivers)
        running = try c.decodeIfPresent([String: RunningGuest].self, forKey: .running) ?? [:]
        unknownOriginalDrivers = try c.decodeIfPresent(Set<PCIAddress>.self, forKey: .unknownOriginalDrivers)
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(formatVersion, forKey: .formatVersion)
        try c.encode(guests, forKey: .guests)
        try c.encode(originalDrivers, forKey: .originalDrivers)
        if !running.isEmpty { try c.encode(running, forKey: .running) }
        try c.encodeIfPresent(unknownOriginalDrivers, forKey: .unknownOriginalDrivers)
    }
}

/// Where a guest is in its lifecycle (docs/contract.md §6).
public enum GuestLifecycleState: String, Codable, Hashable, Sendable {
    /// Host state as declared and vsmmu holds the guest's whole graph.
    case prepared
    /// The fresh fds went to the VMM; it does not hold every device's cdev (yet).
    case handedOver = "handed-over"
    /// The VMM process holds the devices.
    case running
}

/// A guest's lifecycle state as plan, show and the agent report it (docs/contract.md §6).
public struct GuestStatus: Codable, Hashable, Sendable {
    public var name: String
    /// nil: vsmmu holds nothing of it yet (apply prepares it).
    public var state: GuestLifecycleState?
    public var pid: Int32?
    public var command: String?
    public var vmm: RunningGuest.VMMKind?
    /// What the running checks found (a device off its VFIO driver, a cdev the VMM closed).
    public var notes: [String] = []
    public init(name: String, state: GuestLifecycleState?, pid: Int32? = nil, command: String? = nil, vmm: RunningGuest.VMMKind? = nil, notes: [String] = []) {
        self.name = name; self.state = state; self.pid = pid; self.command = command; self.vmm = vmm; self.notes = notes
    }
}

/// A guest handed to its VMM: the process that holds it, and how to tell it from a later
/// process that reuses its pid.
public struct RunningGuest: Codable, Hashable, Sendable {
    public enum VMMKind: String, Codable, Hashable, Sendable, CaseIterable {
        /// Fresh unbound cdev fds and an empty iommufd: the VMM builds its own graph (stock QEMU).
        case qemu
        /// The prepared context itself (bound fds + the object-id map): docs/handoff-adopt.md.
        case adopt
    }
    public var pid: Int32
    /// Field 22 of /proc/<pid>/stat (clock ticks after boot); nil when unreadable.
    public var startTime: UInt64?
    public var command: [String]
    public var vmm: VMMKind
    /// When the guest was handed over (seconds since 1970).
    public var since: Double
    /// Device name → host PCI address: what the VMM must keep open.
    public var devices: [String: PCIAddress]
    /// The pid is in the kernel behind this remote executor, not this machine's.
    public var remote: String?
    /// On a simulated host: the simulated process standing for the VMM.
    public var simulatedProcess: Int?

    public init(pid: Int32, startTime: UInt64?, command: [String], vmm: VMMKind, since: Double, devices: [String: PCIAddress],
                remote: String? = nil, simulatedProcess: Int? = nil) {
        self.pid = pid; self.startTime = startTime; self.command = command; self.vmm = vmm; self.since = since
        self.devices = devices; self.remote = remote; self.simulatedProcess = simulatedProcess
    }

    /// The command as a shell would show it, shortened for one line.
    public var commandLine: String {
        let line = command.joined(separator: " ")
        return line.count > 120 ? String(line.prefix(117)) + "..." : line
    }
}

public struct GuestHolding: Codable, Hashable, Sendable {
    public var iommufd: IommufdHandle
    public var ioas: ObjectID?
    public var devices: [String: DeviceHolding] = [:]
    /// Stage-2 HWPT per physical IOMMU name.
    public var stage2: [String: Stage2Holding] = [:]
    public var memory: [String: MemoryHolding] = [:]
    public var vsmmus: [String: VSMMUHolding] = [:]
    /// Set when an apply was interrupted inside this context: what the kernel holds is
    /// then uncertain, and the next apply rebuilds the context.
    public var uncertain = false
    /// The kernel port's `holderIdentity` when the context was opened (nil: recorded by an
    /// older vsmmu). Another holder now means the context died with its process.
    public var holder: String?

    public init(iommufd: IommufdHandle, holder: String? = nil) { self.iommufd = iommufd; self.holder = holder }
}

public struct DeviceHolding: Codable, Hashable, Sendable {
    /// Written in holdings.json as its text, `0000:09:01.0` or `selftest:0` (as before it was typed).
    public var source: DeviceSource
    /// The open VFIO cdev (real devices); nil for mock devices.
    public var cdev: DeviceHandle?
    public var vfioIndex: Int?
    /// Mock device object (selftest): destroyed to remove the device.
    public var mockStdev: ObjectID?
    public var devID: ObjectID
    /// The HWPT the device is attached to now (nil: not attached).
    public var attached: ObjectID?
    public var owner: UInt32?
    public init(source: DeviceSource, cdev: DeviceHandle?, vfioIndex: Int?, mockStdev: ObjectID?, devID: ObjectID) {
        self.source = source; self.cdev = cdev; self.vfioIndex = vfioIndex; self.mockStdev = mockStdev; self.devID = devID
    }

    private enum CodingKeys: String, CodingKey { case source, cdev, vfioIndex, mockStdev, devID, attached, owner }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let text = try c.decode(String.self, forKey: .source)
        guard let source = DeviceSource(text) else {
            throw DecodingError.dataCorruptedError(forKey: .source, in: c, debugDescription: "'\(text)' is neither a PCI address nor selftest:N")
        }
        self.source = source
        cdev = try c.decodeIfPresent(DeviceHandle.self, forKey: .cdev)
        vfioIndex = try c.decodeIfPresent(Int.self, forKey: .vfioIndex)
        mockStdev = try c.decodeIfPresent(ObjectID.self, forKey: .mockStdev)
        devID = try c.decode(ObjectID.self, forKey: .devID)
        attached = try c.decodeIfPresent(ObjectID.self, forKey: .attached)
        owner = try c.decodeIfPresent(UInt32.self, forKey: .owner)
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(source.description, forKey: .source)
        try c.encodeIfPresent(cdev, forKey: .cdev)
        try c.encodeIfPresent(vfioIndex, forKey: .vfioIndex)
        try c.encodeIfPresent(mockStdev, forKey: .mockStdev)
        try c.encode(devID, forKey: .devID)
        try c.encodeIfPresent(attached, forKey: .attached)
        try c.encodeIfPresent(owner, forKey: .owner)
    }
}

public struct Stage2Holding: Codable, Hashable, Sendable {
    public var hwpt: ObjectID
    public var nestParent: Bool
    public init(hwpt: ObjectID, nestParent: Bool) { self.hwpt = hwpt; self.nestParent = nestParent }
}

public struct MemoryHolding: Codable, Hashable, Sendable {
    public var memory: GuestMemory
    public var backing: GuestMemoryBacking
    public var iova: UInt64
    public var length: UInt64
    /// false between creating the memory and mapping it.
    public var mapped: Bool
    public init(memory: GuestMemory, backing: GuestMemoryBacking, iova: UInt64, length: UInt64, mapped: Bool) {
        self.memory = memory; self.backing = backing; self.iova = iova; self.length = length; self.mapped = mapped
    }
}

public struct VSMMUHolding: Codable, Hashable, Sendable {
    public var physical: String
    public var viommu: ObjectID
    public var viommuType: VIOMMUType
    public var abortHWPT: ObjectID?
    public var bypassHWPT: ObjectID?
    /// vEVENTQ per type: id and its fd.
    public var eventQueues: [VEventQType: EventQueueHolding] = [:]
    /// vDevice per device name.
    public var vdevices: [String: VDeviceHolding] = [:]
    public init(physical: String, viommu: ObjectID, viommuType: VIOMMUType) {
        self.physical = physical; self.viommu = viommu; self.viommuType = viommuType
    }
}

public struct EventQueueHolding: Codable, Hashable, Sendable {
    public var id: ObjectID
    public var fd: KernelFile
    public init(id: ObjectID, fd: KernelFile) { self.id = id; self.fd = fd }
}

public struct VDeviceHolding: Codable, Hashable, Sendable {
    public var id: ObjectID
    public var virtID: UInt64
    public init(id: ObjectID, virtID: UInt64) { self.id = id; self.virtID = virtID }
}
