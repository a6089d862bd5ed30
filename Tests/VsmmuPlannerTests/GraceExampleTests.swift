import Testing
import VsmmuKernel
import VsmmuPlanner

/// The GB200-like example (issue 16) applies on its simulated host: each device on its own
/// VFIO driver, the vSMMUs resolved per device, destroy gives every device back.
@Test func gb200ExampleAppliesWithVariantDriversAndPerDeviceFacts() throws {
    let h = try Harness(host: "examples/hosts/gb200-64k.yaml")
    let t = try h.example("gb200-four-gpus")
    let plan = try h.apply(t)
    let drivers = Dictionary(uniqueKeysWithValues: h.sim.currentHost.pciDevices.map { ($0.address.description, $0.driver ?? "-") })
    #expect(drivers["0000:09:01.0"] == "nvgrace_gpu_vfio_pci" && drivers["0000:19:02.0"] == "nvgrace_gpu_vfio_pci")
    #expect(drivers["0000:0a:00.2"] == "mlx5_vfio_pci" && drivers["0000:1a:00.2"] == "mlx5_vfio_pci")
    let layout = try #require(plan.layout.first)
    #expect(layout.lockedMemory == 64 << 30)
    // smmu1 holds the GPU without ATS: ats auto is off there; the VFs have no PASID.
    #expect(layout.vsmmus.map { "\($0.name) ats \($0.ats) ssid \($0.ssidSize)" } == ["smmu0 ats true ssid 0", "smmu1 ats false ssid 0"])
    #expect(try h.plan(t).operations.filter(\.isMutating).isEmpty)
    try h.apply(t, destroying: true)
    let back = Dictionary(uniqueKeysWithValues: h.sim.currentHost.pciDevices.map { ($0.address.description, $0.driver ?? "-") })
    #expect(back["0000:09:01.0"] == "nvidia" && back["0000:0a:00.2"] == "mlx5_core")
}
