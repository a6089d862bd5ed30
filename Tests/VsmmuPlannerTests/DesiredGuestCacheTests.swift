import Testing
import VsmmuKernel
import VsmmuModel
import VsmmuTestSupport
@testable import VsmmuPlanner

/// DesiredState.build reuses what it made of a guest when the previous allocation holds the
/// values it allocated: that is only right if allocating again from them gives them back.
/// Checked from the examples' first allocations and from previous allocations moved about.
@Test(arguments: exampleTopologies.map(\.topology))
func allocatingAgainFromAnAllocationGivesItBack(example: String) throws {
    let t = try Topology.load(path: path("examples/\(example).yaml")).0
    for g in t.guests {
        let first = try Allocator.allocate(g, previous: GuestAllocation())
        var starts = [GuestAllocation(), first]
        // A device gone (its slot a hole), a device unknown before, holes recorded, other numbers.
        for (v, a) in first.vsmmus {
            if let d = a.ports.slots.keys.sorted().first {
                var p = first; p.vsmmus[v]?.ports.slots[d] = nil; starts.append(p)
                var q = first; q.vsmmus[v]?.ports.slots["gone"] = 30; starts.append(q)
            }
            var h = first; h.vsmmus[v]?.ports.holes = [0, 2]; starts.append(h)
            var b = first; b.vsmmus[v]?.busNumber += 32; b.vsmmus[v]?.identifier += 3; starts.append(b)
            var r = first; r.vsmmus[v] = nil; starts.append(r)
        }
        if let d = first.rootPorts.slots.keys.sorted().first {
            var p = first; p.rootPorts.slots[d] = nil; p.rootPorts.holes = [1]; starts.append(p)
        }
        for start in starts {
            guard let a = try? Allocator.allocate(g, previous: start) else { continue }
            let again = try Allocator.allocate(g, previous: a)
            #expect(again.sameValues(a), "guest \(g.name): \(a) then \(again)")
            #expect(a.keeps(a) && !a.keeps(nil))
        }
    }
}

private func build(_ t: Topology, _ host: HostDescription, previous: Allocations) throws -> DesiredState {
    let v = Validator.validate(t, host: host)
    #expect(v.isValid, "\(v.diagnostics.map(\.description))")
    return try DesiredState.build(topology: v.placing(t), host: host, resolved: v.resolved, previous: previous, users: SimulatedUserResolver())
}

/// Each input the cache is keyed by, changed alone after a build that filled it: the next
/// build shows the change (a stale entry would not).
@Test func aChangedHostGuestOrAllocationIsBuiltAgain() throws {
    let host = try HostDescription.load(path: path("examples/hosts/grace-2smmu-cmdqv.yaml"))
    let t = try Topology.load(path: path("examples/two-vsmmus-four-gpus.yaml")).0
    let first = try build(t, host, previous: Allocations())
    let again = try build(t, host, previous: first.allocations)
    #expect(again.guests == first.guests)

    // A device's VFIO driver on the host.
    let device = try #require(first.guests.first?.devices.first)
    var variant = host
    let i = try #require(variant.pciDevices.firstIndex { DeviceSource.pci($0.address) == device.source })
    variant.pciDevices[i].vfioDriver = "nvgrace_gpu_vfio_pci"
    let changedHost = try build(t, variant, previous: first.allocations)
    #expect(changedHost.guests.first?.devices.first { $0.name == device.name }?.vfioDriver == "nvgrace_gpu_vfio_pci")
    // And back: the first host's value again, not the variant's.
    #expect(try build(t, host, previous: first.allocations).guests == first.guests)

    // The topology's memory for the first guest.
    var u = t
    u.guests[0].memory[0].size *= 2
    let changedGuest = try build(u, host, previous: first.allocations)
    #expect(changedGuest.guests[0].memory[0].size == first.guests[0].memory[0].size * 2)

    // The previous allocation: two devices' root-port slots swapped are kept, and their vSIDs follow.
    var moved = first.allocations
    let g = first.guests[0].name
    let v = try #require(first.guests[0].vsmmus.first?.name)
    let slots = try #require(moved.guests[g]?.vsmmus[v]?.ports.slots)
    let names = slots.keys.sorted()
    try #require(names.count >= 2)
    moved.guests[g]?.vsmmus[v]?.ports.slots[names[0]] = slots[names[1]]
    moved.guests[g]?.vsmmus[v]?.ports.slots[names[1]] = slots[names[0]]
    let changedAllocation = try build(t, host, previous: moved)
    #expect(changedAllocation.allocations.guests[g]?.vsmmus[v]?.ports.slots == moved.guests[g]?.vsmmus[v]?.ports.slots)
    func vsid(_ d: DesiredState) -> UInt64? { d.guests[0].devices.first { $0.name == names[0] }?.vsid }
    #expect(vsid(changedAllocation) != nil && vsid(changedAllocation) != vsid(first))
}
