import Foundation
import VsmmuTestSupport
import Testing
import VsmmuExecutor
import VsmmuKernel
import VsmmuModel
import VsmmuPlanner
@testable import VsmmuSim

@Test(arguments: exampleTopologies.map(\.topology))
func applyThenPlanIsEmptyAndASecondApplyMakesNoMutatingCall(example: String) throws {
    let host = exampleHost(example)
    let h = try Harness(host: host)
    let t = try h.example(example)
    let first = try h.apply(t)
    #expect(!first.isEmpty)
    #expect(h.sim.mutatingCalls == first.operations.filter(\.isMutating).count)

    // A new process: reload everything from disk.
    try h.reopen()
    let again = try h.plan(t)
    #expect(again.changes.isEmpty, "\(again.changes.map(\.address))")
    #expect(again.operations.isEmpty)
    let before = h.sim.mutatingCalls
    try h.apply(t)
    #expect(h.sim.mutatingCalls == before, "a converged apply made mutating calls")
}

@Test(arguments: exampleTopologies.map(\.topology))
func destroyGivesEveryDeviceBackAndLeavesNothing(example: String) throws {
    let host = exampleHost(example)
    let h = try Harness(host: host)
    let original = Dictionary(uniqueKeysWithValues: h.sim.currentHost.pciDevices.map { ($0.address, $0.driver) })
    let t = try h.example(example)
    try h.apply(t)
    try h.apply(t, destroying: true)
    for d in h.sim.currentHost.pciDevices {
        #expect(d.driver == original[d.address]!, "\(d.address) is on \(d.driver ?? "none"), was \(original[d.address]! ?? "none")")
    }
    #expect(h.store.holdings.guests.isEmpty)
    #expect(h.sim.state.files.isEmpty, "fds left open: \(h.sim.state.files)")
    #expect(h.sim.state.contexts.isEmpty)
    #expect(try h.plan(t, destroying: true).isEmpty)
}

@Test func agentRestartRecreatesTheContextsButLeavesBindings() throws {
    let h = try Harness(host: "examples/hosts/grace-2smmu-cmdqv.yaml")
    let t = try h.example("two-vsmmus-four-gpus")
    try h.apply(t)
    let clean = h.summary()
    h.sim.simulateProcessExit()
    try h.sim.save()
    try h.reopen()
    let p = try h.plan(t)
    #expect(p.changes.first.map { "\($0.action) \($0.address)" } == "replace guest train0")
    #expect(p.changes.dropFirst().allSatisfy { $0.action == .create && $0.name.hasPrefix("train0/") })
    #expect(p.changes.first?.forcedBy?.contains("context lost") == true)
    #expect(p.changes.first?.replacement?.reason == "context-lost")
    #expect(!p.operations.contains { $0.call.hasPrefix("SYSFS") }, "host-level state survived; no sysfs step is needed")
    try h.apply(t)
    #expect(h.summary() == clean)
    #expect(try h.plan(t).isEmpty)
}

/// The lab's fail_iommufd found it: a failed liveness read of a context this process
/// still holds was taken for a lost context, which was then forgotten with its fds open.
@Test func aFailedLivenessReadOfOurOwnContextIsAnErrorNotALostContext() throws {
    let h = try Harness(host: "examples/hosts/selftest.yaml")
    let t = try h.example("selftest")
    try h.apply(t)
    let clean = h.summary()
    let fds = h.sim.state.files.count
    try h.reopen(environment: ["VSMMU_SIM_FAIL": "IOMMU_IOAS_IOVA_RANGES#1:ENOENT"])
    do {
        _ = try h.plan(t)
        Issue.record("the plan took the failed read for a lost context")
    } catch {
        #expect("\(error)".contains("IOMMU_IOAS_IOVA_RANGES"))
        #expect("\(error)".contains("ENOENT"))
    }
    #expect(h.sim.state.files.count == fds, "no fd was closed or leaked")
    try h.reopen()
    #expect(try h.plan(t).isEmpty)
    #expect(h.summary() == clean)
}

@Test func driftInHostYAMLShowsAndConverges() throws {
    let h = try Harness(host: "examples/hosts/grace-2smmu-cmdqv.yaml")
    let t = try h.example("two-vsmmus-four-gpus")
    try h.apply(t)
    let clean = h.summary()
    // Someone binds gpu1 back to nvidia behind vsmmu's back: edit sim/host.yaml.
    let hostYAML = h.dir + "/sim/host.yaml"
    var text = try String(contentsOfFile: hostYAML, encoding: .utf8)
    let at = text.range(of: "address: \"0000:09:02.0\"")!
    let drv = text.range(of: "driver: vfio-pci", range: at.upperBound..<text.endIndex)!
    text.replaceSubrange(drv, with: "driver: nvidia")
    try text.write(toFile: hostYAML, atomically: true, encoding: .utf8)
    try h.reopen()
    let p = try h.plan(t)
    #expect(p.changes.count == 1)
    #expect(p.changes.first?.address == "device train0/gpu1")
    #expect(p.changes.first?.forcedBy?.contains("nvidia") == true)
    // Only that device's steps.
    #expect(p.operations.allSatisfy { $0.resource == "device train0/gpu1" }, "\(p.operations.map(\.resource))")
    try h.apply(t)
    #expect(h.summary() == clean)
}

@Test func secondApplyOfAGuestOnAnotherGuestsDeviceIsRefusedByValidation() throws {
    let h = try Harness(host: "examples/hosts/grace-2smmu-cmdqv.yaml")
    let t = try h.topology("""
    apiVersion: vsmmu/v1
    kind: Topology
    metadata: { name: t }
    guests:
      - name: a
        devices: [{ name: n, host: 0000:0a:00.0 }]
    """)
    // the NIC's group sibling 0000:0a:00.1 is on mlx5_core and not in the topology
    #expect(throws: Pipeline.Failure.self) { try h.plan(t) }
}
