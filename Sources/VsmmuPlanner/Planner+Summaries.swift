import VsmmuKernel
import VsmmuModel

/// The words of a plan: resource summaries and the guest layout it predicts.
extension Planner {
    func attachedText(_ id: ObjectID?, _ h: GuestHolding) -> String {
        guard let id else { return "nothing" }
        if let s = h.stage2.first(where: { $0.value.hwpt == id }) { return "stage2 \(s.key)" }
        for (v, vh) in h.vsmmus {
            if vh.bypassHWPT == id { return "\(v).bypass" }
            if vh.abortHWPT == id { return "\(v).abort" }
        }
        return "HWPT \(id)"
    }

    func deviceSummary(_ d: DesiredDevice) -> String {
        var s = d.source.description
        if case .pci(let a) = d.source {
            let drv = observed.sysfs[a]?.driver
            if drv == d.vfioDriver { s += " (\(drv ?? ""))" } else { s += " (\(drv ?? "no driver") → \(d.vfioDriver))" }
        }
        s += ", guest \(d.guestAddress)"
        if let v = d.vsid { s += ", vSID 0x\(String(v, radix: 16)) on \(d.vsmmu ?? "")" } else { s += ", stage-2 only" }
        return s
    }

    func memorySummary(_ m: MemoryRegion) -> String {
        "\(YAMLText.size(m.size)) \(m.backing.rawValue)\(m.hugepageSize.map { " (\(YAMLText.size($0)) pages)" } ?? "") at \(YAMLText.hex(m.guestAddress))"
    }

    func vsmmuSummary(_ v: DesiredVSMMU) -> String {
        let r = v.resolved
        func onOff(_ b: Bool) -> String { b ? "on" : "off" }
        return "\(v.flavor.typeName) vIOMMU on \(r.physical), bus \(Allocator.hex2(v.busNumber)), id \(v.identifier); ats \(onOff(r.ats)), ril \(onOff(r.ril)), ssidSize \(r.ssidSize), oas \(r.oas)"
    }

    public static func layout(_ d: DesiredState) -> [GuestLayout] {
        d.guests.map { g in
            GuestLayout(
                guest: g.name,
                vsmmus: g.vsmmus.map { v in
                    GuestLayout.VSMMULayout(name: v.name, physical: v.resolved.physical, busNumber: v.busNumber, identifier: v.identifier,
                                            viommuType: v.flavor.typeName, ats: v.resolved.ats, ril: v.resolved.ril,
                                            ssidSize: v.resolved.ssidSize, oas: v.resolved.oas, cmdqv: v.resolved.cmdqv)
                },
                devices: g.devices.map { d in
                    GuestLayout.DeviceLayout(name: d.name, host: d.source.description, vsmmu: d.vsmmu, slot: d.slot, guestAddress: d.guestAddress, vsid: d.vsid)
                },
                memory: g.memory.map { m in
                    GuestLayout.MemoryLayout(name: m.name, guestAddress: m.guestAddress, size: m.size, backing: m.backing.rawValue)
                },
                lockedMemory: g.memory.reduce(UInt64(0)) { $0 &+ $1.size })
        }
    }
}
