import Foundation
import Testing
import VsmmuKernel
@testable import VsmmuLinux

/// Discovery of the per-device facts from files (docs/contract.md §3): vfioDriver from the device's
/// modalias against modules.alias (beside the sysfs root), BARs from `resource`, the page size.
private let aliasText = """
alias vfio_pci:v000010DEd00002941sv*sd*bc*sc*i* nvgrace_gpu_vfio_pci
alias vfio_pci:v000015B3d0000101Esv*sd*bc*sc*i* mlx5_vfio_pci
alias vfio_pci:v*d*sv*sd*bc*sc*i* vfio_pci
alias pci:v000010DEd*sv*sd*bc03sc*i* nvidia

"""

@Test func vfioDriverComesFromModulesAliasAndBarsFromResource() throws {
    let base = NSTemporaryDirectory() + "vsmmu-host-\(UUID().uuidString)"
    defer { try? FileManager.default.removeItem(atPath: base) }
    let f = FakeSysfs(root: base + "/sys")
    f.iommu("smmu3.0x0000000016000000")
    f.device("0000:09:01.0", device: "0x2941", driver: "nvidia", group: 12, iommu: "smmu3.0x0000000016000000")
    f.file("bus/pci/devices/0000:09:01.0/modalias", "pci:v000010DEd00002941sv000010DEsd00002046bc03sc02i00\n")
    f.file("bus/pci/devices/0000:09:01.0/resource", """
        0x0000650000000000 0x0000650003ffffff 0x0000000000140204
        0x0000000000000000 0x0000000000000000 0x0000000000000000
        0x0000660000000000 0x0000663fffffffff 0x000000000014220c

        """)
    f.device("0000:0b:00.0", vendor: "0x144d", device: "0xa80a", cls: "0x010802", driver: "nvme", group: 13, iommu: "smmu3.0x0000000016000000")
    f.file("bus/pci/devices/0000:0b:00.0/modalias", "pci:v0000144Dd0000A80Asv0000144Dsd0000A801bc01sc08i02\n")
    // no resource file for the NVMe: its BARs are unknown
    let release = LocalHostFiles().systemName().release
    try FileManager.default.createDirectory(atPath: base + "/lib/modules/\(release)", withIntermediateDirectories: true)
    _ = FileManager.default.createFile(atPath: base + "/lib/modules/\(release)/modules.alias", contents: Data(aliasText.utf8))

    try FileManager.default.createDirectory(atPath: base + "/proc/self", withIntermediateDirectories: true)
    _ = FileManager.default.createFile(atPath: base + "/proc/self/smaps", contents: Data("Rss: 4 kB\nKernelPageSize:       64 kB\n".utf8))
    let k = LinuxKernel(sysfsRoot: f.root, devRoot: base + "/dev")
    let r = try HostDiscovery(kernel: k).describe()
    let gpu = try #require(r.host.device(at: PCIAddress("0000:09:01.0")!))
    #expect(gpu.vfioDriver == "nvgrace_gpu_vfio_pci" && gpu.unknown == [])
    #expect(gpu.bars == [PCIBar(index: 0, size: 64 << 20, prefetchable: false, bits64: true),
                         PCIBar(index: 2, size: 256 << 30, prefetchable: true, bits64: true)])
    let nvme = try #require(r.host.device(at: PCIAddress("0000:0b:00.0")!))
    #expect(nvme.vfioDriver == "vfio-pci")          // only the catch-all alias matches
    #expect(nvme.unknown == [.bars])
    // Not on a VFIO driver and no iommufd: GET_HW_INFO facts are not claimed.
    #expect(gpu.ats == nil && gpu.pasidWidth == nil && gpu.canwbs == nil)
    #expect(r.host.kernel.pageSize == 65536)

    // Without modules.alias, and with a variant driver registered: unknown, never guessed.
    try FileManager.default.removeItem(atPath: base + "/lib/modules/\(release)/modules.alias")
    f.mkdir("bus/pci/drivers/nvgrace_gpu_vfio_pci")
    let again = try HostDiscovery(kernel: k).describe()
    #expect(again.host.device(at: PCIAddress("0000:09:01.0")!)?.unknown == [.vfioDriver])
    #expect(again.notes.contains { $0.contains("modules.alias cannot be read") })
}

@Test func aliasMatchingPrefersTheDevicesOwnVariantDriver() {
    let aliases = VFIODriverMatch.aliases(aliasText)
    #expect(aliases.count == 3)
    #expect(VFIODriverMatch.driver(modalias: "pci:v000015B3d0000101Esv000015B3sd00000025bc02sc00i00", aliases: aliases) == "mlx5_vfio_pci")
    #expect(VFIODriverMatch.driver(modalias: "pci:v00008086d00001234sv0sd0bc02sc00i00", aliases: aliases) == "vfio-pci")
    #expect(VFIODriverMatch.driver(modalias: "pci:v00008086d00001234sv0sd0bc02sc00i00", aliases: []) == "vfio-pci")
    #expect(VFIODriverMatch.driver(modalias: "usb:v1234", aliases: aliases) == nil)
    #expect(VFIODriverMatch.pageSize(smaps: "Size: 4 kB\nKernelPageSize:       64 kB\n") == 65536)
}
