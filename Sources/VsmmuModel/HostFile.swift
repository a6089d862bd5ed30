import VsmmuKernel
import VsmmuYAML

public enum HostSchema {
    public static let reservedRegion: SchemaType = .object([
        SchemaField("start", .scalar(.uint(max: UInt64.max), description: "first IOVA"), required: true),
        SchemaField("size", .scalar(.size, description: "bytes"), required: true),
        SchemaField("type", .scalar(.choice(["msi", "reserved", "direct", "direct-relaxable"]), description: "kernel region type"), required: true),
    ], description: "an IOVA range no guest RAM may use")

    public static let iommu: SchemaType = .object([
        SchemaField("name", .scalar(.text, description: "name under /sys/class/iommu"), required: true),
        SchemaField("type", .scalar(.choice(IOMMUType.allCases.map(\.rawValue)), description: "IOMMU driver family"), required: true),
        SchemaField("nesting", .scalar(.bool, description: "nest-parent stage-2 HWPTs possible"), required: true),
        SchemaField("coherent", .scalar(.bool, description: "CANWBS or S2FWB: what a vIOMMU needs"), required: true),
        SchemaField("ats", .scalar(.bool, description: "Address Translation Services")),
        SchemaField("ril", .scalar(.bool, description: "range invalidation")),
        SchemaField("pasid", .scalar(.bool, description: "PASID (substream) support")),
        SchemaField("ssidSize", .scalar(.uint(max: 20), description: "PASID bits")),
        SchemaField("oas", .scalar(.uint(max: 64), description: "output address size in bits")),
        SchemaField("reservedRegions", .array(reservedRegion, description: "IOVA ranges the kernel reserves")),
        SchemaField("cmdqv", .object([
            SchemaField("vcmdqs", .scalar(.uint(max: 128), description: "vCMDQs per VINTF"), required: true),
        ], description: "present only on NVIDIA Tegra241 CMDQV")),
        SchemaField("unknown", .array(.scalar(.choice(unknowableFields), description: "a fact"),
                                      description: "facts vsmmu host could not read (no device of this IOMMU on vfio-pci); their values are placeholders")),
    ], description: "a physical IOMMU instance")

    public static let unknowableFields = ["nesting", "coherent", "ats", "ril", "pasid", "ssidSize", "oas"]

    public static let pciDevice: SchemaType = .object([
        SchemaField("address", .scalar(.pciAddress, description: "domain:bus:slot.function"), required: true),
        SchemaField("vendor", .scalar(.uint(max: 0xffff), description: "PCI vendor id"), required: true),
        SchemaField("device", .scalar(.uint(max: 0xffff), description: "PCI device id"), required: true),
        SchemaField("class", .scalar(.uint(max: 0xffffff), description: "PCI class code"), required: true),
        SchemaField("driver", .scalar(.nullableDriverName, description: "current driver, or null"), required: true),
        SchemaField("iommuGroup", .scalar(.nullableUInt(max: UInt64(Int32.max)), description: "IOMMU group number, null without IOMMU"), required: true),
        SchemaField("iommu", .scalar(.nullableText, description: "the IOMMU it sits behind")),
        SchemaField("numaNode", .scalar(.int(min: -1, max: 1 << 16), description: "NUMA node, -1 when unknown")),
        SchemaField("vfioDriver", .scalar(.nullableDriverName, description: "the VFIO driver the kernel would match (a vfio_pci: alias in modules.alias), else vfio-pci; absent or null: vfio-pci")),
        SchemaField("ats", .scalar(.bool, description: "this device: ATS capability and the IOMMU allows it (GET_HW_INFO through it); absent: the IOMMU's ats")),
        SchemaField("pasidWidth", .scalar(.uint(max: 20), description: "this device's PASID width in bits, 0 without PASID; absent: the IOMMU's ssidSize")),
        SchemaField("canwbs", .scalar(.bool, description: "ARM: this master's coherent walks (IORT CANWBS), what a vIOMMU needs; absent: the IOMMU's coherent")),
        SchemaField("bars", .array(bar, description: "memory BARs (sysfs resource)")),
        SchemaField("secondaryBus", .scalar(.uint(max: 255), description: "a bridge: the bus directly below it (config space 0x19); peer paths follow it")),
        SchemaField("acsControl", .scalar(.uint(max: 0xffff), description: "a bridge's ACS Control register (ACS extended capability +6); absent: no ACS capability, or listed in unknown when config space could not be read")),
        SchemaField("unknown", .array(.scalar(.choice(DeviceFact.allCases.map(\.rawValue)), description: "a per-device fact"),
                                      description: "per-device facts vsmmu host could not read; the validator refuses to rely on them")),
    ], description: "a PCI device as sysfs shows it")

    public static let bar: SchemaType = .object([
        SchemaField("index", .scalar(.uint(max: 5), description: "BAR number"), required: true),
        SchemaField("size", .scalar(.size, description: "bytes"), required: true),
        SchemaField("prefetchable", .scalar(.bool, description: "IORESOURCE_PREFETCH")),
        SchemaField("bits64", .scalar(.bool, description: "64-bit BAR (IORESOURCE_MEM_64)")),
    ], description: "a memory BAR")

    public static let root: SchemaType = .object([
        SchemaField("apiVersion", .scalar(.constant("vsmmu/v1"), description: "vsmmu/v1"), required: true),
        SchemaField("kind", .scalar(.constant("Host"), description: "Host"), required: true),
        SchemaField("metadata", .object([
            SchemaField("name", .scalar(.text, description: "host name"), required: true),
        ], description: "about this host"), required: true),
        SchemaField("kernel", .object([
            SchemaField("release", .scalar(.text, description: "uname -r"), required: true),
            SchemaField("iommufd", .scalar(.bool, description: "/dev/iommu exists"), required: true),
            SchemaField("vfioCdev", .scalar(.bool, description: "/dev/vfio/devices exists"), required: true),
            SchemaField("pageSize", .scalar(.uint(max: 65536), description: "PAGE_SIZE: 4096, 16384 or 65536; absent: 4096")),
        ], description: "kernel facts"), required: true),
        SchemaField("iommus", .array(iommu, description: "physical IOMMU instances"), required: true),
        SchemaField("pciDevices", .array(pciDevice, description: "PCI devices"), required: true),
    ], description: "vsmmu host description: what the kernel shows about a host")
}

extension HostDescription {
    static func extract(_ root: Checked) -> HostDescription {
        let kernel = root["kernel"]
        let iommus = (root["iommus"]?.array ?? []).map { c in
            HostIOMMU(
                name: c["name"]?.string ?? "",
                type: IOMMUType(rawValue: c["type"]?.string ?? "") ?? .armSMMUv3,
                nesting: c["nesting"]?.bool ?? false,
                coherent: c["coherent"]?.bool ?? false,
                ats: c["ats"]?.bool ?? false,
                ril: c["ril"]?.bool ?? false,
                pasid: c["pasid"]?.bool ?? false,
                ssidSize: Int(c["ssidSize"]?.uint ?? 0),
                oas: Int(c["oas"]?.uint ?? 48),
                reservedRegions: (c["reservedRegions"]?.array ?? []).map {
                    ReservedRegion(start: $0["start"]?.uint ?? 0, size: $0["size"]?.uint ?? 0, type: $0["type"]?.string ?? "reserved")
                },
                cmdqvVCMDQs: c["cmdqv"]?["vcmdqs"]?.uint.map { Int($0) },
                unknown: (c["unknown"]?.array ?? []).compactMap(\.string))
        }
        let devices = (root["pciDevices"]?.array ?? []).compactMap(extractDevice)
        return HostDescription(
            name: root["metadata"]?["name"]?.string ?? "",
            kernel: KernelFacts(release: kernel?["release"]?.string ?? "",
                                iommufd: kernel?["iommufd"]?.bool ?? false,
                                vfioCdev: kernel?["vfioCdev"]?.bool ?? false,
                                pageSize: kernel?["pageSize"]?.uint),
            iommus: iommus, pciDevices: devices)
    }

    static func extractDevice(_ c: Checked) -> HostPCIDevice? {
        guard case .pci(let address)? = c["address"]?.value else { return nil }
        let bars: [PCIBar]? = (c["bars"]?.array).map { list in
            list.map { b -> PCIBar in
                let index = Int(b["index"]?.uint ?? 0)
                let size: UInt64 = b["size"]?.uint ?? 0
                return PCIBar(index: index, size: size, prefetchable: b["prefetchable"]?.bool ?? false, bits64: b["bits64"]?.bool ?? false)
            }
        }
        let unknown: [DeviceFact] = (c["unknown"]?.array ?? []).compactMap { $0.string.flatMap(DeviceFact.init(rawValue:)) }
        let pasid: Int? = c["pasidWidth"]?.uint.map { Int($0) }
        var d = HostPCIDevice(
            address: address,
            vendor: UInt16(c["vendor"]?.uint ?? 0),
            device: UInt16(c["device"]?.uint ?? 0),
            classCode: UInt32(c["class"]?.uint ?? 0),
            driver: c["driver"]?.string,
            iommuGroup: c["iommuGroup"]?.uint.map { Int($0) },
            iommu: c["iommu"]?.string,
            numaNode: Int(c["numaNode"]?.int ?? -1))
        d.vfioDriver = c["vfioDriver"]?.string
        d.ats = c["ats"]?.bool
        d.pasidWidth = pasid
        d.canwbs = c["canwbs"]?.bool
        d.bars = bars
        d.unknown = unknown
        d.secondaryBus = c["secondaryBus"]?.uint.map { Int($0) }
        d.acsControl = c["acsControl"]?.uint.map { UInt16($0) }
        return d
    }

    /// The Host description as YAML (docs/contract.md §3), as `vsmmu host` prints it.
    public func renderYAML() -> String {
        var o = "apiVersion: vsmmu/v1\nkind: Host\nmetadata:\n  name: \(YAMLText.quoted(name))\n"
        o += "kernel:\n  release: \(YAMLText.quoted(kernel.release))\n  iommufd: \(kernel.iommufd)\n  vfioCdev: \(kernel.vfioCdev)\n"
        if let p = kernel.pageSize { o += "  pageSize: \(p)\n" }
        o += iommus.isEmpty ? "iommus: []\n" : "iommus:\n"
        for i in iommus {
            o += "  - name: \(YAMLText.quoted(i.name))\n    type: \(i.type.rawValue)\n    nesting: \(i.nesting)\n    coherent: \(i.coherent)\n"
            o += "    ats: \(i.ats)\n    ril: \(i.ril)\n    pasid: \(i.pasid)\n    ssidSize: \(i.ssidSize)\n    oas: \(i.oas)\n"
            if i.reservedRegions.isEmpty {
                o += "    reservedRegions: []\n"
            } else {
                o += "    reservedRegions:\n"
                for r in i.reservedRegions {
                    o += "      - { start: \(YAMLText.hex(r.start)), size: \(YAMLText.size(r.size)), type: \(r.type) }\n"
                }
            }
            if let q = i.cmdqvVCMDQs { o += "    cmdqv: { vcmdqs: \(q) }\n" }
            if !i.unknown.isEmpty { o += "    unknown: [\(i.unknown.joined(separator: ", "))]\n" }
        }
        o += pciDevices.isEmpty ? "pciDevices: []\n" : "pciDevices:\n"
        for d in pciDevices {
            o += "  - address: \"\(d.address)\"\n"
            o += "    vendor: \(YAMLText.hex(UInt64(d.vendor), width: 4))\n"
            o += "    device: \(YAMLText.hex(UInt64(d.device), width: 4))\n"
            o += "    class: \(YAMLText.hex(UInt64(d.classCode), width: 6))\n"
            o += "    driver: \(d.driver.map(YAMLText.quoted) ?? "null")\n"
            o += "    iommuGroup: \(d.iommuGroup.map(String.init) ?? "null")\n"
            o += "    iommu: \(d.iommu.map(YAMLText.quoted) ?? "null")\n"
            o += "    numaNode: \(d.numaNode)\n"
            if let v = d.vfioDriver { o += "    vfioDriver: \(YAMLText.quoted(v))\n" }
            if let v = d.ats { o += "    ats: \(v)\n" }
            if let v = d.pasidWidth { o += "    pasidWidth: \(v)\n" }
            if let v = d.canwbs { o += "    canwbs: \(v)\n" }
            if let bars = d.bars {
                o += "    bars: [" + bars.map { "{ index: \($0.index), size: \(YAMLText.size($0.size)), prefetchable: \($0.prefetchable), bits64: \($0.bits64) }" }.joined(separator: ", ") + "]\n"
            }
            if let b = d.secondaryBus { o += "    secondaryBus: \(YAMLText.hex(UInt64(b), width: 2))\n" }
            if let a = d.acsControl { o += "    acsControl: \(YAMLText.hex(UInt64(a), width: 4))\n" }
            if !d.unknown.isEmpty { o += "    unknown: [\(d.unknown.map(\.rawValue).joined(separator: ", "))]\n" }
        }
        return o
    }
}

/// Small helpers for writing YAML that reads back the same.
public enum YAMLText {
    /// The text plainly when that reads back as the same string, else double-quoted.
    public static func quoted(_ s: String) -> String {
        let plainSafe = !s.isEmpty && s.allSatisfy { c in c.isLetter || c.isNumber || "-_./".contains(c) }
            && !["null", "true", "false", "yes", "no", "on", "off", "~"].contains(s.lowercased())
            && !(s.first?.isNumber ?? false) && s.first != "-"
        if plainSafe { return s }
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 { out += "\\x" + String(u.value, radix: 16).leftPad(2) } else { out.unicodeScalars.append(u) }
            }
        }
        return out + "\""
    }

    public static func hex(_ v: UInt64, width: Int = 0) -> String { "0x" + String(v, radix: 16).leftPad(width) }

    /// Bytes in the largest unit that divides them exactly.
    public static func size(_ v: UInt64) -> String {
        for (unit, scale) in ScalarParser.sizeUnits.reversed() where v != 0 && v % scale == 0 {
            return "\(v / scale)\(unit)"
        }
        return String(v)
    }
}

extension String {
    func leftPad(_ width: Int) -> String { count >= width ? self : String(repeating: "0", count: width - count) + self }
}
