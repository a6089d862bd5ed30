

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
    /// PAGE_SIZE in bytes (4096, 16384 or 65536); nil in host files written before the
    /// field existed, which all described 4 KiB-page kernels.
    public var pageSize: UInt64?
    public init(release: String, iommufd: Bool, vfioCdev: Bool, pageSize: UInt64? = nil) {
        self.release = release; self.iommufd = iommufd; self.vfioCdev = vfioCdev; self.pageSize = pageSize
    }
    public static let defaultPageSize: UInt64 = 4096
    public static let pageSizes: [UInt64] = [4096, 16384, 65536]
    /// The page size IOVA alignment, the smallest mapping and pinning follow.
    public var effectivePageSize: UInt64 { pageSize ?? KernelFacts.defaultPageSize }
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

/// A fact the kernel keeps per PCI device (docs/contract.md §3); what discovery could not read is
/// listed in the device's `unknown`.
public enum DeviceFact: String, Hashable, Sendable, Codable, CaseIterable {
    case vfioDriver, ats, pasidWidth, canwbs, bars
    /// A bridge's ACS Control register (config space past 256 bytes: root only).
    case acsControl
}

/// One memory BAR as sysfs `resource` shows it.
public struct PCIBar: Hashable, Sendable, Codable {
    public var index: Int
    public var size: UInt64
    public var prefetchable: Bool
    public var bits64: Bool
    public init(index: Int, size: UInt64, prefetchable: Bool, bits64: Bool) {
        self.index = index; self.size = size; self.prefetchable = prefetchable; self.bits64 = bits64
    }
}

/// vfio-pci, the driver a device without a variant driver in modules.alias gets.
public let genericVFIODriver = "vfio-pci"

public struct HostPCIDevice: Hashable, Sendable, Codable {
    public var address: PCIAddress
    public var vendor: UInt16
    public var device: UInt16
    public var classCode: UInt32
    public var driver: String?
    public var iommuGroup: Int?
    public var iommu: String?
    public var numaNode: Int
    /// The VFIO driver the kernel would match (a `vfio_pci:` alias in modules.alias, e.g.
    /// nvgrace_gpu_vfio_pci), else vfio-pci; nil when the file does not say (vfio-pci).
    public var vfioDriver: String?
    /// Per-device facts of IOMMU_GET_HW_INFO; nil when the file does not say (then the
    /// IOMMU's value, which is what every device behind it has).
    public var ats: Bool?
    public var pasidWidth: Int?
    /// ARM: the master's root complex is CANWBS (IORT); nil: the IOMMU's `coherent`.
    public var canwbs: Bool?
    public var bars: [PCIBar]?
    /// Facts discovery could not read: their values above are absent or placeholders.
    public var unknown: [DeviceFact]
    // The PCI hierarchy, for peer-to-peer paths (docs/contract.md §3 "Bridges and ACS").
    /// A bridge: the bus directly below it (config offset 0x19); nil for an endpoint.
    public var secondaryBus: Int?
    /// The ACS Control register of a port with the ACS extended capability; nil without one.
    public var acsControl: UInt16?

    public init(address: PCIAddress, vendor: UInt16, device: UInt16, classCode: UInt32, driver: String?,
                iommuGroup: Int?, iommu: String?, numaNode: Int, vfioDriver: String? = nil, ats: Bool? = nil,
                pasidWidth: Int? = nil, canwbs: Bool? = nil, bars: [PCIBar]? = nil, unknown: [DeviceFact] = []) {
        self.address = address; self.vendor = vendor; self.device = device; self.classCode = classCode
        self.driver = driver; self.iommuGroup = iommuGroup; self.iommu = iommu; self.numaNode = numaNode
        self.vfioDriver = vfioDriver; self.ats = ats; self.pasidWidth = pasidWidth; self.canwbs = canwbs
        self.bars = bars; self.unknown = unknown
    }

    private enum CodingKeys: String, CodingKey {
        case address, vendor, device, classCode, driver, iommuGroup, iommu, numaNode, vfioDriver, ats, pasidWidth, canwbs, bars, unknown
        case secondaryBus, acsControl
    }

    // Written by hand so that JSON saved before the per-device facts existed still decodes.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(address: try c.decode(PCIAddress.self, forKey: .address), vendor: try c.decode(UInt16.self, forKey: .vendor),
                  device: try c.decode(UInt16.self, forKey: .device), classCode: try c.decode(UInt32.self, forKey: .classCode),
                  driver: try c.decodeIfPresent(String.self, forKey: .driver), iommuGroup: try c.decodeIfPresent(Int.self, forKey: .iommuGroup),
                  iommu: try c.decodeIfPresent(String.self, forKey: .iommu), numaNode: try c.decode(Int.self, forKey: .numaNode),
                  vfioDriver: try c.decodeIfPresent(String.self, forKey: .vfioDriver), ats: try c.decodeIfPresent(Bool.self, forKey: .ats),
                  pasidWidth: try c.decodeIfPresent(Int.self, forKey: .pasidWidth), canwbs: try c.decodeIfPresent(Bool.self, forKey: .canwbs),
                  bars: try c.decodeIfPresent([PCIBar].self, forKey: .bars),
                  unknown: try c.decodeIfPresent([DeviceFact].self, forKey: .unknown) ?? [])
        secondaryBus = try c.decodeIfPresent(Int.self, forKey: .secondaryBus)
        acsControl = try c.decodeIfPresent(UInt16.self, forKey: .acsControl)
    }

    public func isUnknown(_ fact: DeviceFact) -> Bool { unknown.contains(fact) }

    /// The driver vsmmu binds the device to for passthrough.
    public var effectiveVFIODriver: String { vfioDriver ?? genericVFIODriver }
    /// ATS as the kernel answers GET_HW_INFO through this device (behind `iommu`).
    public func effectiveATS(behind iommu: HostIOMMU) -> Bool { ats ?? iommu.ats }
    /// PASID bits as GET_HW_INFO's out_max_pasid_log2 through this device.
    public func effectivePASIDWidth(behind iommu: HostIOMMU) -> Int { pasidWidth ?? (iommu.pasid ? iommu.ssidSize : 0) }
    /// ARM: the device may sit under a vIOMMU / a coherent HWPT.
    public func effectiveCANWBS(behind iommu: HostIOMMU) -> Bool { canwbs ?? iommu.coherent }
}

/// Whether a driver is a VFIO driver (it creates a VFIO cdev and manages DMA itself):
/// vfio-pci and the variant drivers, whose module names end in `_vfio_pci`.
public enum VFIODriver {
    public static func isVFIO(_ driver: String) -> Bool {
        driver == genericVFIODriver || driver.hasSuffix("_vfio_pci") || driver.hasSuffix("-vfio-pci")
    }
    public static func isVFIO(_ driver: String?) -> Bool { driver.map { isVFIO($0) } ?? false }
}

/// The ACS Control register (PCIe ACS extended capability, ID 0x000d, control at +6):
/// which peer-to-peer traffic a downstream or root port sends up to the root complex.
public struct ACSControl: OptionSet, Hashable, Sendable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let sourceValidation = ACSControl(rawValue: 1 << 0)
    public static let translationBlocking = ACSControl(rawValue: 1 << 1)
    public static let p2pRequestRedirect = ACSControl(rawValue: 1 << 2)
    public static let p2pCompletionRedirect = ACSControl(rawValue: 1 << 3)
    public static let upstreamForwarding = ACSControl(rawValue: 1 << 4)
    public static let p2pEgressControl = ACSControl(rawValue: 1 << 5)
    public static let directTranslatedP2P = ACSControl(rawValue: 1 << 6)
    /// The bits that send peer traffic to the root complex instead of across the switch.
    public static let redirecting: ACSControl = [.p2pRequestRedirect, .p2pCompletionRedirect, .upstreamForwarding]

    /// Short names of the set bits, as lspci writes them.
    public var names: [String] {
        let all: [(ACSControl, String)] = [(.sourceValidation, "SrcValid"), (.translationBlocking, "TransBlk"), (.p2pRequestRedirect, "ReqRedir"),
                                            (.p2pCompletionRedirect, "CmpltRedir"), (.upstreamForwarding, "UpstreamFwd"),
                                            (.p2pEgressControl, "EgressCtrl"), (.directTranslatedP2P, "DirectTrans")]
        return all.filter { contains($0.0) }.map(\.1)
    }
}
