import Testing
import VsmmuExecutor
import VsmmuKernel
import VsmmuModel
import VsmmuTestSupport
@testable import VsmmuPlanner

/// The planner skips the full diff of a guest `isConverged` says nothing changes for. These
/// tests plan converged, drifted and mixed hosts both ways (shortcut on and off) and require
/// the same lines and steps; debug builds also check each skipped guest against the diff.

/// One way a guest's holding, what the kernel shows of it, or what the topology wants of it
/// moves away from converged; false: it does not apply to this guest.
private struct Drift: Sendable {
    var name: String
    /// false: the full diff plans nothing for it either (the shortcut must still agree);
    /// nil: what the full diff plans depends on dictionary order (a state no kernel makes).
    var changes: Bool? = true
    var apply: @Sendable (inout DesiredGuest, inout GuestHolding, inout ObservedState) -> Bool
}

private func firstDevice(_ g: DesiredGuest, behindVSMMU: Bool?) -> DesiredDevice? {
    g.devices.first { behindVSMMU == nil || ($0.vsmmu != nil) == behindVSMMU! }
}

private let drifts: [Drift] = [
    Drift(name: "no IOAS") { _, h, _ in h.ioas = nil; return true },
    Drift(name: "uncertain") { _, h, _ in h.uncertain = true; return true },
    Drift(name: "a device not held") { g, h, _ in
        guard let d = g.devices.first else { return false }
        h.devices[d.name] = nil
        for v in h.vsmmus.keys { h.vsmmus[v]?.vdevices[d.name] = nil }
        return true
    },
    Drift(name: "a device held but not wanted") { _, h, _ in
        guard let d = h.devices.first?.value else { return false }
        h.devices["extra"] = d
        return true
    },
    Drift(name: "a device from another address") { g, h, _ in
        guard let d = g.devices.first, var held = h.devices[d.name] else { return false }
        switch held.source {
        case .pci(let a): held.source = .pci(PCIAddress(domain: a.domain, bus: a.bus &+ 1, slot: a.slot, function: a.function)!)
        case .selftest(let n): held.source = .selftest(n + 1)
        }
        h.devices[d.name] = held
        return true
    },
    Drift(name: "opened but not bound") { g, h, _ in
        guard let d = g.devices.first else { return false }
        guard var held = h.devices[d.name] else { return false }
        held.devID = 0
        held.cdev = held.cdev ?? DeviceHandle(fd: 99)
        h.devices[d.name] = held
        return true
    },
    Drift(name: "attached elsewhere") { g, h, _ in
        guard let d = g.devices.first else { return false }
        let was = h.devices[d.name]?.attached ?? 0
        h.devices[d.name]?.attached = was &+ 1000
        return true
    },
    Drift(name: "not attached") { g, h, _ in
        guard let d = g.devices.first else { return false }
        h.devices[d.name]?.attached = nil
        return true
    },
    Drift(name: "binding lost") { g, h, o in
        guard let d = g.devices.first, h.devices[d.name]?.cdev != nil else { return false }
        o.lostDevices.insert("\(g.name)/\(d.name)")
        return true
    },
    Drift(name: "its cdev has another owner") { g, h, o in
        guard let u = g.owner, let i = g.devices.compactMap({ h.devices[$0.name]?.vfioIndex }).first else { return false }
        o.owners[i] = u.uid &+ 1
        return true
    },
    Drift(name: "an owner is now wanted") { g, h, _ in
        guard g.owner == nil, g.devices.contains(where: { h.devices[$0.name]?.vfioIndex != nil }) else { return false }
        g.owner = ResolvedUser(name: "someone", uid: 4242, gid: 4242, note: "")
        return true
    },
    Drift(name: "a vDevice not held") { g, h, _ in
        guard let d = firstDevice(g, behindVSMMU: true), let v = d.vsmmu else { return false }
        h.vsmmus[v]?.vdevices[d.name] = nil
        return true
    },
    Drift(name: "a vDevice with another vSID") { g, h, _ in
        guard let d = firstDevice(g, behindVSMMU: true), let v = d.vsmmu else { return false }
        h.vsmmus[v]?.vdevices[d.name]?.virtID &+= 0x100
        return true
    },
    Drift(name: "a vSID the topology moves") { g, _, _ in
        guard let i = g.devices.firstIndex(where: { $0.vsmmu != nil }) else { return false }
        g.devices[i].vsid = (g.devices[i].vsid ?? 0) &+ 0x100
        return true
    },
    Drift(name: "a vDevice under another vSMMU") { g, h, _ in
        guard let d = firstDevice(g, behindVSMMU: true), let v = d.vsmmu, let other = h.vsmmus.keys.first(where: { $0 != v }),
              let vd = h.vsmmus[v]?.vdevices[d.name] else { return false }
        h.vsmmus[v]?.vdevices[d.name] = nil
        h.vsmmus[other]?.vdevices[d.name] = vd
        return true
    },
    Drift(name: "a vDevice also under another vSMMU", changes: nil) { g, h, _ in
        guard let d = firstDevice(g, behindVSMMU: true), let v = d.vsmmu, let other = h.vsmmus.keys.first(where: { $0 != v }),
              let vd = h.vsmmus[v]?.vdevices[d.name] else { return false }
        h.vsmmus[other]?.vdevices[d.name] = vd
        return true
    },
    Drift(name: "a vDevice for a device on stage 2 only") { g, h, _ in
        guard let d = firstDevice(g, behindVSMMU: false), let v = h.vsmmus.keys.first else { return false }
        h.vsmmus[v]?.vdevices[d.name] = VDeviceHolding(id: 999, virtID: 0x100)
        return true
    },
    Drift(name: "a device the topology takes off its vSMMU") { g, _, _ in
        guard let i = g.devices.firstIndex(where: { $0.vsmmu != nil }) else { return false }
        g.devices[i].vsmmu = nil
        g.devices[i].vsid = nil
        return true
    },
    Drift(name: "a vSMMU on another SMMU") { g, h, _ in
        guard let v = g.vsmmus.first?.name else { return false }
        h.vsmmus[v]?.physical += "x"
        return true
    },
    Drift(name: "a vSMMU of another vIOMMU type") { g, h, _ in
        guard let v = g.vsmmus.first?.name, let t = h.vsmmus[v]?.viommuType else { return false }
        h.vsmmus[v]?.viommuType = t == .tegra241CMDQV ? .armSMMUv3 : .tegra241CMDQV
        return true
    },
    Drift(name: "no abort HWPT") { g, h, _ in
        guard let v = g.vsmmus.first?.name else { return false }
        h.vsmmus[v]?.abortHWPT = nil
        return true
    },
    Drift(name: "no bypass HWPT") { g, h, _ in
        guard let v = g.vsmmus.first?.name else { return false }
        h.vsmmus[v]?.bypassHWPT = nil
        return true
    },
    Drift(name: "a vEVENTQ not held") { g, h, _ in
        guard let v = g.vsmmus.first, let t = v.flavor.eventQueueTypes.first else { return false }
        h.vsmmus[v.name]?.eventQueues[t] = nil
        return true
    },
    Drift(name: "a vEVENTQ of a type the flavor has not", changes: false) { g, h, _ in
        guard let v = g.vsmmus.first?.name else { return false }
        h.vsmmus[v]?.eventQueues[VEventQType(rawValue: 0xbeef)] = EventQueueHolding(id: 77, fd: KernelFile(fd: 77))
        return true
    },
    Drift(name: "a vSMMU not held") { g, h, _ in
        guard let v = g.vsmmus.first?.name else { return false }
        h.vsmmus[v] = nil
        return true
    },
    Drift(name: "a vSMMU held but not wanted") { _, h, _ in
        guard let v = h.vsmmus.first?.value else { return false }
        h.vsmmus["extra"] = v
        return true
    },
    Drift(name: "a stage 2 not held") { g, h, _ in
        guard let s = g.stage2.first else { return false }
        h.stage2[s.iommu] = nil
        return true
    },
    Drift(name: "a stage 2 held but not wanted") { _, h, _ in
        guard let s = h.stage2.first?.value else { return false }
        h.stage2["extra-iommu"] = s
        return true
    },
    Drift(name: "a stage 2 whose nest-parent flag flips") { g, h, _ in
        guard let s = g.stage2.first else { return false }
        h.stage2[s.iommu]?.nestParent.toggle()
        return true
    },
    Drift(name: "memory not held") { g, h, _ in
        guard let m = g.memory.first else { return false }
        h.memory[m.name] = nil
        return true
    },
    Drift(name: "memory held but not wanted") { _, h, _ in
        guard let m = h.memory.first?.value else { return false }
        h.memory["extra"] = m
        return true
    },
    Drift(name: "memory at another address") { g, h, _ in
        guard let m = g.memory.first else { return false }
        h.memory[m.name]?.iova &+= 0x1000_0000
        return true
    },
    Drift(name: "memory of another size") { g, h, _ in
        guard let m = g.memory.first else { return false }
        h.memory[m.name]?.length &+= 0x20_0000
        return true
    },
    Drift(name: "memory of another backing") { g, h, _ in
        guard let m = g.memory.first else { return false }
        h.memory[m.name]?.backing = m.backing == .anonymous ? .memfd : .anonymous
        return true
    },
    Drift(name: "memory not mapped") { g, h, _ in
        guard let m = g.memory.first else { return false }
        h.memory[m.name]?.mapped = false
        return true
    },
]

/// An example applied to its simulated host, and what the planner sees of it then.
private func convergedExample(_ example: String) throws -> (DesiredState, ObservedState) {
    let h = try Harness(host: exampleHost(example))
    let t = try h.example(example)
    try h.apply(t)
    let v = Validator.validate(t, host: h.sim.currentHost)
    let placed = v.placing(t)
    let desired = try DesiredState.build(topology: placed, host: h.sim.currentHost, resolved: v.resolved,
                                         previous: h.store.allocations, users: SimulatedUserResolver())
    var addresses = Set<PCIAddress>()
    for g in placed.guests { for d in g.allDevices { if let a = d.host.pciAddress { addresses.insert(a) } } }
    let observed = try ObservedState.observe(port: h.sim, holdings: h.store.holdings, addresses: addresses)
    return (desired, observed)
}

/// The whole host's diff with the shortcut on and off: lines and ordered steps.
private func bothWays(_ desired: DesiredState, _ observed: ObservedState) -> (on: ([ResourceChange], [PlanStep]), off: ([ResourceChange], [PlanStep])) {
    var on = Planner(desired: desired, observed: observed)
    on.diff()
    var off = Planner(desired: desired, observed: observed)
    off.convergedShortcut = false
    off.diff()
    return ((on.changes, on.order()), (off.changes, off.order()))
}

@Test(arguments: exampleTopologies.map(\.topology))
func aConvergedHostTakesTheShortcutForEveryGuest(example: String) throws {
    let (desired, observed) = try convergedExample(example)
    let p = Planner(desired: desired, observed: observed)
    for g in desired.guests {
        #expect(p.isConverged(g, observed.holdings.guests[g.name]!), "guest \(g.name)")
    }
    let (on, off) = bothWays(desired, observed)
    #expect(on.0.isEmpty && on.1.isEmpty && off.0.isEmpty && off.1.isEmpty)
}

/// Each drift on each guest in turn, the other guests converged (a mixed host where the
/// example has several): the same plan with the shortcut as without it.
@Test(arguments: exampleTopologies.map(\.topology))
func aDriftedGuestPlansTheSameWithTheShortcutAsWithout(example: String) throws {
    let (desired, observed) = try convergedExample(example)
    var applied = 0
    for (i, g0) in desired.guests.enumerated() {
        for drift in drifts {
            var d = desired, o = observed
            var g = g0, h = o.holdings.guests[g.name]!
            guard drift.apply(&g, &h, &o) else { continue }
            applied += 1
            d.guests[i] = g
            o.holdings.guests[g.name] = h
            let (on, off) = bothWays(d, o)
            #expect(on.0 == off.0, "\(drift.name), guest \(g.name): lines differ")
            #expect(on.1 == off.1, "\(drift.name), guest \(g.name): steps differ")
            // The drift is one the diff sees (else the comparison above proves little).
            if let changes = drift.changes {
                #expect((off.0.isEmpty && off.1.isEmpty) != changes, "\(drift.name), guest \(g.name): the full diff planned \(off.1.count) steps")
            }
            if drift.changes != false { #expect(!Planner(desired: d, observed: o).isConverged(g, h), "\(drift.name), guest \(g.name)") }
        }
    }
    #expect(applied >= 15, "only \(applied) drifts applied to \(example)")
}
