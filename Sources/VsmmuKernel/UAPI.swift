/// uAPI values from docs/kernel-interface.md (Linux 7.2). Numbers only; struct
/// layouts live with the Linux backend's C shim. Each kind of value is its own type
/// that keeps the C name findable (as swift-system's Errno does): a raw number that is
/// not in the table still goes to the kernel as it is (the fidelity corpora send some).
public typealias ObjectID = UInt32

/// A u32 uAPI enumeration (a HWPT data type, a vIOMMU type, …): the raw value, and the
/// C name (without the common prefix) of the values its kind's table knows. One generic
/// type; each kind is a caseless enum naming its values, e.g. `HWPTDataType.armSMMUv3`.
public struct UAPIValue<Kind: UAPIKind>: RawRepresentable, Hashable, Sendable, Codable, Comparable, CustomStringConvertible,
    ExpressibleByIntegerLiteral {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public init(integerLiteral value: UInt32) { self.init(rawValue: value) }
    /// The C name without its prefix, or the number in hex for a value outside the table.
    public var name: String { Kind.names[rawValue] ?? hex(rawValue) }
    public var description: String { name }
    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
}

/// The table of one kind of uAPI enumeration.
public protocol UAPIKind: Sendable {
    static var names: [UInt32: String] { get }
}

/// IOMMU_HWPT_ALLOC data_type (docs/kernel-interface.md §2.13).
public typealias HWPTDataType = UAPIValue<HWPTDataKind>
public enum HWPTDataKind: UAPIKind {
    public static let names: [UInt32: String] = [0: "NONE", 1: "VTD_S1", 2: "ARM_SMMUV3", 0xdead: "SELFTEST"]
}
extension UAPIValue where Kind == HWPTDataKind {
    public static var none: Self { 0 }
    public static var vtdS1: Self { 1 }
    public static var armSMMUv3: Self { 2 }
    public static var selftest: Self { 0xdead }
}

/// IOMMU_GET_HW_INFO data_type (docs/kernel-interface.md §2.14).
public typealias HWInfoType = UAPIValue<HWInfoKind>
public enum HWInfoKind: UAPIKind {
    public static let names: [UInt32: String] = [0: "NONE", 1: "INTEL_VTD", 2: "ARM_SMMUV3", 3: "TEGRA241_CMDQV", 4: "AMD",
                                                 0xfeedbeef: "SELFTEST"]
}
extension UAPIValue where Kind == HWInfoKind {
    public static var none: Self { 0 }
    public static var intelVTD: Self { 1 }
    public static var armSMMUv3: Self { 2 }
    public static var tegra241CMDQV: Self { 3 }
    public static var amd: Self { 4 }
    public static var selftest: Self { 0xfeedbeef }
}

/// IOMMU_VIOMMU_ALLOC type (docs/kernel-interface.md §2.19, §7.3).
public typealias VIOMMUType = UAPIValue<VIOMMUKind>
public enum VIOMMUKind: UAPIKind {
    public static let names: [UInt32: String] = [1: "ARM_SMMUV3", 2: "TEGRA241_CMDQV", 0xdeadbeef: "SELFTEST"]
}
extension UAPIValue where Kind == VIOMMUKind {
    public static var armSMMUv3: Self { 1 }
    public static var tegra241CMDQV: Self { 2 }
    public static var selftest: Self { 0xdeadbeef }
}

/// IOMMU_VEVENTQ_ALLOC type (docs/kernel-interface.md §2.21, §7.3).
public typealias VEventQType = UAPIValue<VEventQKind>
public enum VEventQKind: UAPIKind {
    public static let names: [UInt32: String] = [1: "ARM_SMMUV3", 2: "TEGRA241_CMDQV", 0xbeefbeef: "SELFTEST"]
}
extension UAPIValue where Kind == VEventQKind {
    public static var armSMMUv3: Self { 1 }
    public static var tegra241CMDQV: Self { 2 }
    public static var selftest: Self { 0xbeefbeef }
    /// The largest veventq_depth the kernel accepts.
    public static var maxDepth: UInt32 { 524_288 }
}

/// IOMMU_HW_QUEUE_ALLOC type (docs/kernel-interface.md §2.22).
public typealias HWQueueType = UAPIValue<HWQueueKind>
public enum HWQueueKind: UAPIKind {
    public static let names: [UInt32: String] = [1: "TEGRA241_CMDQV", 0xdeadbeef: "SELFTEST"]
}
extension UAPIValue where Kind == HWQueueKind {
    public static var tegra241CMDQV: Self { 1 }
    public static var selftest: Self { 0xdeadbeef }
}

/// IOMMU_HWPT_INVALIDATE data_type (docs/kernel-interface.md §2.17) and the size of one ARM command (§5.5).
public typealias InvalidateDataType = UAPIValue<InvalidateDataKind>
public enum InvalidateDataKind: UAPIKind {
    public static let names: [UInt32: String] = [0: "VTD_S1", 1: "ARM_SMMUV3"]
}
extension UAPIValue where Kind == InvalidateDataKind {
    public static var vtdS1: Self { 0 }
    public static var armSMMUv3: Self { 1 }
    public static var armEntrySize: UInt32 { 16 }
}

/// A u32/u64 flags word of the uAPI: an option set whose known bits have C names.
public protocol UAPIFlags: OptionSet, Hashable, Sendable, Codable, CustomStringConvertible, ExpressibleByIntegerLiteral
    where RawValue: FixedWidthInteger & UnsignedInteger & Codable & Sendable, IntegerLiteralType == RawValue {
    static var names: [(RawValue, String)] { get }
}

extension UAPIFlags {
    public init(integerLiteral value: RawValue) { self.init(rawValue: value) }
    /// The C spelling of a union: `.fixedIOVA | .readable`.
    public static func | (a: Self, b: Self) -> Self { a.union(b) }
    /// `NEST_PARENT|DIRTY_TRACKING`, unknown bits in hex, `0` for none.
    public var description: String {
        var rest = rawValue
        var parts: [String] = []
        for (bit, name) in Self.names where rawValue & bit == bit && bit != 0 {
            parts.append(name)
            rest &= ~bit
        }
        if rest != 0 { parts.append(hex(rest)) }
        return parts.isEmpty ? "0" : parts.joined(separator: "|")
    }
}

/// IOMMU_HWPT_ALLOC flags (docs/kernel-interface.md §2.13).
public struct HWPTAllocFlags: UAPIFlags {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let nestParent: Self = 0x1
    public static let dirtyTracking: Self = 0x2
    public static let faultIDValid: Self = 0x4
    public static let pasid: Self = 0x8
    public static let names: [(UInt32, String)] = [(0x1, "NEST_PARENT"), (0x2, "DIRTY_TRACKING"), (0x4, "FAULT_ID_VALID"), (0x8, "PASID")]
}

/// IOMMU_IOAS_MAP / IOMMU_IOAS_MAP_FILE flags (docs/kernel-interface.md §2.6).
public struct IOASMapFlags: UAPIFlags {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let fixedIOVA: Self = 0x1
    public static let writeable: Self = 0x2
    public static let readable: Self = 0x4
    public static let names: [(UInt32, String)] = [(0x1, "FIXED_IOVA"), (0x2, "WRITEABLE"), (0x4, "READABLE")]
}

/// IOMMU_GET_HW_INFO flags (docs/kernel-interface.md §2.14).
public struct HWInfoFlags: UAPIFlags {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let inputType: Self = 0x1
    public static let names: [(UInt32, String)] = [(0x1, "INPUT_TYPE")]
}

/// IOMMU_GET_HW_INFO out_capabilities (docs/kernel-interface.md §2.14).
public struct HWInfoCapabilities: UAPIFlags {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public static let dirtyTracking: Self = 0x1
    public static let pciPASIDExec: Self = 0x2
    public static let pciPASIDPriv: Self = 0x4
    public static let pciATSNotSupported: Self = 0x8
    public static let names: [(UInt64, String)] = [(0x1, "DIRTY_TRACKING"), (0x2, "PCI_PASID_EXEC"), (0x4, "PCI_PASID_PRIV"),
                                                   (0x8, "PCI_ATS_NOT_SUPPORTED")]
}

public enum UAPI {
    // vSTE words for the nested HWPTs that exist before the guest runs (docs/kernel-interface.md §5.3)
    public static let vsteAbort: (UInt64, UInt64) = (0x1, 0x0)
    public static let vsteBypass: (UInt64, UInt64) = (0x9, 0x0)

    /// The ARM SMMUv3 software-MSI window every attached device reserves (docs/kernel-interface.md §9.17).
    public static let armMSIWindowStart: UInt64 = 0x800_0000
    public static let armMSIWindowSize: UInt64 = 0x10_0000
}

/// Lower-case hex with 0x, for call details and errors (one definition for every backend).
public func hex<T: BinaryInteger>(_ value: T) -> String { "0x" + String(value, radix: 16) }
