import Foundation
import Testing
import VsmmuExecutor
import VsmmuKernel
import VsmmuModel
@testable import VsmmuPlanner
import VsmmuTestSupport

/// The kinds of dependency token the plan for `t` needs and gives (as Pipeline.plan builds it).
func dependencyKinds(_ h: Harness, _ t: Topology, destroying: Bool = false) throws -> DependencyKinds {
    let v = Validator.validate(t, host: h.sim.currentHost)
    #expect(v.isValid)
    var holdings = h.store.holdings
    if destroying { holdings.guests = holdings.guests.filter { g in t.guests.contains { $0.name == g.key } } }
    var addresses = Set<PCIAddress>()
    for g in t.guests { for d in g.allDevices { if let a = d.host.pciAddress { addresses.insert(a) } } }
    let observed = try ObservedState.observe(port: h.sim, holdings: holdings, addresses: addresses)
    var effective = t
    if destroying { effective.guests = [] }
    let desired = try DesiredState.build(topology: effective, host: h.sim.currentHost, resolved: v.resolved, previous: h.store.allocations,
                                         users: SimulatedUserResolver())
    return Planner.dependencyKinds(desired: desired, observed: observed)
}

/// Every kind of token some step needs is given by some step, and every kind given is
/// needed: over plans that reach every rule of the planner (create, change, replace,
/// drift, lost and uncertain contexts, removal, destroy), and every kind shows up.
@Test func everyDependencyNeededIsGivenAndEveryOneGivenIsNeeded() throws {
    var all = DependencyKinds()
    func collect(_ h: Harness, _ t: Topology, destroying: Bool = false) throws {
        let k = try dependencyKinds(h, t, destroying: destroying)
        all.needed.formUnion(k.needed)
        all.given.formUnion(k.given)
    }
    // Every example: created, then destroyed.
    for (name, host) in exampleTopologies {
        let h = try Harness(host: host)
        let t = try h.example(name)
        try collect(h, t)
        try h.apply(t)
        try collect(h, t, destroying: true)
    }
    // Changes to a running guest: memory resized, vSIDs moved, a vSMMU rebuilt, a device removed.
    let h = try Harness(host: "examples/hosts/grace-2smmu-cmdqv.yaml")
    try h.apply(try h.topology(base))
    let changed = [
        base.replacingOccurrences(of: "size: 4GiB, backing: anonymous", with: "size: 8GiB, backing: anonymous"),
        base.replacingOccurrences(of: "      - name: s1\n", with: "      - name: s1\n        busNumber: 0x40\n"),
        base.replacingOccurrences(of: "      - name: s0\n", with: "      - name: s0\n        cmdqv: off\n"),
        base.replacingOccurrences(of: "          - { name: gpu3, host: 0000:19:02.0 }\n", with: ""),
    ]
    for yaml in changed { try collect(h, try h.topology(yaml)) }
    // A guest removed from a topology that keeps another.
    let g = try Harness(host: "examples/hosts/grace-2smmu-cmdqv.yaml")
    var several = try g.example("several-guests")
    try g.apply(several)
    several.guests.removeAll { $0.name == "vm2" }
    try collect(g, several)
    // Contexts lost (the holder exited) and left uncertain (an apply interrupted).
    let lost = try Harness(host: "examples/hosts/grace-2smmu-cmdqv.yaml")
    let t = try lost.example("two-vsmmus-four-gpus")
    try lost.apply(t)
    lost.sim.simulateProcessExit()
    try lost.sim.save()
    try lost.reopen()
    try collect(lost, t)
    let cut = try Harness(host: "examples/hosts/grace-2smmu-cmdqv.yaml", environment: ["VSMMU_SIM_FAIL": "IOMMU_VIOMMU_ALLOC#2:ENOMEM"])
    #expect(throws: (any Error).self) { try cut.apply(t) }
    try cut.reopen()
    try collect(cut, t)

    #expect(all.needed.subtracting(all.given).isEmpty, "needed, never given: \(all.needed.subtracting(all.given))")
    #expect(all.given.subtracting(all.needed).isEmpty, "given, never needed: \(all.given.subtracting(all.needed))")
    #expect(all.needed.union(all.given) == Set(Dep.Kind.allCases), "not reached: \(Set(Dep.Kind.allCases).subtracting(all.needed.union(all.given)))")
}

/// Holdings written when a vSMMU's types were bare u32s read back unchanged, and are
/// written the same way.
@Test func typedVSMMUHoldingsReadAndWriteTheNumbersEarlierFilesHave() throws {
    struct Earlier: Codable {
        var physical = "smmu3.0x0000000016000000"
        var viommu: UInt32 = 7
        var viommuType: UInt32 = 2
        var abortHWPT: UInt32? = 8
        var bypassHWPT: UInt32? = 9
        var eventQueues: [UInt32: EventQueueHolding] = [2: EventQueueHolding(id: 11, fd: KernelFile(fd: 13))]   // one: a dictionary's order is its own
        var vdevices: [String: VDeviceHolding] = ["gpu0": VDeviceHolding(id: 5, virtID: 0x1100)]
    }
    let encoder = JSONEncoder()
    encoder.outputFormatting = .sortedKeys
    let earlier = try encoder.encode(Earlier())
    let now = try JSONDecoder().decode(VSMMUHolding.self, from: earlier)
    #expect(now.viommuType == .tegra241CMDQV)
    #expect(now.eventQueues[.tegra241CMDQV]?.id == 11)
    #expect(try encoder.encode(now) == earlier)
}
