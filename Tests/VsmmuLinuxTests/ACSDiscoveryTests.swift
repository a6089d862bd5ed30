import Foundation
import Testing
import VsmmuKernel
import VsmmuModel
import VsmmuYAML
@testable import VsmmuLinux

/// Bridges and their ACS read from sysfs `config` (docs/kernel-interface.md §11), through the
/// host-file seam on a fake tree, then used by placement for a peer pair's path.

/// A type-1 config space: secondary bus at 0x19; with `acs`, an AER capability at 0x100
/// pointing to ACS at 0x148. `size` 64 is what a reader without CAP_SYS_ADMIN gets.
func bridgeConfig(secondary: UInt8, acs: UInt16?, size: Int = 4096) -> Data {
    var c = [UInt8](repeating: 0, count: 4096)
    c[0x0e] = 0x01
    c[0x19] = secondary
    func put32(_ o: Int, _ v: UInt32) { for i in 0..<4 { c[o + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))) } }
    if let acs {
        put32(0x100, 0x0001 | 1 << 16 | 0x148 << 20)       // AER, version 1, next 0x148
        put32(0x148, 0x000d | 1 << 16)                      // ACS, version 1, end of list
        c[0x14c] = 0x7f                                     // ACS Capability: every bit
        c[0x14e] = UInt8(acs & 0xff); c[0x14f] = UInt8(acs >> 8)
    }
    return Data(c.prefix(size))
}

@Test func configSpaceGivesSecondaryBusAndACSControl() {
    var c = [UInt8](repeating: 0, count: 4096)
    c[0x0e] = 1; c[0x19] = 0x42
    #expect(PCIConfig.secondaryBus(c) == 0x42)
    #expect(PCIConfig.acs(c) == .absent)                               // no extended capability
    #expect(PCIConfig.acs(Array(c.prefix(64))) == .unreadable)         // not root: 64 bytes
    #expect(PCIConfig.acs(Array(c.prefix(256))) == .absent)            // conventional config space
    c[0x0e] = 0; #expect(PCIConfig.secondaryBus(c) == nil)             // a type-0 header
    // A capability list that loops back on itself ends, with no ACS found.
    c[0x100] = 0x01; c[0x101] = 0; c[0x102] = 0x01; c[0x103] = 0x10   // next = 0x100
    #expect(PCIConfig.acs(c) == .absent)
    // AER at 0x100 -> ACS at 0x148 with control 0x001d.
    c = [UInt8](repeating: 0, count: 4096)
    c[0x100] = 0x01; c[0x102] = 0x81; c[0x103] = 0x14                  // next 0x148
    c[0x148] = 0x0d; c[0x14e] = 0x1d
    #expect(PCIConfig.acs(c) == .control(0x001d))
}

@Test func discoveredBridgesTellWherePeerTrafficGoes() throws {
    let base = NSTemporaryDirectory() + "vsmmu-acs-\(UUID().uuidString)"
    defer { try? FileManager.default.removeItem(atPath: base) }
    let f = FakeSysfs(root: base + "/sys")
    let smmu = "smmu3.0x0000000016000000"
    f.iommu(smmu)
    // root port -> switch upstream port -> two downstream ports (one redirecting, one not readable)
    for (a, sec, acs, size) in [("0000:00:01.0", UInt8(1), UInt16?(0x001f), 4096), ("0000:01:00.0", 2, nil, 4096),
                                ("0000:02:00.0", 3, 0x001d, 4096), ("0000:02:01.0", 4, 0x0001, 64)] {
        f.device(a, vendor: "0x10b5", device: "0xc010", cls: "0x060400", driver: "pcieport", group: nil, iommu: nil)
        _ = FileManager.default.createFile(atPath: f.root + "/bus/pci/devices/\(a)/config", contents: bridgeConfig(secondary: sec, acs: acs, size: size))
    }
    f.device("0000:03:00.0", driver: "nvidia", group: 12, iommu: smmu)
    f.device("0000:04:00.0", vendor: "0x15b3", device: "0x1021", cls: "0x020000", driver: "mlx5_core", group: 13, iommu: smmu)
    let host = try HostDiscovery(kernel: LinuxKernel(sysfsRoot: f.root, devRoot: base + "/dev")).describe().host
    let rp = try #require(host.device(at: PCIAddress("0000:00:01.0")!))
    #expect(rp.secondaryBus == 1 && rp.acsControl == 0x001f && !rp.isUnknown(.acsControl))
    let usp = try #require(host.device(at: PCIAddress("0000:01:00.0")!))
    #expect(usp.secondaryBus == 2 && usp.acsControl == nil && !usp.isUnknown(.acsControl))   // no ACS capability
    let dsp1 = try #require(host.device(at: PCIAddress("0000:02:01.0")!))
    #expect(dsp1.secondaryBus == 4 && dsp1.acsControl == nil && dsp1.isUnknown(.acsControl))  // 64 bytes: unknown
    let gpu = try #require(host.device(at: PCIAddress("0000:03:00.0")!))
    #expect(gpu.secondaryBus == nil && !gpu.isUnknown(.acsControl))                           // an endpoint: not read
    // The written host file says the same.
    #expect(try HostDescription.parse(SourceText(path: "h", bytes: Array(host.renderYAML().utf8))) == host)

    // Placement reads the path: the redirecting port wins over the unreadable one.
    func peers(_ host: HostDescription) throws -> PeerReport {
        let yaml = """
            apiVersion: vsmmu/v1
            kind: Topology
            metadata: { name: t }
            guests:
              - name: vm1
                devices:
                  - { name: gpu0, host: "0000:03:00.0", vsmmu: auto }
                  - { name: nic0, host: "0000:04:00.0", vsmmu: auto, peer: gpu0 }
            """
        var h = host
        h.kernel.iommufd = true; h.kernel.vfioCdev = true
        for i in h.iommus.indices { h.iommus[i].nesting = true; h.iommus[i].coherent = true; h.iommus[i].unknown = [] }
        for i in h.pciDevices.indices where h.pciDevices[i].iommu != nil { h.pciDevices[i].unknown = []; h.pciDevices[i].canwbs = true }
        let r = Validator.validate(try Topology.parse(SourceText(path: "t.yaml", bytes: Array(yaml.utf8))), host: h)
        #expect(r.diagnostics.map(\.description) == [])
        return try #require(r.placements["vm1"]?.peers.first)
    }
    let redirected = try peers(host)
    #expect(redirected.route == .redirected)
    #expect(redirected.kernelParameter == "pci=config_acs=000xx@0000:02:00.0")
    #expect(redirected.bridges.map(\.address) == ["0000:02:00.0", "0000:02:01.0"])
    // With the redirect cleared, the unreadable port leaves the route unknown.
    var cleared = host
    if let i = cleared.pciDevices.firstIndex(where: { $0.address == PCIAddress("0000:02:00.0")! }) { cleared.pciDevices[i].acsControl = 0x0001 }
    let unknown = try peers(cleared)
    #expect(unknown.route == .unknown && unknown.kernelParameter == nil)
    #expect(unknown.text.contains("0000:02:01.0"))
}
