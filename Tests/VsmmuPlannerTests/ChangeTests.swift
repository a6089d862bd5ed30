import Foundation
import Testing
import VsmmuExecutor
import VsmmuKernel
import VsmmuModel
import VsmmuPlanner

let base = """
apiVersion: vsmmu/v1
kind: Topology
metadata: { name: t }
guests:
  - name: vm
    user: qemu
    memory:
      - { name: ram0, guestAddress: 0x40000000, size: 4GiB, backing: memfd }
      - { name: ram1, guestAddress: 0x200000000, size: 4GiB, backing: anonymous }
    vsmmus:
      - name: s0
        devices:
          - { name: gpu0, host: 0000:09:01.0 }
          - { name: gpu1, host: 0000:09:02.0 }
      - name: s1
        devices:
          - { name: gpu2, host: 0000:19:01.0 }
          - { name: gpu3, host: 0000:19:02.0 }
"""

func layout(_ p: Plan) -> [String: String] {
    var out: [String: String] = [:]
    for g in p.layout { for d in g.devices { out[d.name] = "\(d.guestAddress) vsid=\(d.vsid.map { String($0, radix: 16) } ?? "-")" } }
    return out
}

func resources(_ p: Plan) -> Set<String> { Set(p.operations.map(\.resource)) }

@Test func addingADeviceTouchesOnlyThatDeviceAndMovesNoOtherAddress() throws {
    let h = try Harness(host: "examples/hosts/grace-2smmu-cmdqv.yaml")
    let first = try h.apply(try h.topology(base))
    let added = base.replacingOccurrences(of: "          - { name: gpu1, host: 0000:09:02.0 }\n",
                                          with: "          - { name: gpu1, host: 0000:09:02.0 }\n          - { name: gpu4, host: 0000:09:03.0 }\n")
    let p = try h.plan(try h.topology(added))
    #expect(p.changes.map(\.address) == ["device vm/gpu4"])
    #expect(resources(p) == ["device vm/gpu4"])
    var before = layout(first), after = layout(p)
    after["gpu4"] = nil
    before["gpu4"] = nil
    #expect(before == after)
    try h.apply(try h.topology(added))
    #expect(try h.plan(try h.topology(added)).isEmpty)
}

@Test func removingADeviceTouchesOnlyThatDeviceAndMovesNoOtherAddress() throws {
    let h = try Harness(host: "examples/hosts/grace-2smmu-cmdqv.yaml")
    let first = try h.apply(try h.topology(base))
    let removed = base.replacingOccurrences(of: "          - { name: gpu0, host: 0000:09:01.0 }\n", with: "")
    let p = try h.plan(try h.topology(removed))
    #expect(p.changes.map(\.address) == ["device vm/gpu0"])
    #expect(resources(p) == ["device vm/gpu0"])
    var before = layout(first)
    before["gpu0"] = nil
    #expect(layout(p) == before, "gpu1 keeps its bus behind the empty root port gpu0 leaves")
    try h.apply(try h.topology(removed))
    #expect(h.sim.currentHost.device(at: PCIAddress("0000:09:01.0")!)?.driver == "nvidia")
    // and a new device fills the hole, again moving nobody
    let refilled = removed.replacingOccurrences(of: "          - { name: gpu1, host: 0000:09:02.0 }\n",
                                                with: "          - { name: gpu1, host: 0000:09:02.0 }\n          - { name: gpu9, host: 0000:09:03.0 }\n")
    let p2 = try h.plan(try h.topology(refilled))
    #expect(layout(p2)["gpu9"] == layout(first)["gpu0"])
    #expect(layout(p2)["gpu1"] == layout(first)["gpu1"])
}

@Test func reorderingDevicesAndVSMMUsChangesNothing() throws {
    let h = try Harness(host: "examples/hosts/grace-2smmu-cmdqv.yaml")
    try h.apply(try h.topology(base))
    let reordered = """
    apiVersion: vsmmu/v1
    kind: Topology
    metadata: { name: t }
    guests:
      - name: vm
        user: qemu
        memory:
          - { name: ram1, guestAddress: 0x200000000, size: 4GiB, backing: anonymous }
          - { name: ram0, guestAddress: 0x40000000, size: 4GiB, backing: memfd }
        vsmmus:
          - name: s1
            devices:
              - { name: gpu3, host: 0000:19:02.0 }
              - { name: gpu2, host: 0000:19:01.0 }
          - name: s0
            devices:
              - { name: gpu1, host: 0000:09:02.0 }
              - { name: gpu0, host: 0000:09:01.0 }
    """
    let p = try h.plan(try h.topology(reordered))
    #expect(p.isEmpty, "\(p.changes.map(\.address))")
}

@Test func changingOneMemoryRegionRemapsOnlyThatRegion() throws {
    let h = try Harness(host: "examples/hosts/grace-2smmu-cmdqv.yaml")
    try h.apply(try h.topology(base))
    let grown = base.replacingOccurrences(of: "{ name: ram1, guestAddress: 0x200000000, size: 4GiB", with: "{ name: ram1, guestAddress: 0x200000000, size: 8GiB")
    let p = try h.plan(try h.topology(grown))
    #expect(p.changes.map { "\($0.action) \($0.address)" } == ["replace memory vm/ram1"])
    #expect(p.changes.first?.forcedBy == "size (4GiB → 8GiB)")
    #expect(p.operations.map(\.call) == ["IOMMU_IOAS_UNMAP", "RELEASE_GUEST_MEMORY", "MMAP_ANON", "IOMMU_IOAS_MAP"])
    try h.apply(try h.topology(grown))
    #expect(try h.plan(try h.topology(grown)).isEmpty)
}

@Test func anExplicitBusChangeRecreatesTheVDevicesWithNewVSIDs() throws {
    let h = try Harness(host: "examples/hosts/grace-2smmu-cmdqv.yaml")
    try h.apply(try h.topology(base))
    let moved = base.replacingOccurrences(of: "      - name: s1\n", with: "      - name: s1\n        busNumber: 0x40\n")
    let p = try h.plan(try h.topology(moved))
    // The bus number is guest-visible: the vSMMU says so, with its attribute.
    #expect(Set(p.changes.map(\.address)) == ["device vm/gpu2", "device vm/gpu3", "vsmmu vm/s1"])
    #expect(p.changes.first { $0.address == "vsmmu vm/s1" }?.attributes.map(\.name) == ["busNumber"])
    let calls = p.operations.map(\.call)
    #expect(calls.filter { $0 == "IOMMU_VDEVICE_ALLOC" }.count == 2)
    #expect(calls.filter { $0 == "IOMMU_DESTROY" }.count == 2)
    try h.apply(try h.topology(moved))
    #expect(try h.plan(try h.topology(moved)).isEmpty)
    let vsids = h.store.holdings.guests["vm"]!.vsmmus["s1"]!.vdevices.values.map(\.virtID).sorted()
    #expect(vsids == [0x4100, 0x4200])
}

@Test func togglingCMDQVReplacesTheVSMMU() throws {
    let h = try Harness(host: "examples/hosts/grace-2smmu-cmdqv.yaml")
    try h.apply(try h.topology(base))
    let off = base.replacingOccurrences(of: "      - name: s0\n", with: "      - name: s0\n        cmdqv: off\n")
    let p = try h.plan(try h.topology(off))
    #expect(p.changes.map { "\($0.action) \($0.address)" } == ["replace vsmmu vm/s0"])
    #expect(p.changes.first?.forcedBy?.hasPrefix("cmdqv") == true)
    try h.apply(try h.topology(off))
    #expect(try h.plan(try h.topology(off)).isEmpty)
    #expect(h.store.holdings.guests["vm"]!.vsmmus["s0"]!.viommuType == VIOMMUType.armSMMUv3)
}

@Test func removingAGuestTearsItDownAndGivesDevicesBack() throws {
    let h = try Harness(host: "examples/hosts/grace-2smmu-cmdqv.yaml")
    try h.apply(try h.example("several-guests"))
    let t = try h.example("several-guests")
    var fewer = t
    fewer.guests.removeAll { $0.name == "vm2" }
    let p = try h.plan(fewer)
    #expect(p.changes.map { "\($0.action) \($0.address)" }.sorted() == ["destroy device vm2/gpu0", "destroy device vm2/gpu1", "destroy guest vm2"])
    #expect(p.changes.first { $0.name == "vm2/gpu0" }?.summary == "0000:19:01.0 back to nvidia")
    #expect(p.changes.first { $0.name == "vm2/gpu1" }?.summary == "0000:19:03.0 back to vfio-pci")
    #expect(!p.operations.contains { $0.resource == "device vm2/gpu1" && $0.call.hasPrefix("SYSFS") }, "it was on vfio-pci before vsmmu")
    try h.apply(fewer)
    #expect(h.sim.currentHost.device(at: PCIAddress("0000:19:01.0")!)?.driver == "nvidia")
    // 0000:19:03.0 was on vfio-pci before vsmmu: it stays there
    #expect(h.sim.currentHost.device(at: PCIAddress("0000:19:03.0")!)?.driver == "vfio-pci")
    #expect(try h.plan(fewer).isEmpty)
}
