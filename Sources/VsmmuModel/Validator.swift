import VsmmuKernel
import VsmmuYAML

/// Feature values of one vSMMU after `auto` was resolved against its physical IOMMU.
public struct ResolvedVSMMU: Hashable, Sendable, Codable {
    public var guest: String
    public var vsmmu: String
    public var physical: String
    public var physicalType: IOMMUType
    public var ats: Bool
    public var ril: Bool
    public var ssidSize: Int
    public var oas: Int
    public var cmdqv: Bool
    /// Which of the values above came from `auto`.
    public var autoFields: Set<String>
}

public struct ValidationResult: Sendable {
    public var diagnostics: [Diagnostic]
    /// Keyed by "guest/vsmmu"; empty without a host.
    public var resolved: [String: ResolvedVSMMU]
    /// The topology after placement (docs/contract.md §2 "Placement"): every device under a
    /// vSMMU or on the stage-2. What the planner, the allocations and the VMM layout use.
    public var placed: Topology
    /// What placement decided and every `auto` resolved, by guest name.
    public var placements: [String: GuestPlacement] = [:]
    public var isValid: Bool { diagnostics.isEmpty }
}

/// The semantic rules of docs/contract.md §2. Without a host, only the rules that need none.
public struct Validator {
    public static let pageSize: UInt64 = 4096
    public static let maxVSMMUsPerGuest = 16
    /// Drivers that leave an IOMMU group viable for user DMA (docs/kernel-interface.md §8).
    public static let dmaSafeDrivers: Set<String> = ["vfio-pci", "pci-stub", "pcieport"]
    /// The selftest mock domain's aperture (docs/kernel-interface.md §7.3).
    public static let mockAperture: (start: UInt64, last: UInt64) = (0x100_0000, 0x7FFF_FFFF)

    let topology: Topology
    let host: HostDescription?
    /// The host's PCI devices the guest being checked uses, by device name.
    var devicesByName: [String: HostPCIDevice] = [:]
    let index: HostIndex?
    var bag: DiagnosticBag
    var resolved: [String: ResolvedVSMMU] = [:]
    var placements: [String: GuestPlacement] = [:]
    /// Why each `auto` of a vSMMU resolved as it did, keyed by "guest/vsmmu".
    var autoReasons: [String: [AutoResolution]] = [:]

    public static func validate(_ topology: Topology, host: HostDescription?) -> ValidationResult {
        let index = host.map(HostIndex.init)
        var placed = topology
        var placements: [String: GuestPlacement] = [:]
        for (i, g) in topology.guests.enumerated() {
            let (p, report) = Placement.place(g, host: host, index: index)
            placed.guests[i] = p
            placements[g.name] = report
        }
        var v = Validator(topology: placed, host: host, index: index, bag: DiagnosticBag(file: topology.file))
        v.placements = placements
        v.run()
        return ValidationResult(diagnostics: v.bag.sorted, resolved: v.resolved, placed: placed, placements: v.finishedPlacements())
    }

    mutating func run() {
        uniqueNames()
        hostDevicesUsedOnce()
        for guest in topology.guests {
            memoryRules(guest)
            busRules(guest)
            vsmmuShapeRules(guest)
            placementShapeRules(guest)
            layoutRules(guest)
            if let host {
                hostRules(guest, host: host)
                peerRules(guest, host: host)
            }
        }
        if let host { groupRules(host) }
    }

    /// Lookups into a host description in constant time (hosts can list thousands of devices).
    struct HostIndex {
        var devices: [PCIAddress: HostPCIDevice] = [:]
        var iommus: [String: HostIOMMU] = [:]
        var groups: [Int: [HostPCIDevice]] = [:]
        init(_ host: HostDescription) {
            for d in host.pciDevices {
                devices[d.address] = d
                if let g = d.iommuGroup { groups[g, default: []].append(d) }
            }
            for i in host.iommus where iommus[i.name] == nil { iommus[i.name] = i }
        }
    }

    // MARK: names

    mutating func uniqueNames() {
        var guests: [String: Mark] = [:]
        for g in topology.guests {
            if let first = guests[g.name] {
                bag.error("duplicate guest name '\(g.name)' (first at line \(first.line))", at: g.nameMark)
            } else { guests[g.name] = g.nameMark }
            var vsmmus: [String: Mark] = [:]
            for s in g.vsmmus {
                let m = s.fieldMarks["name"] ?? s.mark
                if let first = vsmmus[s.name] {
                    bag.error("duplicate vSMMU name '\(s.name)' in guest '\(g.name)' (first at line \(first.line))", at: m)
                } else { vsmmus[s.name] = m }
            }
            var devices: [String: Mark] = [:]
            for d in g.allDevices {
                if let first = devices[d.name] {
                    bag.error("duplicate device name '\(d.name)' in guest '\(g.name)' (first at line \(first.line))", at: d.nameMark)
                } else { devices[d.name] = d.nameMark }
            }
            var regions: [String: Mark] = [:]
            for r in g.memory {
                let m = r.fieldMarks["name"] ?? r.mark
                if let first = regions[r.name] {
                    bag.error("duplicate memory region name '\(r.name)' in guest '\(g.name)' (first at line \(first.line))", at: m)
                } else { regions[r.name] = m }
            }
        }
    }

    mutating func hostDevicesUsedOnce() {
        var used: [DeviceSource: (guest: String, device: String, mark: Mark)] = [:]
        for g in topology.guests {
            for d in g.allDevices {
                if let first = used[d.host] {
                    bag.error("host device \(d.host) is used twice: also by device '\(first.device)' of guest '\(first.guest)' (line \(first.mark.line))", at: d.hostMark,
                              hint: "a device can be passed through to one guest only")
                } else {
                    used[d.host] = (g.name, d.name, d.hostMark)
                }
            }
        }
    }

    // MARK: memory

    mutating func memoryRules(_ guest: Guest) {
        var placed: [(region: MemoryRegion, last: UInt64)] = []
        for r in guest.memory {
            let sizeMark = r.fieldMarks["size"] ?? r.mark
            let addrMark = r.fieldMarks["guestAddress"] ?? r.mark
            var ok = true
            if r.size == 0 {
                bag.error("memory region '\(r.name)' has size zero", at: sizeMark)
                ok = false
            } else if r.size % Validator.pageSize != 0 {
                bag.error("memory region '\(r.name)' size \(r.size) is not a multiple of the 4KiB page size", at: sizeMark)
                ok = false
            }
            if r.guestAddress % Validator.pageSize != 0 {
                bag.error("memory region '\(r.name)' guestAddress \(YAMLText.hex(r.guestAddress)) is not 4KiB page aligned", at: addrMark)
                ok = false
            }
            if let huge = r.hugepageSize {
                let hugeMark = r.fieldMarks["hugepageSize"] ?? r.mark
                if r.backing == .anonymous {
                    bag.error("hugepageSize goes with backing hugetlbfs or memfd, not anonymous", at: hugeMark)
                    ok = false
                } else if huge < Validator.pageSize || huge & (huge - 1) != 0 {
                    bag.error("hugepageSize \(YAMLText.size(huge)) is not a power of two of at least 4KiB", at: hugeMark)
                    ok = false
                } else {
                    if r.size % huge != 0 {
                        bag.error("memory region '\(r.name)' size \(YAMLText.size(r.size)) is not a multiple of its hugepageSize \(YAMLText.size(huge))", at: sizeMark)
                        ok = false
                    }
                    if r.guestAddress % huge != 0 {
                        bag.error("memory region '\(r.name)' guestAddress \(YAMLText.hex(r.guestAddress)) is not aligned to its hugepageSize \(YAMLText.size(huge))", at: addrMark)
                        ok = false
                    }
                }
            }
            guard r.size > 0 else { continue }
            guard let last = r.last else {
                bag.error("memory region '\(r.name)' runs past the end of the 64-bit address space (guestAddress + size overflows)", at: sizeMark)
                continue
            }
            if let other = placed.first(where: { r.guestAddress <= $0.last && $0.region.guestAddress <= last }) {
                bag.error("memory region '\(r.name)' [\(YAMLText.hex(r.guestAddress))-\(YAMLText.hex(last))] overlaps region '\(other.region.name)' [\(YAMLText.hex(other.region.guestAddress))-\(YAMLText.hex(other.last))]", at: addrMark)
                ok = false
            }
            if ok { placed.append((r, last)) }
        }
        // IOVA ranges the kernel reserves. Without a host: an accelerated vSMMU means
        // ARM SMMUv3, whose software-MSI window every attached device reserves (docs/kernel-interface.md §9.17).
        if host == nil && !guest.vsmmus.isEmpty {
            let window = ReservedRegion(start: UInt64(UAPI.armMSIWindowStart), size: UAPI.armMSIWindowSize, type: "msi")
            for (r, last) in placed where r.guestAddress <= window.last && window.start <= last {
                bag.error("memory region '\(r.name)' overlaps the ARM SMMUv3 MSI window [\(YAMLText.hex(window.start))-\(YAMLText.hex(window.last))] that the kernel reserves",
                          at: r.fieldMarks["guestAddress"] ?? r.mark, hint: "place guest RAM elsewhere, e.g. at 0x40000000 as QEMU's virt machine does")
            }
        }
    }

    // MARK: guest PCI layout

    mutating func busRules(_ guest: Guest) {
        if guest.vsmmus.count > Validator.maxVSMMUsPerGuest {
            let s = guest.vsmmus[Validator.maxVSMMUsPerGuest]
            bag.error("guest '\(guest.name)' has \(guest.vsmmus.count) vSMMUs; at most \(Validator.maxVSMMUsPerGuest) fit (the virt machine's platform bus has 64 IRQs, 4 per vSMMU)", at: s.fieldMarks["name"] ?? s.mark)
        }
        var buses: [Int: (String, Mark)] = [:]
        var identifiers: [Int: (String, Mark)] = [:]
        for s in guest.vsmmus {
            if let b = s.busNumber {
                let m = s.fieldMarks["busNumber"] ?? s.mark
                if b == 0 {
                    bag.error("busNumber 0 is the root bus pcie.0; an expander bus needs 1-255", at: m)
                } else if let first = buses[b] {
                    bag.error("busNumber \(YAMLText.hex(UInt64(b), width: 2)) of vSMMU '\(s.name)' is already used by vSMMU '\(first.0)' (line \(first.1.line))", at: m)
                } else {
                    buses[b] = (s.name, m)
                }
            }
            if let id = s.identifier {
                let m = s.fieldMarks["identifier"] ?? s.mark
                if let first = identifiers[id] {
                    bag.error("identifier \(id) of vSMMU '\(s.name)' is already used by vSMMU '\(first.0)' (line \(first.1.line))", at: m)
                } else { identifiers[id] = (s.name, m) }
            }
            var slots: [Int: String] = [:]
            for d in s.devices {
                guard let slot = d.slot else { continue }
                if let first = slots[slot] {
                    bag.error("slot \(slot) of device '\(d.name)' is already taken by device '\(first)' on vSMMU '\(s.name)'", at: d.slotMark ?? d.mark)
                } else { slots[slot] = d.name }
            }
        }
        // QEMU's pxb rule: each expander bus's range [bus_nr, next bus_nr - 1] holds the
        // bus itself plus one bus per root port below it; pcie.0 keeps buses below the lowest.
        let explicit = guest.vsmmus.filter { ($0.busNumber ?? 0) > 0 }.sorted { $0.busNumber! < $1.busNumber! }
        var seenBus = Set<Int>()
        for (i, s) in explicit.enumerated() {
            let b = s.busNumber!
            guard seenBus.insert(b).inserted else { continue }
            let next = explicit[(i + 1)...].first { $0.busNumber! > b }?.busNumber ?? 256
            let need = 1 + s.devices.count
            if next - b < need {
                bag.error("busNumber \(YAMLText.hex(UInt64(b), width: 2)) of vSMMU '\(s.name)' leaves room for \(next - b) buses before \(next > 255 ? "the end (0xff)" : YAMLText.hex(UInt64(next), width: 2)), but it needs \(need) (itself and one per root port)",
                          at: s.fieldMarks["busNumber"] ?? s.mark, hint: "lower this busNumber or raise the next one")
            }
        }
        if let lowest = explicit.first?.busNumber {
            let rootNeed = 1 + guest.devices.count
            if lowest < rootNeed {
                let s = explicit.first!
                bag.error("busNumber \(YAMLText.hex(UInt64(lowest), width: 2)) of vSMMU '\(s.name)' leaves pcie.0 only \(lowest) buses; it needs \(rootNeed) (itself and one root port per device with no vSMMU)",
                          at: s.fieldMarks["busNumber"] ?? s.mark)
            }
        }
    }

    mutating func vsmmuShapeRules(_ guest: Guest) {
        var physicals: [String: String] = [:]
        for s in guest.vsmmus {
            let nameMark = s.fieldMarks["name"] ?? s.mark
            if let p = s.physical {
                if let first = physicals[p] {
                    bag.error("vSMMUs '\(first)' and '\(s.name)' of guest '\(guest.name)' both name physical IOMMU \(p); one physical IOMMU backs one vSMMU per guest",
                              at: s.fieldMarks["physical"] ?? nameMark, hint: "put their devices under one vSMMU")
                } else { physicals[p] = s.name }
            }
            if s.devices.isEmpty {
                let autos = [("physical", s.physical == nil), ("ats", s.ats == .auto), ("ril", s.ril == .auto),
                             ("ssidSize", s.ssidSize == .auto), ("oas", s.oas == .auto), ("cmdqv", s.cmdqv != .off)]
                    .filter(\.1).map(\.0)
                if !autos.isEmpty {
                    bag.error("vSMMU '\(s.name)' has no devices, so \(autos.joined(separator: ", ")) cannot be resolved (QEMU's accelerated vSMMU reads them from a cold-plugged device)",
                              at: nameMark, hint: "add a device, or set physical, ats, ril, ssidSize and oas explicitly and cmdqv: off")
                }
            }
        }
    }

    // MARK: rules against the host

    mutating func hostRules(_ guest: Guest, host: HostDescription) {
        if !host.kernel.iommufd {
            bag.error("host '\(host.name)' has no iommufd (/dev/iommu): its kernel lacks CONFIG_IOMMUFD", at: guest.nameMark)
            return
        }
        // Devices exist and sit behind an IOMMU.
        var usable: [String: HostIOMMU] = [:]
        pageSizeRules(guest, host: host)
        for d in guest.allDevices {
            switch d.host {
            case .pci(let a):
                guard let hd = index!.devices[a] else {
                    bag.error("host '\(host.name)' has no PCI device \(a)", at: d.hostMark,
                              hint: "`vsmmu host` lists the devices; check the domain and bus numbers")
                    continue
                }
                if !host.kernel.vfioCdev {
                    bag.error("host '\(host.name)' has no VFIO device cdev (/dev/vfio/devices): its kernel lacks CONFIG_VFIO_DEVICE_CDEV", at: d.hostMark)
                    continue
                }
                guard let name = hd.iommu, let iommu = index!.iommus[name], hd.iommuGroup != nil else {
                    bag.error("PCI device \(a) sits behind no IOMMU; VFIO and iommufd refuse it", at: d.hostMark)
                    continue
                }
                if hd.isUnknown(.vfioDriver) {
                    bag.error("the VFIO driver of \(a) is unknown (vfioDriver: the host description could not read modules.alias), so vsmmu cannot choose between vfio-pci and a variant driver",
                              at: d.hostMark, hint: "run `vsmmu host` where /lib/modules/$(uname -r)/modules.alias is readable, or state vfioDriver for this device")
                    continue
                }
                usable[d.name] = iommu
                devicesByName[d.name] = hd
            case .selftest(let n):
                guard let iommu = host.iommus.first(where: { $0.type == .selftest }) else {
                    bag.error("device selftest:\(n) is a kernel self-test mock device, but host '\(host.name)' has no IOMMU of type selftest", at: d.hostMark,
                              hint: "self-test devices exist only on kernels built with CONFIG_IOMMUFD_TEST")
                    continue
                }
                usable[d.name] = iommu
            }
        }
        var onPhysical: [String: String] = [:]
        defer { devicesByName = [:] }
        for s in guest.vsmmus {
            let nameMark = s.fieldMarks["name"] ?? s.mark
            var physical: HostIOMMU?
            if let p = s.physical {
                guard let named = index!.iommus[p] else {
                    bag.error("physical IOMMU '\(p)' of vSMMU '\(s.name)' does not exist on host '\(host.name)'", at: s.fieldMarks["physical"] ?? nameMark,
                              hint: "known IOMMUs: \(host.iommus.map(\.name).joined(separator: ", "))")
                    continue
                }
                physical = named
            }
            var consistent = true
            for d in s.devices {
                guard let iommu = usable[d.name] else { consistent = false; continue }
                if let expected = physical {
                    if iommu.name != expected.name {
                        let other = guest.vsmmus.first { o in o.name != s.name && (o.physical == iommu.name || (o.physical == nil && o.devices.contains { usable[$0.name]?.name == iommu.name })) }
                        let why = s.physical != nil ? "vSMMU '\(s.name)' is on \(expected.name) (physical)" : "the vSMMU's first device is behind \(expected.name)"
                        bag.error("device '\(d.name)' (\(d.host)) sits behind IOMMU \(iommu.name), but \(why); an accelerated vSMMU serves one physical IOMMU",
                                  at: d.hostMark,
                                  hint: other.map { "move it to vSMMU '\($0.name)', which is on \(iommu.name)" } ?? "give it its own vSMMU with physical: \(iommu.name)")
                        consistent = false
                    }
                } else {
                    physical = iommu
                }
            }
            guard let iommu = physical, consistent || s.physical != nil else { continue }
            if let first = onPhysical[iommu.name] {
                bag.error("vSMMUs '\(first)' and '\(s.name)' of guest '\(guest.name)' are both on physical IOMMU \(iommu.name); one physical IOMMU backs one vSMMU per guest (one nest parent and one vIOMMU per SMMU)",
                          at: nameMark, hint: "put their devices under one vSMMU")
                continue
            }
            onPhysical[iommu.name] = s.name
            resolve(s, guest: guest, iommu: iommu)
        }
        // Guest RAM against what the kernel reserves on each IOMMU the guest uses.
        var iommus: [String: HostIOMMU] = [:]
        for i in usable.values { iommus[i.name] = i }
        let s2IOMMUs = Set(guest.vsmmus.compactMap { resolved["\(guest.name)/\($0.name)"]?.physical })
        for r in guest.memory {
            guard r.size > 0, let last = r.last else { continue }
            let mark = r.fieldMarks["guestAddress"] ?? r.mark
            for i in iommus.values.sorted(by: { $0.name < $1.name }) {
                for rr in i.reservedRegions where rr.type != "direct-relaxable" && r.guestAddress <= rr.last && rr.start <= last {
                    bag.error("memory region '\(r.name)' [\(YAMLText.hex(r.guestAddress))-\(YAMLText.hex(last))] overlaps the \(rr.type) region [\(YAMLText.hex(rr.start))-\(YAMLText.hex(rr.last))] that IOMMU \(i.name) reserves",
                              at: mark, hint: "place guest RAM elsewhere, e.g. at 0x40000000 as QEMU's virt machine does")
                }
                if i.type == .selftest && (r.guestAddress < Validator.mockAperture.start || last > Validator.mockAperture.last) {
                    bag.error("memory region '\(r.name)' [\(YAMLText.hex(r.guestAddress))-\(YAMLText.hex(last))] lies outside the self-test mock aperture [0x1000000-0x7fffffff]",
                              at: mark, hint: "on the mock, use at most 1GiB at 0x40000000")
                } else if s2IOMMUs.contains(i.name) && i.oas < 64 && last >> UInt64(i.oas) != 0 {
                    bag.error("memory region '\(r.name)' ends at \(YAMLText.hex(last)), beyond the \(i.oas)-bit stage-2 input range of IOMMU \(i.name)", at: mark)
                }
            }
        }
    }

    mutating func resolve(_ s: VSMMU, guest: Guest, iommu: HostIOMMU) {
        let nameMark = s.fieldMarks["name"] ?? s.mark
        let at = s.fieldMarks["physical"] ?? nameMark
        var needed: [String] = ["nesting", "coherent"]
        if s.ats == .auto { needed.append("ats") }
        if s.ril == .auto { needed.append("ril") }
        if s.ssidSize == .auto { needed += ["ssidSize", "pasid"] }
        if s.oas == .auto { needed.append("oas") }
        let unknownNeeded = needed.filter { iommu.unknown.contains($0) }
        if !unknownNeeded.isEmpty {
            bag.error("physical IOMMU \(iommu.name): \(unknownNeeded.joined(separator: ", ")) unknown (the host description could not read them)", at: at,
                      hint: "bind one device of this IOMMU to vfio-pci and run `vsmmu host` again, or set the vSMMU's values explicitly")
            return
        }
        guard iommu.type == .armSMMUv3 || iommu.type == .selftest else {
            if !iommu.nesting {
                bag.error("physical IOMMU \(iommu.name) (\(iommu.type.rawValue)) has no nesting support, which an accelerated vSMMU needs", at: at,
                          hint: iommu.type == .intelVTd ? "VT-d nesting needs scalable mode with ecap.NEST; move the devices to the guest's `devices:` list to pass them through without a vSMMU" : nil)
            } else {
                bag.error("physical IOMMU \(iommu.name) is \(iommu.type.rawValue); an accelerated vSMMU needs an ARM SMMUv3 (arm-smmuv3)", at: at,
                          hint: "move the devices to the guest's `devices:` list")
            }
            return
        }
        var ok = true
        if !iommu.nesting {
            bag.error("physical IOMMU \(iommu.name) has no nesting support (IDR0.S1P and IDR0.S2P), which an accelerated vSMMU needs", at: at,
                      hint: "move the devices to the guest's `devices:` list to pass them through without a vSMMU")
            ok = false
        }
        if !iommu.coherent {
            bag.error("physical IOMMU \(iommu.name) is not coherent (neither CANWBS nor S2FWB), so the kernel refuses a vIOMMU on it", at: at)
            ok = false
        }
        var autos = Set<String>()
        func sw(_ field: String, _ v: Switch, host: Bool, what: String) -> Bool {
            switch v {
            case .auto: autos.insert(field); return host
            case .off: return false
            case .on:
                if !host {
                    bag.error("\(field): on, but physical IOMMU \(iommu.name) has no \(what)", at: s.fieldMarks[field] ?? nameMark, hint: "use \(field): auto or off")
                    ok = false
                }
                return true
            }
        }
        // Per device (GET_HW_INFO answers through a device): what the vSMMU offers must
        // hold for every device behind it.
        let pci = s.devices.compactMap { d in devicesByName[d.name].map { (d, $0) } }
        if !deviceFactRules(s, devices: pci, iommu: iommu) { ok = false }
        let devicesATS = pci.allSatisfy { $0.1.effectiveATS(behind: iommu) }
        let devicesPASID = pci.map { $0.1.effectivePASIDWidth(behind: iommu) }.min()
        let ats = sw("ats", s.ats, host: iommu.ats, what: "ATS (Address Translation Services)") && (s.ats == .on || devicesATS)
        let ril = sw("ril", s.ril, host: iommu.ril, what: "range invalidation (RIL)")
        let cmdqv = sw("cmdqv", s.cmdqv, host: iommu.cmdqvVCMDQs != nil, what: "NVIDIA Tegra241 CMDQV")
        let hostSSID = iommu.pasid ? iommu.ssidSize : 0
        var ssid = min(hostSSID, devicesPASID ?? hostSSID)
        switch s.ssidSize {
        case .auto: autos.insert("ssidSize")
        case .value(let v):
            ssid = v
            if v > hostSSID {
                bag.error("ssidSize \(v) is more than physical IOMMU \(iommu.name) supports (\(hostSSID) PASID bits)", at: s.fieldMarks["ssidSize"] ?? nameMark,
                          hint: "use ssidSize: auto or at most \(hostSSID)")
                ok = false
            }
        }
        var oas = iommu.oas >= 48 ? 48 : 44
        switch s.oas {
        case .auto:
            autos.insert("oas")
            if iommu.oas < 44 {
                bag.error("physical IOMMU \(iommu.name) has a \(iommu.oas)-bit OAS; an accelerated vSMMU needs 44 or 48", at: at)
                ok = false
            }
        case .value(let v):
            oas = v
            if v > iommu.oas {
                bag.error("oas \(v) is more than physical IOMMU \(iommu.name) supports (\(iommu.oas) bits)", at: s.fieldMarks["oas"] ?? nameMark, hint: "use oas: auto")
                ok = false
            }
        }
        if s.physical == nil { autos.insert("physical") }
        if ok {
            let narrowest = pci.min { $0.1.effectivePASIDWidth(behind: iommu) < $1.1.effectivePASIDWidth(behind: iommu) }
            autoReasons["\(guest.name)/\(s.name)"] = AutoReasons.of(s, iommu: iommu, ats: ats, ril: ril, ssid: ssid, oas: oas, cmdqv: cmdqv,
                noATS: pci.filter { !$0.1.effectiveATS(behind: iommu) }.map { "\($0.0.name) (\($0.0.host))" },
                narrowest: narrowest.flatMap { n in n.1.effectivePASIDWidth(behind: iommu) < hostSSID ? "\(n.0.name) (\(n.1.effectivePASIDWidth(behind: iommu)) bits)" : nil })
            resolved["\(guest.name)/\(s.name)"] = ResolvedVSMMU(
                guest: guest.name, vsmmu: s.name, physical: iommu.name, physicalType: iommu.type,
                ats: ats, ril: ril, ssidSize: ssid, oas: oas, cmdqv: cmdqv, autoFields: autos)
        }
    }

    // MARK: per-device facts and the page size (docs/contract.md §3)

    /// The facts each device behind an accelerated vSMMU must have: known, CANWBS, ATS
    /// for `ats: on`, a PASID width for an explicit ssidSize. False when one fails. Only
    /// a device's own stated fact is checked here: a fact it takes from its IOMMU was
    /// checked against the IOMMU already.
    mutating func deviceFactRules(_ s: VSMMU, devices: [(Device, HostPCIDevice)], iommu: HostIOMMU) -> Bool {
        var ok = true
        for (d, hd) in devices {
            let what = "device '\(d.name)' (\(d.host))"
            var needed: [DeviceFact] = []
            if iommu.type == .armSMMUv3 { needed.append(.canwbs) }
            if s.ats != .off { needed.append(.ats) }
            if s.ssidSize != .value(0) { needed.append(.pasidWidth) }
            let unknown = needed.filter { hd.isUnknown($0) }
            if !unknown.isEmpty {
                bag.error("\(what): \(unknown.map(\.rawValue).joined(separator: ", ")) unknown (the host description could not read them), and vSMMU '\(s.name)' relies on them",
                          at: d.hostMark, hint: "bind the device to its VFIO driver and run `vsmmu host` again, or state the facts in the host description")
                ok = false
                continue
            }
            if iommu.type == .armSMMUv3 && iommu.coherent && hd.canwbs == false {
                bag.error("\(what) is not CANWBS (canwbs: false): the kernel refuses it under an accelerated vSMMU (VIOMMU_ALLOC EOPNOTSUPP through it, EINVAL attaching it to a coherent stage-2)",
                          at: d.hostMark, hint: d.placement == .none ? "move it to the guest's `devices:` list to pass it through without a vSMMU"
                              : "write vsmmu: none for it (it asked for vsmmu: \(d.placement.text)) to pass it through without a vSMMU")
                ok = false
            }
            if s.ats == .on && iommu.ats && hd.ats == false {
                bag.error("\(what) has no ATS (ats: false), but vSMMU '\(s.name)' has ats: on", at: d.hostMark,
                          hint: "use ats: auto (off when a device lacks it) or move the device to a vSMMU with ats: off")
                ok = false
            }
            if case .value(let v) = s.ssidSize, hd.pasidWidth != nil, v <= (iommu.pasid ? iommu.ssidSize : 0), v > hd.effectivePASIDWidth(behind: iommu) {
                bag.error("\(what) has a \(hd.effectivePASIDWidth(behind: iommu))-bit PASID width (pasidWidth), less than the ssidSize \(v) of vSMMU '\(s.name)'", at: d.hostMark,
                          hint: "use ssidSize: auto (the smallest PASID width of its devices) or at most \(hd.effectivePASIDWidth(behind: iommu))")
                ok = false
            }
        }
        return ok
    }

    /// Guest RAM against the host's page size: IOVA alignment and the smallest mapping
    /// follow PAGE_SIZE (io_pagetable.c), 64 KiB on many Grace kernels.
    mutating func pageSizeRules(_ guest: Guest, host: HostDescription) {
        let page = host.kernel.effectivePageSize
        guard page > Validator.pageSize else { return }   // 4 KiB: memoryRules said it
        for r in guest.memory where r.size > 0 {
            if r.size % page != 0 {
                bag.error("memory region '\(r.name)' size \(YAMLText.size(r.size)) is not a multiple of the \(YAMLText.size(page)) page size of host '\(host.name)' (kernel.pageSize)",
                          at: r.fieldMarks["size"] ?? r.mark)
            }
            if r.guestAddress % page != 0 {
                bag.error("memory region '\(r.name)' guestAddress \(YAMLText.hex(r.guestAddress)) is not aligned to the \(YAMLText.size(page)) page size of host '\(host.name)' (kernel.pageSize)",
                          at: r.fieldMarks["guestAddress"] ?? r.mark)
            }
        }
    }

    // MARK: IOMMU groups

    mutating func groupRules(_ host: HostDescription) {
        struct Use { var guest: String; var device: Device; var attachment: String }
        var declared: [PCIAddress: Use] = [:]
        for g in topology.guests {
            for s in g.vsmmus { for d in s.devices { if let a = d.host.pciAddress { declared[a] = Use(guest: g.name, device: d, attachment: "vSMMU '\(s.name)'") } } }
            for d in g.devices { if let a = d.host.pciAddress { declared[a] = Use(guest: g.name, device: d, attachment: "the stage-2 (devices:)") } }
        }
        var reported = Set<Int>()
        for g in topology.guests {
            for d in g.allDevices {
                guard let a = d.host.pciAddress, let hd = index!.devices[a], let group = hd.iommuGroup else { continue }
                let siblings = (index!.groups[group] ?? []).filter { $0.address != a }
                for sib in siblings {
                    if let use = declared[sib.address] {
                        let mine = declared[a]!
                        if use.guest != mine.guest, !reported.contains(group) {
                            bag.error("IOMMU group \(group) is split between guests: \(a) goes to '\(mine.guest)' and \(sib.address) to '\(use.guest)'", at: d.hostMark,
                                      hint: "all devices of an IOMMU group go to one guest")
                            reported.insert(group)
                        } else if use.guest == mine.guest, use.attachment != mine.attachment, !reported.contains(group) {
                            bag.error("IOMMU group \(group) devices \(a) and \(sib.address) are attached differently (\(mine.attachment) and \(use.attachment)); a group shares one attachment", at: d.hostMark,
                                      hint: "put every device of the group under the same vSMMU")
                            reported.insert(group)
                        }
                        continue
                    }
                    if let drv = sib.driver, !Validator.dmaSafeDrivers.contains(drv) {
                        bag.error("IOMMU group \(group) of \(a) is not viable: \(sib.address) is in the same group, bound to host driver \(drv), and not in the topology", at: d.hostMark,
                                  hint: "add \(sib.address) to this guest too, or unbind it from \(drv)")
                    }
                }
            }
        }
    }
}
