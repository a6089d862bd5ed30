import Foundation
import VsmmuTestSupport
import Testing
import VsmmuExecutor
import VsmmuKernel
import VsmmuModel
import VsmmuPlanner

/// Placement (docs/contract.md §2 "Placement"): `vsmmu: auto` devices behind the vSMMU of their
/// own physical SMMU, peers together, stable across re-plans through the allocations.

private func guest(_ devices: [String]) -> String {
    """
    apiVersion: vsmmu/v1
    kind: Topology
    metadata: { name: t }
    guests:
      - name: vm1
        memory:
          - { name: ram0, guestAddress: 0x40000000, size: 1GiB, backing: memfd }
        devices:
    \(devices.map { "      - \($0)" }.joined(separator: "\n"))
    """
}

private func placedLayout(_ plan: Plan) -> [String: String] {
    var out: [String: String] = [:]
    for d in plan.layout.first?.devices ?? [] { out[d.name] = "\(d.vsmmu ?? "-") \(d.guestAddress) \(d.vsid.map { String($0, radix: 16) } ?? "-")" }
    return out
}

@Test func addingAnAutoDeviceRenumbersNoOther() throws {
    let h = try Harness(host: "examples/hosts/gb200-tray.yaml")
    let first = try h.apply(h.topology(guest([
        #"{ name: gpu0, host: "0000:03:00.0", vsmmu: auto }"#,
        #"{ name: gpu2, host: "0000:13:00.0", vsmmu: auto }"#,
        #"{ name: nic2, host: "0000:14:00.0", vsmmu: auto, peer: gpu2 }"#])))
    let before = placedLayout(first)
    #expect(before["gpu0"] == "smmu-16000000 0000:11:00.0 1100")
    #expect(before["gpu2"] == "smmu-17000000 0000:21:00.0 2100")
    #expect(before["nic2"] == "smmu-17000000 0000:22:00.0 2200")
    // A GPU+NIC pair on the first SMMU and a NIC listed first: each joins its SMMU's vSMMU,
    // the others keep every value (the new ones take the next slots).
    let t2 = try h.topology(guest([
        #"{ name: nic0, host: "0000:04:00.0", vsmmu: auto, peer: gpu0 }"#,
        #"{ name: gpu1, host: "0000:07:00.0", vsmmu: auto }"#,
        #"{ name: gpu0, host: "0000:03:00.0", vsmmu: auto }"#,
        #"{ name: nic1, host: "0000:08:00.0", vsmmu: auto, peer: gpu1 }"#,
        #"{ name: gpu2, host: "0000:13:00.0", vsmmu: auto }"#,
        #"{ name: nic2, host: "0000:14:00.0", vsmmu: auto, peer: gpu2 }"#]))
    let second = try h.plan(t2)
    let after = placedLayout(second)
    for (name, value) in before { #expect(after[name] == value, "\(name) moved") }
    #expect(Set(["nic0", "gpu1", "nic1"].compactMap { after[$0]?.split(separator: " ").first }) == ["smmu-16000000"])
    // No bus, identifier, slot or vSID moves; the one update is what auto means: nic0 has no
    // PASID, so the vSMMU it joins offers ssidSize 0 now (capped per device).
    let updates = second.changes.filter { $0.action != .create }
    #expect(updates.map(\.address) == ["vsmmu vm1/smmu-16000000"])
    #expect(updates.first?.attributes.map { "\($0.name) \($0.from ?? "") \($0.to ?? "")" } == ["ssidSize 20 0"])
    try h.apply(t2)
    #expect(try h.plan(t2).isEmpty)
}

@Test func autoOnAnIOMMUWithoutAcceleratedVSMMUPassesThroughWithTheReason() throws {
    let host = try HostDescription.load(path: path("examples/hosts/intel-vtd.yaml"))
    let a = try #require(host.pciDevices.first { $0.iommu != nil && $0.driver != nil && $0.classCode >> 8 != 0x0604 })
    let t = try Topology.parse(SourceText(path: "t.yaml", bytes: Array(guest(["{ name: d0, host: \"\(a.address)\", vsmmu: auto }"]).utf8)))
    let r = Validator.validate(t, host: host)
    #expect(r.diagnostics.map(\.description) == [])
    #expect(r.placed.guests[0].vsmmus.isEmpty && r.placed.guests[0].devices.map(\.name) == ["d0"])
    let d = try #require(r.placements["vm1"]?.decisions.first)
    #expect(d.vsmmu == nil && d.reason.contains("intel-vtd") && d.reason.contains("stage-2"))
}

@Test func autoJoinsTheGuestsOwnVSMMUOnThatSMMU() throws {
    let host = try HostDescription.load(path: path("examples/hosts/gb200-tray.yaml"))
    let yaml = """
        apiVersion: vsmmu/v1
        kind: Topology
        metadata: { name: t }
        guests:
          - name: vm1
            vsmmus:
              - name: left
                devices: [{ name: gpu0, host: "0000:03:00.0" }]
            devices:
              - { name: nic0, host: "0000:04:00.0", vsmmu: auto, peer: gpu0 }
              - { name: nic2, host: "0000:14:00.0", vsmmu: left }
        """
    let r = Validator.validate(try Topology.parse(SourceText(path: "t.yaml", bytes: Array(yaml.utf8))), host: host)
    // nic0 joins 'left' (its SMMU's vSMMU); nic2 was put on 'left' by name, which is on another SMMU.
    #expect(r.diagnostics.map(\.message) == ["device 'nic2' (0000:14:00.0) sits behind IOMMU smmu3.0x0000000017000000, but the vSMMU's first device is behind smmu3.0x0000000016000000; an accelerated vSMMU serves one physical IOMMU"])
    #expect(r.placed.guests[0].vsmmus.map { $0.devices.map(\.name) } == [["gpu0", "nic0", "nic2"]])
    #expect(r.placements["vm1"]?.decisions.first?.reason.contains("the guest's vSMMU on smmu3.0x0000000016000000") == true)
}
