import VsmmuKernel
import VsmmuModel

/// vSMMUs: held ones kept, rebuilt or removed; new (or rebuilt) ones built in docs/contract.md §5
/// step 7 order: check, vIOMMU, vDevices before any nested attach, abort and bypass
/// HWPTs, vEVENTQs, then the devices onto bypass.
extension Planner {
    func heldVSMMUVerdict(_ want: DesiredVSMMU?, _ v: VSMMUHolding) -> Verdict {
        guard let want else { return .destroy }
        if want.resolved.physical != v.physical { return .replace(forcedBy: "physical (\(v.physical) → \(want.resolved.physical))") }
        if want.flavor.viommuType != v.viommuType {
            return .replace(forcedBy: "cmdqv (vIOMMU type \(v.viommuType.name) → \(want.flavor.viommuType.name))")
        }
        return .keep
    }

    /// Removed and rebuilt vSMMUs go first: devices and stage 2 depend on knowing them.
    mutating func vsmmuTeardowns(_ s: inout GuestScope) {
        let desiredVSMMUs = Dictionary(uniqueKeysWithValues: s.g.vsmmus.map { ($0.name, $0) })
        for (vname, v) in s.h.vsmmus.sorted(by: { $0.key < $1.key }) {
            let want = desiredVSMMUs[vname]
            let verdict = heldVSMMUVerdict(want, v)
            note(verdict, "vsmmu", s.key(vname), want.map(self.vsmmuSummary) ?? "vIOMMU on \(v.physical) and its nested HWPTs, vDevices, vEVENTQs")
            if case .keep = verdict { continue }
            s.rebuiltVSMMUs.insert(vname)
            teardownVSMMU(s.name, vname, v)
        }
    }

    mutating func vsmmuBuilds(_ s: inout GuestScope) {
        for v in s.g.vsmmus {
            let heldV = s.rebuiltVSMMUs.contains(v.name) ? nil : s.h.vsmmus[v.name]
            if heldV == nil {
                if !s.rebuiltVSMMUs.contains(v.name) { note(.create, "vsmmu", s.key(v.name), self.vsmmuSummary(v)) }
                allocVIOMMU(s, v)
            }
            for dname in v.devices {
                let d = s.desiredDevices[dname]!
                let hv = heldV?.vdevices[dname]
                if hv == nil || s.newDevices.contains(dname) || hv?.virtID != d.vsid {
                    add(.buildVSMMUs, "device \(s.key(dname))", .allocVDevice(guest: s.name, vsmmu: v.name, device: dname, virtID: d.vsid ?? 0),
                        needs: [.viommu(vsmmu: s.key(v.name)), .bound(device: s.key(dname)), .vdevicesGone(vsmmu: s.key(v.name))], gives: [.vdevice(device: s.key(dname))])
                    s.needNestedAttach.insert(dname)
                }
            }
            nestedAndEventQueues(&s, v, held: heldV)
            for dname in v.devices where s.needNestedAttach.contains(dname) {
                add(.attachNested, "device \(s.key(dname))", .attach(guest: s.name, device: dname, target: .nested(vsmmu: v.name, kind: .bypass)),
                    needs: [.bypass(vsmmu: s.key(v.name)), .vdevice(device: s.key(dname)), .bound(device: s.key(dname))])
            }
        }
    }

    mutating func allocVIOMMU(_ s: GuestScope, _ v: DesiredVSMMU) {
        let r = "vsmmu \(s.key(v.name))"
        add(.buildVSMMUs, r, .checkHwInfo(guest: s.name, vsmmu: v.name, viaDevice: v.viaDevice, expectType: v.flavor.hwInfoType),
            needs: [.bound(device: s.key(v.viaDevice))])
        add(.buildVSMMUs, r, .allocVIOMMU(guest: s.name, vsmmu: v.name, physical: v.resolved.physical, type: v.flavor.viommuType, viaDevice: v.viaDevice),
            needs: [.stage2(s.key(v.resolved.physical)), .bound(device: s.key(v.viaDevice)), .viommuGone(vsmmu: s.key(v.name))],
            gives: [.viommu(vsmmu: s.key(v.name))])
    }

    /// The abort HWPT is for the VMM (a guest STE that aborts); no step of the plan uses it.
    mutating func nestedAndEventQueues(_ s: inout GuestScope, _ v: DesiredVSMMU, held heldV: VSMMUHolding?) {
        let r = "vsmmu \(s.key(v.name))", viommu = Dep.viommu(vsmmu: s.key(v.name))
        if heldV?.abortHWPT == nil {
            add(.buildVSMMUs, r, .allocNested(guest: s.name, vsmmu: v.name, kind: .abort, viaDevice: v.viaDevice, dataType: v.flavor.nestedDataType),
                needs: [viommu])
        }
        if heldV?.bypassHWPT == nil {
            add(.buildVSMMUs, r, .allocNested(guest: s.name, vsmmu: v.name, kind: .bypass, viaDevice: v.viaDevice, dataType: v.flavor.nestedDataType),
                needs: [viommu], gives: [.bypass(vsmmu: s.key(v.name))])
            s.needNestedAttach.formUnion(v.devices)
        }
        for t in v.flavor.eventQueueTypes where heldV?.eventQueues[t] == nil {
            add(.buildVSMMUs, r, .allocEventQueue(guest: s.name, vsmmu: v.name, type: t, depth: eventQueueDepth), needs: [viommu])
        }
    }
}
