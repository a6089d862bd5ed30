import VsmmuKernel
import VsmmuYAML

/// A feature switch of a vSMMU: on, off, or take the physical IOMMU's value.
public enum Switch: String, Hashable, Sendable, Codable { case on, off, auto }

/// An integer feature that may be `auto`.
public enum AutoValue: Hashable, Sendable, Codable {
    case auto
    case value(Int)
}

/// Where a passed-through device comes from.
public enum DeviceSource: Hashable, Sendable, Codable, CustomStringConvertible {
    case pci(PCIAddress)
    /// A mock device of the kernel's iommufd selftest driver (docs/contract.md §3).
    case selftest(Int)

    public var description: String {
        switch self {
        case .pci(let a): return a.description
        case .selftest(let n): return "selftest:\(n)"
        }
    }
    public var pciAddress: PCIAddress? { if case .pci(let a) = self { return a }; return nil }

    /// Reads `description` back: `0000:09:01.0` or `selftest:N`.
    public init?(_ text: String) {
        if text.hasPrefix("selftest:"), let n = Int(text.dropFirst("selftest:".count)), n >= 0 { self = .selftest(n); return }
        guard let a = PCIAddress(text) else { return nil }
        self = .pci(a)
    }
}

public struct Device: Hashable, Sendable {
    public var name: String
    public var host: DeviceSource
    public var slot: Int?
    /// NUMA layout fields (GuestLayoutFields.swift).
    public var layout = DeviceLayoutFields()
    public var mark: Mark
    public var nameMark: Mark
    public var hostMark: Mark
    public var slotMark: Mark?
    // Placement (docs/contract.md §2 "Placement"): see Placement.swift.
    /// `vsmmu:` of a device in the guest's `devices:` list; `.none` under a vSMMU's own list.
    public var placement: DevicePlacement = .none
    public var placementMark: Mark?
    /// `peer:`: another device of the guest it talks to peer-to-peer (a GPU's NIC).
    public var peer: String?
    public var peerMark: Mark?
}

public struct MemoryRegion: Hashable, Sendable {
    public var name: String
    public var guestAddress: UInt64
    public var size: UInt64
    public var backing: GuestMemoryBacking
    public var hugepageSize: UInt64?
    public var mark: Mark
    public var fieldMarks: [String: Mark]
    /// Last byte, or nil when start + size overflows 64 bits.
    public var last: UInt64? {
        let (end, overflow) = guestAddress.addingReportingOverflow(size)
        return overflow && end != 0 ? nil : end &- 1
    }
}

public struct VSMMU: Hashable, Sendable {
    public var name: String
    /// nil = `auto`: the physical IOMMU the devices sit behind.
    public var physical: String?
    public var busNumber: Int?
    public var identifier: Int?
    public var ats: Switch
    public var ril: Switch
    public var ssidSize: AutoValue
    public var oas: AutoValue
    public var cmdqv: Switch
    public var devices: [Device]
    public var mark: Mark
    public var fieldMarks: [String: Mark]
}

public struct Guest: Hashable, Sendable {
    public var name: String
    public var user: String?
    public var memory: [MemoryRegion]
    public var vsmmus: [VSMMU]
    /// Passthrough devices with no vSMMU, attached straight to the stage-2.
    public var devices: [Device]
    public var mark: Mark
    public var nameMark: Mark
    public var userMark: Mark?

    /// Every device of the guest, under vSMMUs first, then direct ones.
    public var allDevices: [Device] { vsmmus.flatMap(\.devices) + devices }
}

/// A parsed topology file (docs/contract.md §2).
public struct Topology: Hashable, Sendable {
    public var file: String
    public var name: String
    public var guests: [Guest]

    public func guest(named name: String) -> Guest? { guests.first { $0.name == name } }
}

// MARK: - Schema

public enum TopologySchema {
    static let switchKind = ScalarKind.choice(["on", "off", "auto"])

    public static let device: SchemaType = .object([
        SchemaField("name", .scalar(.name, description: "unique within the guest"), required: true),
        SchemaField("host", .scalar(.deviceHost, description: "host PCI address domain:bus:slot.function, or selftest:N for a kernel self-test mock device"), required: true),
        GuestLayoutSchema.genericInitiators,
        SchemaField("slot", .scalar(.uint(max: 31), description: "root-port slot on this vSMMU's bus (allocated if absent)")),
        PlacementSchema.peer,
    ], description: "a passthrough PCI device")

    public static let directDevice: SchemaType = .object([
        SchemaField("name", .scalar(.name, description: "unique within the guest"), required: true),
        GuestLayoutSchema.genericInitiators,
        SchemaField("host", .scalar(.deviceHost, description: "host PCI address domain:bus:slot.function"), required: true),
        PlacementSchema.vsmmu,
        PlacementSchema.peer,
    ], description: "a passthrough device: with no vSMMU (attached straight to the stage-2), or placed by vsmmu: auto")

    public static let memory: SchemaType = .object([
        SchemaField("name", .scalar(.name, description: "unique within the guest"), required: true),
        SchemaField("guestAddress", .scalar(.uint(max: UInt64.max), description: "guest physical address (IPA); decimal, 0x hex or 0b binary"), required: true),
        SchemaField("size", .scalar(.size, description: "bytes, or with a KiB/MiB/GiB/TiB suffix"), required: true),
        SchemaField("backing", .scalar(.choice(["memfd", "anonymous", "hugetlbfs"]), description: "how guest RAM is allocated"), required: true),
        SchemaField("hugepageSize", .scalar(.size, description: "huge page size, with hugetlbfs or memfd")),
    ], description: "a guest RAM region mapped into stage 2 (the IOAS)")

    public static let vsmmu: SchemaType = .object([
        SchemaField("name", .scalar(.name, description: "unique within the guest"), required: true),
        SchemaField("physical", .scalar(.text, description: "auto, or the host IOMMU's name, e.g. smmu3.0x0000000016000000")),
        SchemaField("busNumber", .scalar(.uint(max: 255), description: "guest pxb-pcie bus_nr (allocated if absent)")),
        SchemaField("identifier", .scalar(.uint(max: 255), description: "QEMU identifier (IORT node id), unique per guest; allocated from 1 if absent")),
        SchemaField("ats", .scalar(switchKind, description: "on | off | auto (the physical SMMU's value)")),
        SchemaField("ril", .scalar(switchKind, description: "on | off | auto")),
        SchemaField("ssidSize", .scalar(.uintOrAuto(max: 20), description: "0..20 | auto (PASID bits)")),
        SchemaField("oas", .scalar(.intChoiceOrAuto([44, 48]), description: "44 | 48 | auto")),
        SchemaField("cmdqv", .scalar(switchKind, description: "on | off | auto (NVIDIA Tegra241 CMDQV)")),
        SchemaField("devices", .array(device, description: "devices behind this vSMMU")),
    ], description: "an accelerated virtual SMMUv3 instance")

    public static let guest: SchemaType = .object([
        SchemaField("name", .scalar(.name, description: "unique"), required: true),
        SchemaField("user", .scalar(.userOrUID, description: "owner of the VFIO cdevs (user or uid)")),
        SchemaField("memory", .array(memory, description: "guest RAM regions")),
        SchemaField("vsmmus", .array(vsmmu, description: "accelerated vSMMU instances")),
        SchemaField("devices", .array(directDevice, description: "passthrough devices: with no vSMMU, or with vsmmu: auto placed behind the vSMMU of their physical SMMU")),
    ], description: "a virtual machine")

    public static let root: SchemaType = .object([
        SchemaField("apiVersion", .scalar(.constant("vsmmu/v1"), description: "vsmmu/v1"), required: true),
        SchemaField("kind", .scalar(.constant("Topology"), description: "Topology"), required: true),
        SchemaField("metadata", .object([
            SchemaField("name", .scalar(.text, description: "free text, shown in plans"), required: true),
        ], description: "about this topology"), required: true),
        SchemaField("guests", .array(guest, description: "the guests of this host"), required: true),
    ], description: "vsmmu topology: guests, their passthrough devices and accelerated vSMMU instances")
}

// MARK: - Typed extraction (after the schema check, so types are known good)

extension Topology {
    static func extract(_ root: Checked, file: String) -> Topology {
        let guests = (root["guests"]?.array ?? []).map(Guest.extract)
        return Topology(file: file, name: root["metadata"]?["name"]?.string ?? "", guests: guests)
    }
}

extension Guest {
    static func extract(_ c: Checked) -> Guest {
        var user: String?
        if let u = c["user"] {
            if let s = u.string { user = s } else if let v = u.uint { user = String(v) }
        }
        return Guest(
            name: c["name"]?.string ?? "",
            user: user,
            memory: (c["memory"]?.array ?? []).map(MemoryRegion.extract),
            vsmmus: (c["vsmmus"]?.array ?? []).map(VSMMU.extract),
            devices: (c["devices"]?.array ?? []).map(Device.extractWithLayout),
            mark: c.mark, nameMark: c["name"]?.mark ?? c.mark, userMark: c["user"]?.mark)
    }
}

extension Device {
    static func extract(_ c: Checked) -> Device {
        var source = DeviceSource.selftest(-1)
        switch c["host"]?.value {
        case .pci(let a): source = .pci(a)
        case .selftest(let n): source = .selftest(n)
        default: break
        }
        var d = Device(name: c["name"]?.string ?? "", host: source, slot: c["slot"]?.uint.map { Int($0) },
                       mark: c.mark, nameMark: c["name"]?.mark ?? c.mark, hostMark: c["host"]?.mark ?? c.mark, slotMark: c["slot"]?.mark)
        d.placement = DevicePlacement(c["vsmmu"]?.string)
        d.placementMark = c["vsmmu"]?.mark
        d.peer = c["peer"]?.string
        d.peerMark = c["peer"]?.mark
        return d
    }
}

extension MemoryRegion {
    static func extract(_ c: Checked) -> MemoryRegion {
        var marks: [String: Mark] = [:]
        for k in ["name", "guestAddress", "size", "backing", "hugepageSize"] { if let m = c[k]?.mark { marks[k] = m } }
        return MemoryRegion(
            name: c["name"]?.string ?? "",
            guestAddress: c["guestAddress"]?.uint ?? 0,
            size: c["size"]?.uint ?? 0,
            backing: GuestMemoryBacking(rawValue: c["backing"]?.string ?? "") ?? .memfd,
            hugepageSize: c["hugepageSize"]?.uint,
            mark: c.mark, fieldMarks: marks)
    }
}

extension VSMMU {
    static func extract(_ c: Checked) -> VSMMU {
        func sw(_ k: String) -> Switch { Switch(rawValue: c[k]?.string ?? "auto") ?? .auto }
        func av(_ k: String) -> AutoValue {
            guard let v = c[k], !v.isAuto, let n = v.uint else { return .auto }
            return .value(Int(n))
        }
        var marks: [String: Mark] = [:]
        for k in ["name", "physical", "busNumber", "identifier", "ats", "ril", "ssidSize", "oas", "cmdqv", "devices"] {
            if let m = c[k]?.mark { marks[k] = m }
        }
        let physical = c["physical"]?.string
        return VSMMU(
            name: c["name"]?.string ?? "",
            physical: physical == "auto" ? nil : physical,
            busNumber: c["busNumber"]?.uint.map { Int($0) },
            identifier: c["identifier"]?.uint.map { Int($0) },
            ats: sw("ats"), ril: sw("ril"), ssidSize: av("ssidSize"), oas: av("oas"), cmdqv: sw("cmdqv"),
            devices: (c["devices"]?.array ?? []).map(Device.extractWithLayout),
            mark: c.mark, fieldMarks: marks)
    }
}
