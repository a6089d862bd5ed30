import VsmmuKernel

/// What the executor holds in the kernel, per guest: fds and object IDs. The kernel has
/// no ioctl that lists iommufd objects (reference §9.6): the holder's own record is the
/// only account of what exists, so it is kept in the state directory (through the
/// journal) and checked for liveness before it is trusted.
public struct Holdings: Codable, Hashable, Sendable {
    public static let formatVersion = 1
    public var formatVersion = Holdings.formatVersion
    public var guests: [String: GuestHolding] = [:]
    /// The driver each device had before vsmmu moved it to vfio-pci (nil: none), kept
    /// until the device is given back, so `destroy` restores it.
    public var originalDrivers: [PCIAddress: String?] = [:]
    /// Devices vsmmu holds on vfio-pci whose driver before that is not known (the record
    /// was lost and rebuilt): left on vfio-pci at destroy, never given to a guess.
    /// Optional: absent in files written before it existed.
    public var unknownOriginalDrivers: Set<PCIAddress>?
    public init() {}

    /// Whether vsmmu must not give `a` back to any driver (it does not know which).
    public func originalUnknown(_ a: PCIAddress) -> Bool { unknownOriginalDrivers?.contains(a) ?? false }
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
    public var source: String            // "0000:09:01.0" or "selftest:0"
    /// The open VFIO cdev (real devices); nil for mock devices.
    public var cdev: DeviceHandle?
    public var vfioIndex: Int?
    /// Mock device object (selftest): destroyed to remove the device.
    public var mockStdev: ObjectID?
    public var devID: ObjectID
    /// The HWPT the device is attached to now (nil: not attached).
    public var attached: ObjectID?
    public var owner: UInt32?
    public init(source: String, cdev: DeviceHandle?, vfioIndex: Int?, mockStdev: ObjectID?, devID: ObjectID) {
        self.source = source; self.cdev = cdev; self.vfioIndex = vfioIndex; self.mockStdev = mockStdev; self.devID = devID
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
    public var viommuType: UInt32
    public var abortHWPT: ObjectID?
    public var bypassHWPT: ObjectID?
    /// vEVENTQ per type: id and its fd.
    public var eventQueues: [UInt32: EventQueueHolding] = [:]
    /// vDevice per device name.
    public var vdevices: [String: VDeviceHolding] = [:]
    public init(physical: String, viommu: ObjectID, viommuType: UInt32) {
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
