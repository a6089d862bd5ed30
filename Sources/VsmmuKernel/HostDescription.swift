

/// The Host description (docs/contract.md §3): what the kernel shows about a host. The same
/// format is what `vsmmu host` prints and what the simulated kernel starts from.
public struct HostDescription: Hashable, Sendable, Codable {
    public var name: String
    public var kernel: KernelFacts
    public var iommus: [HostIOMMU]
    public var pciDevices: [HostPCIDevice]

    public init(name: String, kernel: KernelFacts, iommus: [HostIOMMU], pciDevices: [HostPCIDevice]) {
        self.name = name; self.kernel = kernel; self.iommus = iommus; self.pciDevices = pciDevices
    }

    public func iommu(named name: String) -> HostIOMMU? { iommus.first { $0.name == name } }
    public func device(at address: PCIAddress) -> HostPCIDevice? { pciDevices.first { $0.address == address } }
}

public struct KernelFacts: Hashable, Sendable, Codable {
    public var release: String
    public var iommufd: Bool
    public var vfioCdev: Bool
    public init(release: String, iommufd: Bool, vfioCdev: Bool) { self.release = release; self.iommufd = iommufd; self.vfioCdev = vfioCdev }
}

public enum IOMMUType: String, Hashable, Sendable, Codable, CaseIterable {
    case armSMMUv3 = "arm-smmuv3"
    case intelVTd = "intel-vtd"
    case amdVi = "amd-vi"
    case selftest = "selftest"
}

public struct ReservedRegion: Hashable, Sendable, Codable {
    public var start: UInt64
    public var size: UInt64
    public var type: String   // msi | reserved | direct | direct-relaxable
    public init(start: UInt64, size: UInt64, type: String) { self.start = start; self.size = size; self.type = type }
    public var last: UInt64 { start &+ size &- 1 }
}

public struct HostIOMMU: Hashable, Sendable, Codable {
    public var name: String
    public var type: IOMMUType
    public var nesting: Bool
    public var coherent: Bool
    public var ats: Bool
    public var ril: Bool
    public var pasid: Bool
    public var ssidSize: Int
    public var oas: Int
    public var reservedRegions: [ReservedRegion]
    /// Tegra241 CMDQV: number of vCMDQs per VINTF; nil when absent.
    public var cmdqvVCMDQs: Int?
    /// Facts `vsmmu host` could not read (no device of this IOMMU bound to vfio-pci):
    /// their values above are placeholders, and the validator refuses to rely on them.
    public var unknown: [String]

    public init(name: String, type: IOMMUType, nesting: Bool, coherent: Bool, ats: Bool, ril: Bool, pasid: Bool,
                ssidSize: Int, oas: Int, reservedRegions: [ReservedRegion], cmdqvVCMDQs: Int?, unknown: [String] = []) {
        self.name = name; self.type = type; self.nesting = nesting; self.coherent = coherent; self.ats = ats
        self.ril = ril; self.pasid = pasid; self.ssidSize = ssidSize; self.oas = oas
        self.reservedRegions = reservedRegions; self.cmdqvVCMDQs = cmdqvVCMDQs; self.unknown = unknown
    }
}

public struct HostPCIDevice: Hashable, Sendable, Codable {
    public var address: PCIAddress
    public var vendor: UInt16
    public var device: UInt16
    public var classCode: UInt32
    public var driver: String?
    public var iommuGroup: Int?
    public var iommu: String?
    public var numaNode: Int

    public init(address: PCIAddress, vendor: UInt16, device: UInt16, classCode: UInt32, driver: String?,
                iommuGroup: Int?, iommu: String?, numaNode: Int) {
        self.address = address; self.vendor = vendor; self.device = device; self.classCode = classCode
        self.driver = driver; self.iommuGroup = iommuGroup; self.iommu = iommu; self.numaNode = numaNode
    }
}
