import VsmmuKernel
import VsmmuModel

/// Diffs the desired graph against what the kernel holds and orders the operations:
/// teardown in reverse dependency order first, then creation in SPEC §5 order.
public struct Planner {
    /// Buckets in execution order. Teardown mirrors creation (reference §0 T1–T11).
    enum Phase: Int, CaseIterable {
        case dropContexts, relatch, destroyNested, destroyVDevices, destroyEventQueues, destroyVIOMMUs,
             unmapMemory, releaseMemory, destroyStage2, destroyIOAS, closeDevices, closeContexts, giveBack,
             openContexts, allocIOAS, moveToVFIO, bindDevices, allocStage2, attachStage2, mapMemory,
             buildVSMMUs, attachNested, updateOwners
    }

    struct Pending {
        var resource: String
        var action: OpAction
        var needs: [String]
        var gives: [String]
    }

    let desired: DesiredState
    let observed: ObservedState
    var phases: [[Pending]] = Array(repeating: [], count: Phase.allCases.count)
    var changes: [ResourceChange] = []

    public static func plan(desired: DesiredState, observed: ObservedState, topologyFile: String, hostName: String, simulated: Bool) -> Plan {
        var p = Planner(desired: desired, observed: observed)
        p.diff()
        let ops = p.order()
        return Plan(topology: desired.topologyName, topologyFile: topologyFile, host: hostName, simulated: simulated,
                    fingerprint: observed.fingerprint, changes: p.changes, operations: ops,
                    allocations: desired.allocations, layout: Planner.layout(desired))
    }

    mutating func add(_ phase: Phase, _ resource: String, _ action: OpAction, needs: [String] = [], gives: [String] = []) {
        phases[phase.rawValue].append(Pending(resource: resource, action: action, needs: needs, gives: gives))
    }

    /// Flattens the phases and turns symbol needs into op dependencies.
    func order() -> [PlanStep] {
        var ops: [PlanStep] = []
        var producer: [String: Int] = [:]
        for bucket in phases {
            for p in bucket {
                let index = ops.count + 1
                var deps = Set<Int>()
                for n in p.needs { if let i = producer[n] { deps.insert(i) } }
                ops.append(PlanStep(index: index, resource: p.resource, action: p.action, dependsOn: deps.sorted()))
                for g in p.gives { producer[g] = index }
            }
        }
        return ops
    }

    // MARK: - the diff

    mutating func diff() {
        let heldNames = Set(observed.holdings.guests.keys)
        let desiredNames = Set(desired.guests.map(\.name))
        // Addresses some desired guest uses: never given back to their host driver.
        var wanted = Set<PCIAddress>()
        for g in desired.guests { for d in g.devices { if let a = d.source.pciAddress { wanted.insert(a) } } }

        for name in heldNames.subtracting(desiredNames).sorted() {
            let h = observed.holdings.guests[name]!
            changes.append(ResourceChange(action: .destroy, type: "guest", name: name, summary: "iommufd context, IOAS and every object in it", attributes: []))
            if observed.deadGuests.contains(name) {
                add(.dropContexts, "guest \(name)", .forgetGuest(guest: name))
            } else if h.uncertain {
                add(.dropContexts, "guest \(name)", .closeGuest(guest: name))
            } else {
                teardownGuest(name, h)
            }
            for (dname, d) in h.devices.sorted(by: { $0.key < $1.key }) where d.cdev != nil {
                if let a = PCIAddress(d.source), !wanted.contains(a) {
                    changes.append(ResourceChange(action: .destroy, type: "device", name: "\(name)/\(dname)",
                                                  summary: "\(a) back to \(originalDriverText(a))", attributes: []))
                    giveBack(a, resource: "device \(name)/\(dname)")
                }
            }
        }
        // Devices vsmmu moved that no guest holds or wants any more (a removed guest's
        // record was lost, or an interrupted apply): give them back too.
        var held = Set<PCIAddress>()
        for g in observed.holdings.guests.values { for d in g.devices.values { if let a = PCIAddress(d.source) { held.insert(a) } } }
        for a in (observed.holdings.unknownOriginalDrivers ?? []).sorted() where !wanted.contains(a) && !held.contains(a) {
            add(.giveBack, "device \(a)", .forgetOriginalDriver(address: a))
        }
        for (a, _) in observed.holdings.originalDrivers.sorted(by: { $0.key < $1.key }) where !wanted.contains(a) && !held.contains(a) {
            let s = observed.sysfs[a]
            let original = observed.holdings.originalDrivers[a] ?? nil
            if original == "vfio-pci" {
                add(.giveBack, "device \(a)", .forgetOriginalDriver(address: a))
                continue
            }
            if s?.driver == original && s?.driverOverride == nil { continue }
            changes.append(ResourceChange(action: .destroy, type: "device", name: a.description, summary: "back to \(originalDriverText(a))", attributes: []))
            giveBack(a, resource: "device \(a)")
        }

        for g in desired.guests {
            var h = observed.holdings.guests[g.name]
            if let held = h {
                var reason: String?
                if observed.deadGuests.contains(g.name) { reason = "context lost: the process that held its iommufd fd exited" }
                else if held.uncertain { reason = "an interrupted apply left its iommufd context uncertain" }
                else if g.stage2.contains(where: { s in held.stage2[s.iommu].map { $0.nestParent != s.nestParent } ?? false }) {
                    reason = "a stage-2 HWPT changes its nest-parent flag"
                }
                if let reason {
                    changes.append(ResourceChange(action: .replace, type: "guest", name: g.name, summary: "iommufd context, IOAS", attributes: [], forcedBy: reason))
                    add(.dropContexts, "guest \(g.name)", observed.deadGuests.contains(g.name) ? .forgetGuest(guest: g.name) : .closeGuest(guest: g.name))
                    h = nil
                }
            } else {
                changes.append(ResourceChange(action: .create, type: "guest", name: g.name, summary: "iommufd context, IOAS", attributes: []))
            }
            guestDiff(g, held: h, wanted: wanted)
        }
    }

    /// A VFIO device closes after its IOAS is gone (reference §0 T9). A mock device
    /// cannot be detached, only destroyed, and it holds its HWPT: it goes before the
    /// stage-2 HWPTs.
    func closePhase(_ d: DeviceHolding) -> Phase { d.mockStdev != nil ? .unmapMemory : .closeDevices }

    func originalDriverText(_ a: PCIAddress) -> String {
        if observed.holdings.originalUnknown(a) { return "its original driver, which is unknown (its record was lost): it stays on vfio-pci; bind it by hand" }
        guard let o = observed.holdings.originalDrivers[a] else { return "its original driver" }
        return o ?? "no driver"
    }

    /// The way back to the original driver (reference §8), as far as sysfs shows it is needed.
    mutating func giveBack(_ a: PCIAddress, resource: String) {
        let s = observed.sysfs[a]
        let original = observed.holdings.originalDrivers[a] ?? nil
        if original == "vfio-pci" || observed.holdings.originalUnknown(a) {
            add(.giveBack, resource, .forgetOriginalDriver(address: a), needs: ["closed:\(a)"])
            return
        }
        if let drv = s?.driver, drv != original {
            add(.giveBack, resource, .unbindDriver(address: a, driver: drv), needs: ["closed:\(a)"], gives: ["unbound:\(a)"])
        }
        if s?.driverOverride != nil {
            add(.giveBack, resource, .setDriverOverride(address: a, driver: nil), needs: ["unbound:\(a)"], gives: ["override:\(a)"])
        }
        if s?.driver != original || original == nil {
            add(.giveBack, resource, .probeDriver(address: a, expect: original), needs: ["override:\(a)", "unbound:\(a)"], gives: ["back:\(a)"])
        }
    }

    /// Everything of a live guest, in reverse order.
    mutating func teardownGuest(_ name: String, _ h: GuestHolding) {
        for (dname, d) in h.devices.sorted(by: { $0.key < $1.key }) {
            if d.attached != nil { add(.relatch, "device \(name)/\(dname)", .detach(guest: name, device: dname), gives: ["detached:\(name)/\(dname)"]) }
        }
        for (vname, v) in h.vsmmus.sorted(by: { $0.key < $1.key }) { teardownVSMMU(name, vname, v) }
        for (r, m) in h.memory.sorted(by: { $0.key < $1.key }) { teardownMemory(name, r, m) }
        for (i, _) in h.stage2.sorted(by: { $0.key < $1.key }) {
            add(.destroyStage2, "stage2 \(name)/\(i)", .destroyStage2(guest: name, iommu: i), needs: h.devices.keys.map { "detached:\(name)/\($0)" } + h.vsmmus.keys.map { "gone:\(name)/\($0)" }, gives: ["gone-s2:\(name)/\(i)"])
        }
        if h.ioas != nil {
            add(.destroyIOAS, "guest \(name)", .destroyIOAS(guest: name), needs: h.stage2.keys.map { "gone-s2:\(name)/\($0)" } + h.memory.keys.map { "unmapped:\(name)/\($0)" }, gives: ["gone-ioas:\(name)"])
        }
        for (dname, d) in h.devices.sorted(by: { $0.key < $1.key }) {
            add(closePhase(d), "device \(name)/\(dname)", .closeDevice(guest: name, device: dname), needs: ["detached:\(name)/\(dname)", "gone-ioas:\(name)"], gives: PCIAddress(d.source).map { ["closed:\($0)"] } ?? [])
        }
        add(.closeContexts, "guest \(name)", .closeIommufd(guest: name), needs: ["gone-ioas:\(name)"])
    }

    mutating func teardownVSMMU(_ g: String, _ v: String, _ h: VSMMUHolding) {
        let r = "vsmmu \(g)/\(v)"
        if h.abortHWPT != nil { add(.destroyNested, r, .destroyNested(guest: g, vsmmu: v, kind: .abort), needs: ["relatched:\(g)/\(v)"], gives: ["nested:\(g)/\(v)"]) }
        if h.bypassHWPT != nil { add(.destroyNested, r, .destroyNested(guest: g, vsmmu: v, kind: .bypass), needs: ["relatched:\(g)/\(v)"], gives: ["nested:\(g)/\(v)"]) }
        for (d, _) in h.vdevices.sorted(by: { $0.key < $1.key }) {
            add(.destroyVDevices, "device \(g)/\(d)", .destroyVDevice(guest: g, vsmmu: v, device: d), gives: ["vdev-gone:\(g)/\(v)"])
        }
        for (t, _) in h.eventQueues.sorted(by: { $0.key < $1.key }) {
            add(.destroyEventQueues, r, .destroyEventQueue(guest: g, vsmmu: v, type: t), gives: ["evq-gone:\(g)/\(v)"])
        }
        add(.destroyVIOMMUs, r, .destroyVIOMMU(guest: g, vsmmu: v), needs: ["nested:\(g)/\(v)", "vdev-gone:\(g)/\(v)", "evq-gone:\(g)/\(v)"], gives: ["gone:\(g)/\(v)"])
    }

    mutating func teardownMemory(_ g: String, _ r: String, _ m: MemoryHolding) {
        if m.mapped { add(.unmapMemory, "memory \(g)/\(r)", .unmapMemory(guest: g, region: r), gives: ["unmapped:\(g)/\(r)"]) }
        add(.releaseMemory, "memory \(g)/\(r)", .releaseMemory(guest: g, region: r), needs: ["unmapped:\(g)/\(r)"])
    }

    // MARK: one desired guest against what is held of it (nil: nothing usable)

    mutating func guestDiff(_ g: DesiredGuest, held: GuestHolding?, wanted: Set<PCIAddress>) {
        let name = g.name
        let h = held ?? GuestHolding(iommufd: IommufdHandle(fd: -1))
        if held == nil {
            add(.openContexts, "guest \(name)", .openIommufd(guest: name), gives: ["\(name).iommufd"])
            add(.allocIOAS, "guest \(name)", .ioasAlloc(guest: name), needs: ["\(name).iommufd"], gives: ["\(name).ioas"])
        } else if h.ioas == nil {
            // An earlier apply stopped between opening the context and allocating its IOAS.
            changes.append(ResourceChange(action: .update, type: "guest", name: name, summary: "iommufd context, IOAS",
                                          attributes: [AttributeChange(name: "ioas", from: nil, to: "allocated")]))
            add(.allocIOAS, "guest \(name)", .ioasAlloc(guest: name), gives: ["\(name).ioas"])
        }
        let desiredDevices = Dictionary(uniqueKeysWithValues: g.devices.map { ($0.name, $0) })
        // Which held vSMMU has each device's vDevice, and the nested HWPTs: looked up per device below.
        var heldVSMMUOf: [String: String] = [:]
        for (v, vh) in h.vsmmus { for d in vh.vdevices.keys { heldVSMMUOf[d] = v } }
        let nestedHWPTs = Set(h.vsmmus.values.flatMap { [$0.abortHWPT, $0.bypassHWPT].compactMap { $0 } })
        let desiredVSMMUs = Dictionary(uniqueKeysWithValues: g.vsmmus.map { ($0.name, $0) })

        // vSMMUs that go away or are rebuilt.
        var rebuiltVSMMUs = Set<String>()
        for (vname, v) in h.vsmmus.sorted(by: { $0.key < $1.key }) {
            if let want = desiredVSMMUs[vname] {
                var forced: String?
                if want.resolved.physical != v.physical { forced = "physical (\(v.physical) → \(want.resolved.physical))" }
                else if want.flavor.viommuType != v.viommuType { forced = "cmdqv (vIOMMU type \(viommuTypeName(v.viommuType)) → \(viommuTypeName(want.flavor.viommuType)))" }
                if let forced {
                    rebuiltVSMMUs.insert(vname)
                    changes.append(ResourceChange(action: .replace, type: "vsmmu", name: "\(name)/\(vname)", summary: vsmmuSummary(want), attributes: [], forcedBy: forced))
                    teardownVSMMU(name, vname, v)
                }
            } else {
                changes.append(ResourceChange(action: .destroy, type: "vsmmu", name: "\(name)/\(vname)", summary: "vIOMMU on \(v.physical) and its nested HWPTs, vDevices, vEVENTQs", attributes: []))
                teardownVSMMU(name, vname, v)
                rebuiltVSMMUs.insert(vname)
            }
        }

        // Devices.
        var newDevices = Set<String>()      // need bind (and everything after)
        var openCdevs = Set<String>()       // ...of which these already have their cdev open
        for (dname, d) in h.devices.sorted(by: { $0.key < $1.key }) {
            let key = "\(name)/\(dname)"
            let lost = observed.lostDevices.contains(key)
            let vsmmuOfHeld = heldVSMMUOf[dname]
            guard let want = desiredDevices[dname] else {
                // removed from the guest
                if !lost {
                    if d.attached != nil { add(.relatch, "device \(key)", .detach(guest: name, device: dname), gives: ["detached:\(key)"]) }
                    if let v = vsmmuOfHeld, !rebuiltVSMMUs.contains(v) {
                        add(.destroyVDevices, "device \(key)", .destroyVDevice(guest: name, vsmmu: v, device: dname), needs: ["detached:\(key)"], gives: ["vdev-gone:\(name)/\(v)"])
                    }
                    add(closePhase(d), "device \(key)", .closeDevice(guest: name, device: dname), needs: ["detached:\(key)", "vdev-gone:\(name)/\(vsmmuOfHeld ?? "")"],
                        gives: PCIAddress(d.source).map { ["closed:\($0)"] } ?? [])
                } else {
                    add(.closeDevices, "device \(key)", .forgetDevice(guest: name, device: dname))
                }
                let back = PCIAddress(d.source).map { wanted.contains($0) ? "" : " back to \(originalDriverText($0))" } ?? ""
                changes.append(ResourceChange(action: .destroy, type: "device", name: key, summary: "\(d.source)\(back)", attributes: []))
                if let a = PCIAddress(d.source), !wanted.contains(a) { giveBack(a, resource: "device \(key)") }
                continue
            }
            var forced: String?
            if want.source.description != d.source { forced = "host (\(d.source) → \(want.source))" }
            else if let was = vsmmuOfHeld, was != want.vsmmu {
                forced = "vsmmu (\(was) → \(want.vsmmu ?? "none"))"
            } else if lost {
                let now = PCIAddress(d.source).flatMap { observed.sysfs[$0]?.driver } ?? "none"
                forced = "driver (changed to \(now) outside vsmmu: binding lost)"
            }
            if forced == nil, d.devID == 0, d.cdev != nil {
                // An earlier apply opened the cdev but stopped before BIND: finish it.
                changes.append(ResourceChange(action: .update, type: "device", name: key, summary: deviceSummary(want),
                                              attributes: [AttributeChange(name: "bound", from: "no", to: "yes")]))
                newDevices.insert(dname)
                openCdevs.insert(dname)
                continue
            }
            if let forced {
                changes.append(ResourceChange(action: .replace, type: "device", name: key, summary: deviceSummary(want), attributes: [], forcedBy: forced))
                if lost {
                    add(.closeDevices, "device \(key)", .forgetDevice(guest: name, device: dname))
                } else {
                    if d.attached != nil { add(.relatch, "device \(key)", .detach(guest: name, device: dname), gives: ["detached:\(key)"]) }
                    if let v = vsmmuOfHeld, !rebuiltVSMMUs.contains(v) {
                        add(.destroyVDevices, "device \(key)", .destroyVDevice(guest: name, vsmmu: v, device: dname), needs: ["detached:\(key)"], gives: ["vdev-gone:\(name)/\(v)"])
                    }
                    add(closePhase(d), "device \(key)", .closeDevice(guest: name, device: dname), needs: ["detached:\(key)"], gives: PCIAddress(d.source).map { ["closed:\($0)"] } ?? [])
                }
                if let a = PCIAddress(d.source), a.description != want.source.description, !wanted.contains(a) { giveBack(a, resource: "device \(key)") }
                newDevices.insert(dname)
            }
        }
        for d in g.devices where h.devices[d.name] == nil {
            newDevices.insert(d.name)
            changes.append(ResourceChange(action: .create, type: "device", name: "\(name)/\(d.name)", summary: deviceSummary(d), attributes: []))
        }

        // Memory regions.
        var newMemory: [MemoryRegion] = []
        let desiredMemory = Dictionary(uniqueKeysWithValues: g.memory.map { ($0.name, $0) })
        for (r, m) in h.memory.sorted(by: { $0.key < $1.key }) {
            guard let want = desiredMemory[r] else {
                changes.append(ResourceChange(action: .destroy, type: "memory", name: "\(name)/\(r)", summary: "\(YAMLText.size(m.length)) \(m.backing.rawValue) at \(YAMLText.hex(m.iova))", attributes: []))
                teardownMemory(name, r, m)
                continue
            }
            var forced: String?
            if want.guestAddress != m.iova { forced = "guestAddress (\(YAMLText.hex(m.iova)) → \(YAMLText.hex(want.guestAddress)))" }
            else if want.size != m.length { forced = "size (\(YAMLText.size(m.length)) → \(YAMLText.size(want.size)))" }
            else if want.backing != m.backing { forced = "backing (\(m.backing.rawValue) → \(want.backing.rawValue))" }
            else if !m.mapped { forced = "mapping (an earlier apply stopped before mapping it)" }
            if let forced {
                changes.append(ResourceChange(action: .replace, type: "memory", name: "\(name)/\(r)", summary: memorySummary(want), attributes: [], forcedBy: forced))
                teardownMemory(name, r, m)
                newMemory.append(want)
            }
        }
        for m in g.memory where h.memory[m.name] == nil {
            changes.append(ResourceChange(action: .create, type: "memory", name: "\(name)/\(m.name)", summary: memorySummary(m), attributes: []))
            newMemory.append(m)
        }

        // Stage-2 HWPTs: one per physical IOMMU in use.
        let wantS2 = Set(g.stage2.map(\.iommu))
        for (i, _) in h.stage2.sorted(by: { $0.key < $1.key }) where !wantS2.contains(i) {
            changes.append(ResourceChange(action: .destroy, type: "stage2", name: "\(name)/\(i)", summary: "HWPT on \(i)", attributes: []))
            let users = h.devices.filter { _, d in d.attached == h.stage2[i]?.hwpt }.map { "detached:\(name)/\($0.key)" }
            add(.destroyStage2, "stage2 \(name)/\(i)", .destroyStage2(guest: name, iommu: i), needs: users + rebuiltVSMMUs.map { "gone:\(name)/\($0)" })
        }

        // Host-level moves to vfio-pci, then binds.
        for d in g.devices {
            let key = "\(name)/\(d.name)"
            let isNew = newDevices.contains(d.name)
            if case .pci(let a) = d.source, isNew || h.devices[d.name] == nil {
                moveToVFIO(a, resource: "device \(key)")
            }
            if isNew {
                switch d.source {
                case .pci(let a):
                    if !openCdevs.contains(d.name) {
                        add(.bindDevices, "device \(key)", .openDevice(guest: name, device: d.name, address: a), needs: ["vfio:\(a)", "closed:\(a)"], gives: ["cdev:\(key)"])
                    }
                    add(.bindDevices, "device \(key)", .bindDevice(guest: name, device: d.name), needs: ["cdev:\(key)", "\(name).iommufd"], gives: ["dev:\(key)"])
                    if let o = g.owner {
                        add(.bindDevices, "device \(key)", .chownDevice(guest: name, device: d.name, uid: o.uid, gid: o.gid), needs: ["cdev:\(key)"])
                    }
                case .selftest(let n):
                    add(.bindDevices, "device \(key)", .mockDevice(guest: name, device: d.name, source: "selftest:\(n)"), needs: ["\(name).ioas"], gives: ["dev:\(key)"])
                }
            } else if let o = g.owner, let held = h.devices[d.name], let idx = held.vfioIndex, observed.owners[idx] != o.uid {
                add(.updateOwners, "device \(key)", .chownDevice(guest: name, device: d.name, uid: o.uid, gid: o.gid))
                changes.append(ResourceChange(action: .update, type: "device", name: key, summary: deviceSummary(d),
                                              attributes: [AttributeChange(name: "owner", from: observed.owners[idx].map { "uid \($0)" }, to: "\(o.name) (uid \(o.uid))")]))
            }
        }

        var newS2 = Set<String>()
        for s in g.stage2 where h.stage2[s.iommu] == nil {
            newS2.insert(s.iommu)
            changes.append(ResourceChange(action: .create, type: "stage2", name: "\(name)/\(s.iommu)",
                                          summary: s.nestParent ? "nest-parent HWPT (stage 2) on \(s.iommu)" : "paging HWPT on \(s.iommu) (no nesting)", attributes: []))
            // Allocate it with a device being bound now, or one already bound.
            add(.allocStage2, "stage2 \(name)/\(s.iommu)", .allocStage2(guest: name, iommu: s.iommu, viaDevice: s.viaDevice, nestParent: s.nestParent),
                needs: ["\(name).ioas", "dev:\(name)/\(s.viaDevice)"], gives: ["s2:\(name)/\(s.iommu)"])
        }

        // Attach to stage 2: new devices (SPEC §5 step 5), devices whose vSMMU or vDevice
        // is rebuilt (the vSID is latched at attach), and direct devices elsewhere.
        var needNestedAttach = Set<String>()
        for d in g.devices {
            let key = "\(name)/\(d.name)"
            let held = newDevices.contains(d.name) ? nil : h.devices[d.name]
            let s2 = h.stage2[d.iommu]?.hwpt
            let heldVSMMU = held == nil ? nil : heldVSMMUOf[d.name]
            let vsidChanged: Bool = {
                guard let v = d.vsmmu, let hv = h.vsmmus[v], let vd = hv.vdevices[d.name] else { return false }
                return vd.virtID != d.vsid
            }()
            let vsmmuRebuilt = d.vsmmu.map { rebuiltVSMMUs.contains($0) || h.vsmmus[$0] == nil } ?? false
            if held == nil {
                add(.attachStage2, "device \(key)", .attach(guest: name, device: d.name, target: .stage2(iommu: d.iommu)),
                    needs: ["dev:\(key)", "s2:\(name)/\(d.iommu)"], gives: ["s2-attached:\(key)"])
                if d.vsmmu != nil { needNestedAttach.insert(d.name) }
                continue
            }
            guard let held else { continue }
            if let v = d.vsmmu {
                let bypass = h.vsmmus[v]?.bypassHWPT
                if vsmmuRebuilt || vsidChanged || heldVSMMU != v {
                    let onNested = held.attached.map(nestedHWPTs.contains) ?? false
                    if onNested {
                        // Off the nested HWPT that goes away (or must be left to re-latch the vSID).
                        add(.relatch, "device \(key)", .attach(guest: name, device: d.name, target: .stage2(iommu: d.iommu)), gives: ["relatched:\(name)/\(v)", "detached:\(key)"])
                    } else if held.attached != s2 || s2 == nil {
                        add(.attachStage2, "device \(key)", .attach(guest: name, device: d.name, target: .stage2(iommu: d.iommu)),
                            needs: ["s2:\(name)/\(d.iommu)"], gives: ["s2-attached:\(key)"])
                    }
                    if vsidChanged, !vsmmuRebuilt {
                        let vd = h.vsmmus[v]!.vdevices[d.name]!
                        changes.append(ResourceChange(action: .update, type: "device", name: key, summary: deviceSummary(d),
                                                      attributes: [AttributeChange(name: "vSID", from: "0x" + String(vd.virtID, radix: 16), to: "0x" + String(d.vsid ?? 0, radix: 16))]))
                        add(.destroyVDevices, "device \(key)", .destroyVDevice(guest: name, vsmmu: v, device: d.name), needs: ["relatched:\(name)/\(v)"], gives: ["vdev-gone:\(name)/\(v)"])
                    }
                    needNestedAttach.insert(d.name)
                } else if held.attached != bypass || bypass == nil {
                    changes.append(ResourceChange(action: .update, type: "device", name: key, summary: deviceSummary(d),
                                                  attributes: [AttributeChange(name: "attached", from: attachedText(held.attached, h), to: "\(v).bypass")]))
                    needNestedAttach.insert(d.name)
                }
            } else if held.attached != s2 || s2 == nil {
                changes.append(ResourceChange(action: .update, type: "device", name: key, summary: deviceSummary(d),
                                              attributes: [AttributeChange(name: "attached", from: attachedText(held.attached, h), to: "stage2 \(d.iommu)")]))
                add(.attachStage2, "device \(key)", .attach(guest: name, device: d.name, target: .stage2(iommu: d.iommu)), needs: ["s2:\(name)/\(d.iommu)"])
            }
        }

        for m in newMemory {
            add(.mapMemory, "memory \(name)/\(m.name)", .createMemory(guest: name, region: m.name, size: m.size, backing: m.backing, hugepageSize: m.hugepageSize),
                needs: ["released:\(name)/\(m.name)"], gives: ["mem:\(name)/\(m.name)"])
            add(.mapMemory, "memory \(name)/\(m.name)", .mapMemory(guest: name, region: m.name, iova: m.guestAddress, file: m.backing != .anonymous),
                needs: ["mem:\(name)/\(m.name)", "\(name).ioas"] + g.devices.map { "s2-attached:\(name)/\($0.name)" })
        }

        // vSMMUs (SPEC §5 step 7): check, vIOMMU, vDevices before any nested attach,
        // abort and bypass HWPTs, vEVENTQs.
        for v in g.vsmmus {
            let r = "vsmmu \(name)/\(v.name)"
            let heldV = rebuiltVSMMUs.contains(v.name) ? nil : h.vsmmus[v.name]
            if heldV == nil {
                if !rebuiltVSMMUs.contains(v.name) {
                    changes.append(ResourceChange(action: .create, type: "vsmmu", name: "\(name)/\(v.name)", summary: vsmmuSummary(v), attributes: []))
                }
                add(.buildVSMMUs, r, .checkHwInfo(guest: name, vsmmu: v.name, viaDevice: v.viaDevice, expectType: v.flavor.hwInfoType), needs: ["dev:\(name)/\(v.viaDevice)"])
                add(.buildVSMMUs, r, .allocVIOMMU(guest: name, vsmmu: v.name, physical: v.resolved.physical, type: v.flavor.viommuType, viaDevice: v.viaDevice),
                    needs: ["s2:\(name)/\(v.resolved.physical)", "dev:\(name)/\(v.viaDevice)", "gone:\(name)/\(v.name)"], gives: ["viommu:\(name)/\(v.name)"])
            }
            for dname in v.devices {
                let d = desiredDevices[dname]!
                let hv = heldV?.vdevices[dname]
                let devNew = newDevices.contains(dname)
                if hv == nil || devNew || hv?.virtID != d.vsid {
                    add(.buildVSMMUs, "device \(name)/\(dname)", .allocVDevice(guest: name, vsmmu: v.name, device: dname, virtID: d.vsid ?? 0),
                        needs: ["viommu:\(name)/\(v.name)", "dev:\(name)/\(dname)", "vdev-gone:\(name)/\(v.name)"], gives: ["vdev:\(name)/\(dname)"])
                    needNestedAttach.insert(dname)
                }
            }
            if heldV?.abortHWPT == nil {
                add(.buildVSMMUs, r, .allocNested(guest: name, vsmmu: v.name, kind: .abort, viaDevice: v.viaDevice, dataType: v.flavor.nestedDataType),
                    needs: ["viommu:\(name)/\(v.name)"], gives: ["abort:\(name)/\(v.name)"])
            }
            if heldV?.bypassHWPT == nil {
                add(.buildVSMMUs, r, .allocNested(guest: name, vsmmu: v.name, kind: .bypass, viaDevice: v.viaDevice, dataType: v.flavor.nestedDataType),
                    needs: ["viommu:\(name)/\(v.name)"], gives: ["bypass:\(name)/\(v.name)"])
                needNestedAttach.formUnion(v.devices)
            }
            for t in v.flavor.eventQueueTypes where heldV?.eventQueues[t] == nil {
                add(.buildVSMMUs, r, .allocEventQueue(guest: name, vsmmu: v.name, type: t, depth: eventQueueDepth), needs: ["viommu:\(name)/\(v.name)"])
            }
            for dname in v.devices where needNestedAttach.contains(dname) {
                add(.attachNested, "device \(name)/\(dname)", .attach(guest: name, device: dname, target: .nested(vsmmu: v.name, kind: .bypass)),
                    needs: ["bypass:\(name)/\(v.name)", "vdev:\(name)/\(dname)", "dev:\(name)/\(dname)"])
            }
        }
    }

    mutating func moveToVFIO(_ a: PCIAddress, resource: String) {
        let s = observed.sysfs[a]
        guard s?.driver != "vfio-pci" else { return }
        if s?.driverOverride != "vfio-pci" {
            add(.moveToVFIO, resource, .setDriverOverride(address: a, driver: "vfio-pci"), needs: ["back:\(a)"], gives: ["override-vfio:\(a)"])
        }
        if let drv = s?.driver {
            add(.moveToVFIO, resource, .unbindDriver(address: a, driver: drv), needs: ["override-vfio:\(a)"], gives: ["unbound-host:\(a)"])
        }
        add(.moveToVFIO, resource, .probeDriver(address: a, expect: "vfio-pci"), needs: ["override-vfio:\(a)", "unbound-host:\(a)"], gives: ["vfio:\(a)"])
    }

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
            if drv == "vfio-pci" { s += " (vfio-pci)" } else { s += " (\(drv ?? "no driver") → vfio-pci)" }
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

    static func layout(_ d: DesiredState) -> [GuestLayout] {
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
                })
        }
    }
}
