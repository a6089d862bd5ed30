import VsmmuKernel
import VsmmuModel

/// Devices: held ones kept, finished, replaced or removed; new ones moved to vfio-pci,
/// opened and bound; then every device attached where the topology puts it.
extension Planner {
    mutating func deviceDiff(_ s: inout GuestScope, wanted: Set<PCIAddress>) {
        for (dname, d) in s.h.devices.sorted(by: { $0.key < $1.key }) { heldDevice(&s, dname, d, wanted: wanted) }
        for d in s.g.devices where s.h.devices[d.name] == nil {
            s.newDevices.insert(d.name)
            note(.create, "device", s.key(d.name), self.deviceSummary(d))
        }
        for d in s.g.devices { bindDevice(s, d) }
        for d in s.g.devices { attachDevice(&s, d) }
    }

    func heldDeviceVerdict(_ s: GuestScope, _ dname: String, _ d: DeviceHolding) -> Verdict {
        guard let want = s.desiredDevices[dname] else { return .destroy }
        if want.source != d.source { return .replace(.change("host", d.source.description, want.source.description)) }
        if let was = s.heldVSMMUOf[dname], was != want.vsmmu { return .replace(.change("vsmmu", was, want.vsmmu ?? "none")) }
        if observed.lostDevices.contains(s.key(dname)) {
            let now = d.source.pciAddress.flatMap { observed.sysfs[$0]?.driver } ?? "none"
            return .replace(Replacement(attribute: "driver", from: "vfio-pci", to: now, reason: "binding-lost", text: "driver (changed to \(now) outside vsmmu: binding lost)"))
        }
        // An earlier apply opened the cdev but stopped before BIND: finish it.
        if d.devID == 0, d.cdev != nil { return .update([AttributeChange(name: "bound", from: "no", to: "yes")]) }
        return .keep
    }

    mutating func heldDevice(_ s: inout GuestScope, _ dname: String, _ d: DeviceHolding, wanted: Set<PCIAddress>) {
        let verdict = heldDeviceVerdict(s, dname, d)
        let want = s.desiredDevices[dname]
        let address = d.source.pciAddress
        switch verdict {
        case .keep, .create:
            return
        case .update:
            note(verdict, "device", s.key(dname), self.deviceSummary(want!))
            s.newDevices.insert(dname)
            s.openCdevs.insert(dname)
        case .destroy:
            releaseHeldDevice(s, dname, d)
            let back = address.map { wanted.contains($0) ? "" : " back to \(originalDriverText($0))" } ?? ""
            note(verdict, "device", s.key(dname), "\(d.source)\(back)")
            if let a = address, !wanted.contains(a) { giveBack(a, resource: "device \(s.key(dname))") }
        case .replace:
            note(verdict, "device", s.key(dname), self.deviceSummary(want!))
            releaseHeldDevice(s, dname, d)
            if let a = address, a.description != want!.source.description, !wanted.contains(a) { giveBack(a, resource: "device \(s.key(dname))") }
            s.newDevices.insert(dname)
        }
    }

    /// Off its HWPT, its vDevice destroyed (unless its vSMMU goes anyway), its cdev closed;
    /// a binding the kernel already undid is only forgotten.
    mutating func releaseHeldDevice(_ s: GuestScope, _ dname: String, _ d: DeviceHolding) {
        let key = s.key(dname)
        guard !observed.lostDevices.contains(key) else {
            add(.closeDevices, "device \(key)", .forgetDevice(guest: s.name, device: dname))
            return
        }
        if d.attached != nil { add(.relatch, "device \(key)", .detach(guest: s.name, device: dname), gives: [.detached(device: key)]) }
        var needs: [Dep] = [.detached(device: key)]
        if let v = s.heldVSMMUOf[dname] {
            needs.append(.vdevicesGone(vsmmu: s.key(v)))
            if !s.rebuiltVSMMUs.contains(v) {
                add(.destroyVDevices, "device \(key)", .destroyVDevice(guest: s.name, vsmmu: v, device: dname),
                    needs: [.detached(device: key)], gives: [.vdevicesGone(vsmmu: s.key(v))])
            }
        }
        add(closePhase(d), "device \(key)", .closeDevice(guest: s.name, device: dname), needs: needs, gives: closed(d))
    }

    /// New devices: to vfio-pci, cdev opened, bound (mock devices made); held ones get their owner.
    mutating func bindDevice(_ s: GuestScope, _ d: DesiredDevice) {
        let key = s.key(d.name), name = s.name
        guard s.newDevices.contains(d.name) else {
            if let o = s.g.owner, let held = s.h.devices[d.name], let idx = held.vfioIndex, observed.owners[idx] != o.uid {
                add(.updateOwners, "device \(key)", .chownDevice(guest: name, device: d.name, uid: o.uid, gid: o.gid))
                note(.update([AttributeChange(name: "owner", from: observed.owners[idx].map { "uid \($0)" }, to: "\(o.name) (uid \(o.uid))")]),
                     "device", key, self.deviceSummary(d))
            }
            return
        }
        switch d.source {
        case .pci(let a):
            moveToVFIO(a, driver: d.vfioDriver, resource: "device \(key)")
            if !s.openCdevs.contains(d.name) {
                add(.bindDevices, "device \(key)", .openDevice(guest: name, device: d.name, address: a), needs: [.onVFIO(a), .cdevClosed(a)], gives: [.cdevOpen(device: key)])
            }
            add(.bindDevices, "device \(key)", .bindDevice(guest: name, device: d.name), needs: [.cdevOpen(device: key), .iommufd(guest: name)], gives: [.bound(device: key)])
            if let o = s.g.owner {
                add(.bindDevices, "device \(key)", .chownDevice(guest: name, device: d.name, uid: o.uid, gid: o.gid), needs: [.cdevOpen(device: key)])
            }
        case .selftest(let n):
            add(.bindDevices, "device \(key)", .mockDevice(guest: name, device: d.name, source: "selftest:\(n)"), needs: [.ioas(guest: name)], gives: [.bound(device: key)])
        }
    }

    /// Attach to stage 2: new devices (docs/contract.md §5 step 5), devices whose vSMMU or vDevice is
    /// rebuilt (the vSID is latched at attach), and direct devices elsewhere; devices to
    /// (re-)attach to their vSMMU's bypass HWPT are noted for `vsmmuBuilds`.
    mutating func attachDevice(_ s: inout GuestScope, _ d: DesiredDevice) {
        let key = s.key(d.name)
        let s2 = s.h.stage2[d.iommu]?.hwpt
        let toStage2 = OpAction.attach(guest: s.name, device: d.name, target: .stage2(iommu: d.iommu))
        guard !s.newDevices.contains(d.name), let held = s.h.devices[d.name] else {
            add(.attachStage2, "device \(key)", toStage2, needs: [.bound(device: key), .stage2(s.key(d.iommu))], gives: [.onStage2(device: key)])
            if d.vsmmu != nil { s.needNestedAttach.insert(d.name) }
            return
        }
        guard let v = d.vsmmu else {
            if held.attached != s2 || s2 == nil {
                note(.update([AttributeChange(name: "attached", from: attachedText(held.attached, s.h), to: "stage2 \(d.iommu)")]), "device", key, self.deviceSummary(d))
                add(.attachStage2, "device \(key)", toStage2, needs: [.stage2(s.key(d.iommu))])
            }
            return
        }
        let heldVD = s.h.vsmmus[v]?.vdevices[d.name]
        let vsidChanged = heldVD.map { $0.virtID != d.vsid } ?? false
        let vsmmuRebuilt = s.rebuiltVSMMUs.contains(v) || s.h.vsmmus[v] == nil
        let bypass = s.h.vsmmus[v]?.bypassHWPT
        if vsmmuRebuilt || vsidChanged || s.heldVSMMUOf[d.name] != v {
            if held.attached.map(s.nestedHWPTs.contains) ?? false {
                // Off the nested HWPT that goes away (or must be left to re-latch the vSID).
                add(.relatch, "device \(key)", toStage2, gives: [.offNested(vsmmu: s.key(v)), .detached(device: key)])
            } else if held.attached != s2 || s2 == nil {
                add(.attachStage2, "device \(key)", toStage2, needs: [.stage2(s.key(d.iommu))], gives: [.onStage2(device: key)])
            }
            if vsidChanged, !vsmmuRebuilt, let vd = heldVD {
                note(.update([AttributeChange(name: "vSID", from: "0x" + String(vd.virtID, radix: 16), to: "0x" + String(d.vsid ?? 0, radix: 16))]),
                     "device", key, self.deviceSummary(d))
                add(.destroyVDevices, "device \(key)", .destroyVDevice(guest: s.name, vsmmu: v, device: d.name),
                    needs: [.offNested(vsmmu: s.key(v))], gives: [.vdevicesGone(vsmmu: s.key(v))])
            }
            s.needNestedAttach.insert(d.name)
        } else if held.attached != bypass || bypass == nil {
            note(.update([AttributeChange(name: "attached", from: attachedText(held.attached, s.h), to: "\(v).bypass")]), "device", key, self.deviceSummary(d))
            s.needNestedAttach.insert(d.name)
        }
    }
}
