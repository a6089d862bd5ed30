import Foundation
import Testing
import VsmmuKernel
@testable import VsmmuLinux

/// A sysfs tree in a temp dir, shaped like the real one (docs/kernel-interface.md §8).
final class FakeSysfs {
    let root: String
    /// `root`: where the tree goes (inside a remote executor's --root: it follows no link
    /// out of that directory).
    init(root: String = NSTemporaryDirectory() + "vsmmu-sysfs-\(UUID().uuidString)") {
        self.root = root
        mkdir("bus/pci/devices"); mkdir("bus/pci/drivers/vfio-pci"); mkdir("kernel/iommu_groups"); mkdir("class/iommu")
        file("bus/pci/drivers_probe", "")
        file("bus/pci/drivers/vfio-pci/unbind", "")
    }
    deinit { try? FileManager.default.removeItem(atPath: root) }

    func mkdir(_ p: String) { try? FileManager.default.createDirectory(atPath: root + "/" + p, withIntermediateDirectories: true) }
    func file(_ p: String, _ text: String) { _ = FileManager.default.createFile(atPath: root + "/" + p, contents: Data(text.utf8)) }
    func link(_ p: String, to target: String) { try? FileManager.default.createSymbolicLink(atPath: root + "/" + p, withDestinationPath: target) }
    func read(_ p: String) -> String { (try? String(contentsOfFile: root + "/" + p, encoding: .utf8)) ?? "<missing>" }

    func iommu(_ name: String) { mkdir("class/iommu/\(name)/devices") }

    func device(_ a: String, vendor: String = "0x10de", device: String = "0x2342", cls: String = "0x030200", driver: String?,
                group: Int?, iommu: String?, numa: String = "0", vfio: Int? = nil, override: String = "(null)") {
        let d = "bus/pci/devices/\(a)"
        mkdir(d)
        file(d + "/vendor", vendor + "\n"); file(d + "/device", device + "\n"); file(d + "/class", cls + "\n")
        file(d + "/numa_node", numa + "\n"); file(d + "/driver_override", override + "\n")
        if let driver {
            mkdir("bus/pci/drivers/\(driver)")
            file("bus/pci/drivers/\(driver)/unbind", "")
            link(d + "/driver", to: "../../../../bus/pci/drivers/\(driver)")
        }
        if let group {
            mkdir("kernel/iommu_groups/\(group)/devices")
            link(d + "/iommu_group", to: "../../../../kernel/iommu_groups/\(group)")
            link("kernel/iommu_groups/\(group)/devices/\(a)", to: "../../../../bus/pci/devices/\(a)")
        }
        if let iommu { link(d + "/iommu", to: "../../../../class/iommu/\(iommu)") }
        if let vfio { mkdir(d + "/vfio-dev/vfio\(vfio)") }
    }
}

func pci(_ s: String) -> PCIAddress { PCIAddress(s)! }

@Test func discoveryReadsDevicesGroupsAndIOMMUs() throws {
    let f = FakeSysfs()
    f.iommu("smmu3.0x0000000016000000")
    f.device("0000:09:01.0", driver: "nvidia", group: 12, iommu: "smmu3.0x0000000016000000")
    f.device("0000:09:02.0", driver: "vfio-pci", group: 13, iommu: "smmu3.0x0000000016000000", numa: "-1", vfio: 4, override: "vfio-pci")
    f.device("0000:0a:00.0", cls: "0x020000", driver: nil, group: nil, iommu: nil)
    f.file("kernel/iommu_groups/12/reserved_regions", "0x0000000008000000 0x00000000080fffff msi\n")
    let s = SysfsTree(root: f.root)
    #expect(try s.pciAddresses() == [pci("0000:09:01.0"), pci("0000:09:02.0"), pci("0000:0a:00.0")])
    let gpu = try #require(s.device(pci("0000:09:01.0")))
    #expect(gpu.vendor == 0x10de && gpu.device == 0x2342 && gpu.classCode == 0x030200)
    #expect(gpu.driver == "nvidia" && gpu.driverOverride == nil && gpu.iommuGroup == 12 && gpu.iommu == "smmu3.0x0000000016000000")
    #expect(gpu.numaNode == 0 && gpu.vfioDevIndex == nil)
    let v = try #require(s.device(pci("0000:09:02.0")))
    #expect(v.driver == "vfio-pci" && v.driverOverride == "vfio-pci" && v.vfioDevIndex == 4 && v.numaNode == -1)
    let nic = try #require(s.device(pci("0000:0a:00.0")))
    #expect(nic.driver == nil && nic.iommuGroup == nil && nic.iommu == nil)
    #expect(s.device(pci("0000:99:00.0")) == nil)
    #expect(s.groupMembers(12) == [pci("0000:09:01.0")])
    #expect(s.iommuNames() == ["smmu3.0x0000000016000000"])
    let r = s.reservedRegions(group: 12)
    #expect(r.count == 1 && r[0].start == 0x800_0000 && r[0].last == 0x80f_ffff && r[0].type == "msi")
    #expect(s.driverLoaded("vfio-pci"))
    #expect(!s.driverLoaded("../vfio-pci"))
}

@Test func oddEntriesAreSkippedNotTrusted() throws {
    let f = FakeSysfs()
    f.mkdir("bus/pci/devices/not-a-pci-address")
    f.mkdir("bus/pci/devices/0000:09:01.0x")
    f.device("0000:09:01.0", driver: nil, group: nil, iommu: nil)
    f.link("bus/pci/devices/0000:09:01.0/iommu_group", to: "../../../../kernel/iommu_groups/abc")
    f.link("bus/pci/devices/0000:09:01.0/driver", to: "../../../../bus/pci/drivers/..")
    let s = SysfsTree(root: f.root)
    #expect(try s.pciAddresses() == [pci("0000:09:01.0")])
    let d = try #require(s.device(pci("0000:09:01.0")))
    #expect(d.iommuGroup == nil)      // a group that is not a number is no group
    #expect(d.driver == nil)          // a driver named ".." is refused
}

@Test func missingSysfsIsAnError() {
    #expect(throws: KernelCallError.self) { try SysfsTree(root: "/nonexistent-\(UUID())").pciAddresses() }
}

@Test func bindingWritesGoToTheRightAttributes() throws {
    let f = FakeSysfs()
    f.device("0000:09:01.0", driver: "nvidia", group: 12, iommu: nil)
    let s = SysfsTree(root: f.root)
    try s.writeDriverOverride(pci("0000:09:01.0"), "vfio-pci")
    #expect(f.read("bus/pci/devices/0000:09:01.0/driver_override") == "vfio-pci")
    try s.unbind(pci("0000:09:01.0"), driver: "nvidia")
    #expect(f.read("bus/pci/drivers/nvidia/unbind") == "0000:09:01.0")
    try s.driversProbe(pci("0000:09:01.0"))
    #expect(f.read("bus/pci/drivers_probe") == "0000:09:01.0")
    try s.writeDriverOverride(pci("0000:09:01.0"), nil)
    #expect(f.read("bus/pci/devices/0000:09:01.0/driver_override") == "\n")
}

@Test func badDriverNamesNeverBecomePaths() {
    let f = FakeSysfs()
    f.device("0000:09:01.0", driver: "nvidia", group: 12, iommu: nil)
    let s = SysfsTree(root: f.root)
    for bad in ["../../../etc", "a/b", "", ".."] {
        do { try s.unbind(pci("0000:09:01.0"), driver: bad); Issue.record("accepted \(bad)") } catch {
            #expect(error.errno == .EINVAL)
        }
    }
    #expect(throws: KernelCallError.self) { try s.writeDriverOverride(pci("0000:09:01.0"), "x/../y") }
}

@Test func writeFailuresCarryTheKernelsErrno() {
    let f = FakeSysfs()
    let s = SysfsTree(root: f.root)
    do { try s.unbind(pci("0000:09:01.0"), driver: "nvme"); Issue.record("no error") } catch {
        #expect(error.call == "SYSFS_UNBIND")
        #expect(error.errno == .ENOENT)   // no such driver directory
    }
}

@Test func hostDiscoveryFromSysfsOnlySaysWhatItCannotKnow() throws {
    let f = FakeSysfs()
    f.iommu("smmu3.0x0000000016000000")
    f.device("0000:09:01.0", driver: "nvidia", group: 12, iommu: "smmu3.0x0000000016000000")
    f.file("kernel/iommu_groups/12/reserved_regions", "0x0000000008000000 0x00000000080fffff msi\n")
    let dev = NSTemporaryDirectory() + "vsmmu-dev-\(UUID().uuidString)"   // no /dev/iommu here
    let k = LinuxKernel(sysfsRoot: f.root, devRoot: dev)
    let r = try HostDiscovery(kernel: k).describe()
    #expect(r.host.kernel.iommufd == false)
    #expect(r.host.iommus.count == 1)
    let i = r.host.iommus[0]
    #expect(i.type == .armSMMUv3)
    #expect(Set(i.unknown) == ["nesting", "coherent", "ats", "ril", "pasid", "ssidSize", "oas"])
    #expect(i.reservedRegions == [ReservedRegion(start: 0x800_0000, size: 0x10_0000, type: "msi")])
    #expect(r.notes.contains { $0.contains("no device behind it is bound to vfio-pci") })
    #expect(r.host.pciDevices.map(\.address) == [pci("0000:09:01.0")])
}

@Test func vtdFactsComeFromSysfsWithoutBindingADevice() throws {
    let f = FakeSysfs()
    f.iommu("dmar0")
    f.mkdir("class/iommu/dmar0/intel-iommu")
    // QEMU's emulated VT-d in the lab: MGAW 38 (39-bit), no ecap.NEST
    f.file("class/iommu/dmar0/intel-iommu/cap", "d2008c22260286\n")
    f.file("class/iommu/dmar0/intel-iommu/ecap", "f00f5e\n")
    f.device("0000:00:01.0", driver: nil, group: 1, iommu: "dmar0")
    let k = LinuxKernel(sysfsRoot: f.root, devRoot: NSTemporaryDirectory() + "none-\(UUID())")
    let i = try #require(try HostDiscovery(kernel: k).describe().host.iommus.first)
    #expect(i.type == .intelVTd)
    #expect(i.unknown == [])
    #expect(i.nesting == false)                 // ecap bit 26 clear
    #expect(i.oas == Int((0xd2008c22260286 as UInt64) >> 16 & 0x3f) + 1)   // cap.MGAW + 1
}

/// A device's `uevent` file, when there is one, gives its driver, IDs and class in one read;
/// they are the values the separate files hold.
@Test func theUeventFileGivesTheDriverIDsAndClass() throws {
    let root = NSTemporaryDirectory() + "vsmmu-uevent-\(UUID().uuidString)"
    defer { try? FileManager.default.removeItem(atPath: root) }
    let dir = root + "/bus/pci/devices/0000:00:02.0"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    let uevent = "DRIVER=e1000e\nPCI_CLASS=20000\nPCI_ID=8086:10D3\nPCI_SUBSYS_ID=8086:0000\nPCI_SLOT_NAME=0000:00:02.0\nMODALIAS=pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00\n"
    try uevent.write(toFile: dir + "/uevent", atomically: true, encoding: .utf8)
    try "(null)\n".write(toFile: dir + "/driver_override", atomically: true, encoding: .utf8)
    try "-1\n".write(toFile: dir + "/numa_node", atomically: true, encoding: .utf8)
    let d = try #require(SysfsTree(root: root).device(PCIAddress("0000:00:02.0")!))
    #expect(d.driver == "e1000e" && d.vendor == 0x8086 && d.device == 0x10d3 && d.classCode == 0x020000)
    #expect(d.driverOverride == nil && d.numaNode == -1)
    // Unbound: no DRIVER= line.
    try uevent.replacingOccurrences(of: "DRIVER=e1000e\n", with: "").write(toFile: dir + "/uevent", atomically: true, encoding: .utf8)
    #expect(SysfsTree(root: root).device(PCIAddress("0000:00:02.0")!)?.driver == nil)
    #expect(SysfsTree(root: root).device(PCIAddress("0000:00:03.0")!) == nil)
}
