import VsmmuTestSupport
import VsmmuVMM
import Foundation
import Testing

/// The NUMA layout, Generic Initiators, the 64-bit PCI hole and the libvirt dialects
/// (docs/qemu-interface.md §3.4, §6); the goldens in VMMConfigTests pin whole outputs.
let gb200Host = "examples/hosts/gb200-64k.yaml"

/// The GB200-like example with `edit` applied to its text, written to a temp dir.
func gb200Topology(_ edit: (String) -> String = { $0 }) throws -> (dir: String, file: String) {
    let dir = tempDir()
    let file = dir + "/t.yaml"
    try edit(try String(contentsOfFile: path("examples/gb200-four-gpus.yaml"), encoding: .utf8)).write(toFile: file, atomically: true, encoding: .utf8)
    return (dir, file)
}

func qemuArgsList(_ file: String, guest: String, host: String, state: String) throws -> [String] {
    let r = vsmmu(["qemu-args", file, "--guest", guest, "--host", host, "--state-dir", state, "--format", "json"])
    #expect(r.code == 0, "\(r.stderr)")
    let doc = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
    return doc["args"] as? [String] ?? []
}

@Test func aGraceGPUGetsEightInitiatorNodesAndMirroredNodesComeFirst() throws {
    let (dir, file) = try gb200Topology()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let args = try qemuArgsList(file, guest: "gb200vm", host: gb200Host, state: dir)
    let gis = args.filter { $0.hasPrefix("acpi-generic-initiator,") }
    #expect(gis.count == 32)
    #expect(gis.filter { $0.contains("pci-dev=gpu0,") }.map { $0.components(separatedBy: "node=").last! } == (2...9).map(String.init))
    #expect(!gis.contains { $0.contains("pci-dev=nic") }, "a NIC is no Grace GPU: no Generic Initiator nodes by default")
    // nodes 0-33, the RAM on node 0 (not on the machine: QEMU refuses both at once)
    #expect(args.filter { $0.hasPrefix("node,nodeid=") }.count == 34)
    #expect(args.contains("node,nodeid=0,memdev=mem.ram0"))
    #expect(!args.contains { $0.hasPrefix("memory-backend=") })
    #expect(args.contains("pxb-pcie,id=pcie.2,bus_nr=32,bus=pcie.0,numa_node=1"))
    // four GPUs at the 512 GiB floor each, the NICs' 2 MiB, 1 GiB: a 4 TiB window
    #expect(args.contains("highmem-mmio-size=4T"))
}

@Test func theTopologyChoosesEachDevicesInitiatorNodes() throws {
    let (dir, file) = try gb200Topology {
        $0.replacingOccurrences(of: "{ name: gpu0, host: \"0000:09:01.0\" }", with: "{ name: gpu0, host: \"0000:09:01.0\", genericInitiators: 2 }")
            .replacingOccurrences(of: "{ name: gpu1, host: \"0000:09:02.0\" }", with: "{ name: gpu1, host: \"0000:09:02.0\", genericInitiators: 0 }")
            .replacingOccurrences(of: "{ name: nic1, host: \"0000:1a:00.2\" }", with: "{ name: nic1, host: \"0000:1a:00.2\", genericInitiators: 1 }")
    }
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let args = try qemuArgsList(file, guest: "gb200vm", host: gb200Host, state: dir)
    let gis = args.filter { $0.hasPrefix("acpi-generic-initiator,") }
    #expect(gis.filter { $0.contains("pci-dev=gpu0,") }.count == 2)
    #expect(!gis.contains { $0.contains("pci-dev=gpu1,") })
    #expect(gis.contains("acpi-generic-initiator,id=gi.nic1.0,pci-dev=nic1,node=20"), "\(gis)")
    // gpu1 without initiator nodes counts its 256 GiB BAR, not the 512 GiB floor:
    // 512 + 256 + 512 + 512 GiB (gpu0, gpu1, gpu2, gpu3; nic1 at its floor too) + 2 MiB + 1 GiB -> 4 TiB still
    #expect(args.contains("highmem-mmio-size=4T"))
}

@Test func theHoleIsAPowerOfTwoAboveTheBARsAndTheMargin() throws {
    // only gpu0 and gpu2: 2 x 512 GiB + 1 GiB -> 2 TiB (not 1 TiB: the margin counts)
    let (dir, file) = try gb200Topology {
        $0.replacingOccurrences(of: "          - { name: gpu1, host: \"0000:09:02.0\" }\n", with: "")
            .replacingOccurrences(of: "          - { name: gpu3, host: \"0000:19:02.0\" }\n", with: "")
            .replacingOccurrences(of: "          - { name: nic0, host: \"0000:0a:00.2\" }\n", with: "")
            .replacingOccurrences(of: "          - { name: nic1, host: \"0000:1a:00.2\" }\n", with: "")
    }
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let args = try qemuArgsList(file, guest: "gb200vm", host: gb200Host, state: dir)
    #expect(args.contains("highmem-mmio-size=2T"), "\(args.filter { $0.contains("highmem") })")
    let x = vsmmu(["libvirt-xml", file, "--guest", "gb200vm", "--host", gb200Host, "--state-dir", dir])
    #expect(x.stdout.contains("<pcihole64 unit='KiB'>\(2 << 30)</pcihole64>"))
}

@Test func tooManyNUMANodesAreAClearError() throws {
    // 127 asked for passes validation, but with the two mirrored host nodes QEMU would need 129
    let (dir, file) = try gb200Topology {
        $0.replacingOccurrences(of: "\" }", with: "\", genericInitiators: 31 }")
            .replacingOccurrences(of: "{ name: nic0, host: \"0000:0a:00.2\", genericInitiators: 31 }", with: "{ name: nic0, host: \"0000:0a:00.2\", genericInitiators: 3 }")
            .replacingOccurrences(of: "{ name: nic1, host: \"0000:1a:00.2\", genericInitiators: 31 }", with: "{ name: nic1, host: \"0000:1a:00.2\" }")
    }
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let r = vsmmu(["qemu-args", file, "--guest", "gb200vm", "--host", gb200Host, "--state-dir", dir])
    #expect(r.code == 1)
    #expect(r.stderr.contains("129 NUMA nodes"), "\(r.stderr)")
    #expect(r.stderr.contains("at most 128"))
}

@Test func devicesOnHostNodeZeroWithoutGPUsGetNoNUMA() throws {
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let args = try qemuArgsList("examples/one-guest-one-vsmmu.yaml", guest: "vm1", host: grace, state: dir)
    #expect(!args.contains("-numa"))
    #expect(args.contains("memory-backend=mem.ram0"))
    #expect(!args.contains { $0.contains("numa_node=") || $0.contains("highmem-mmio-size") })
}

@Test func theDialectsSpellTheSubstreamIDWidthTheirWay() throws {
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let up = vsmmu(["libvirt-xml", "examples/cmdqv.yaml", "--guest", "vm1", "--host", grace, "--state-dir", dir])
    let nv = vsmmu(["libvirt-xml", "examples/cmdqv.yaml", "--guest", "vm1", "--host", grace, "--state-dir", dir, "--dialect", "nvidia"])
    #expect(up.code == 0 && nv.code == 0)
    #expect(up.stdout.contains(" ssidsize='") && !up.stdout.contains("ssidSize"))
    #expect(nv.stdout.contains(" ssidSize='") && !nv.stdout.contains("ssidsize"))
    #expect(nv.stderr.contains("NVIDIA's libvirt"))
    // nothing else differs
    #expect(up.stdout.replacingOccurrences(of: "ssidsize=", with: "ssidSize=").split(separator: "\n").dropFirst()
            == nv.stdout.split(separator: "\n").dropFirst())
}

@Test func aReleaseThatCannotSayAccelIsRefusedAndTheOneThatCanNamed() throws {
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let r = vsmmu(["libvirt-xml", "examples/two-vsmmus-four-gpus.yaml", "--guest", "train0", "--host", grace, "--state-dir", dir, "--libvirt-version", "12.5"])
    #expect(r.code == 1)
    #expect(r.stdout.isEmpty, "no domain with an emulated SMMUv3 in place of the accelerated one")
    #expect(r.stderr.contains("cannot say accel=on"))
    #expect(r.stderr.contains("smmu0, smmu1"))
    #expect(r.stderr.contains("--libvirt-version 12.7") && r.stderr.contains("--dialect nvidia"))
    // 12.7 can; a guest without vSMMUs needs only 12.2's <iommufd fdgroup>
    #expect(vsmmu(["libvirt-xml", "examples/two-vsmmus-four-gpus.yaml", "--guest", "train0", "--host", grace, "--state-dir", dir, "--libvirt-version", "12.7"]).code == 0)
    let plain = ["libvirt-xml", "examples/devices-without-vsmmu.yaml", "--guest", "vm1", "--host", "examples/hosts/intel-vtd.yaml", "--state-dir", tempDir()]
    #expect(vsmmu(plain + ["--libvirt-version", "12.2"]).code == 0)
    let old = vsmmu(plain + ["--libvirt-version", "12.1.0"])
    #expect(old.code == 1 && old.stderr.contains("<iommufd fdgroup>"), "\(old.stderr)")
}

@Test func unknownDialectsAndVersionsAreClearErrors() {
    let base = ["libvirt-xml", "examples/cmdqv.yaml", "--guest", "vm1", "--host", grace, "--state-dir", tempDir()]
    let d = vsmmu(base + ["--dialect", "kubevirt"])
    #expect(d.code == 1 && d.stderr.contains("no libvirt dialect") && d.stderr.contains("upstream, nvidia"), "\(d.stderr)")
    let v = vsmmu(base + ["--libvirt-version", "twelve"])
    #expect(v.code == 1 && v.stderr.contains("major.minor"), "\(v.stderr)")
}

@Test func initiatorNodeSetsAreWrittenAsLibvirtReadsThem() {
    #expect(GuestNUMA.nodeSet([2, 3, 4, 5]) == "2-5")
    #expect(GuestNUMA.nodeSet([7]) == "7")
    #expect(GuestNUMA.nodeSet([2, 4]) == "2,4")
    #expect(LibvirtDialect.Version("12.7.0") == LibvirtDialect.Version(12, 7))
    #expect(LibvirtDialect.Version("12") == nil)
}

@Test func onQ35TheHoleIsTheHostBridgesPCIHole64Size() throws {
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    // a 64 GiB 64-bit prefetchable BAR: 64 GiB + 1 GiB -> 128 GiB, above q35's 32 GiB
    let host = dir + "/host.yaml"
    try (try String(contentsOfFile: path("examples/hosts/intel-vtd.yaml"), encoding: .utf8))
        .replacingOccurrences(of: "  - address: \"0000:00:03.0\"\n", with: "  - address: \"0000:00:03.0\"\n    bars: [{ index: 0, size: 64GiB, prefetchable: true, bits64: true }]\n")
        .write(toFile: host, atomically: true, encoding: .utf8)
    let args = try qemuArgsList("examples/devices-without-vsmmu.yaml", guest: "vm1", host: host, state: dir)
    #expect(args.contains("q35-pcihost.pci-hole64-size=128G"), "\(args)")
    #expect(!args.contains { $0.contains("highmem-mmio-size") || $0.hasPrefix("node,") })
}

@Test func validateRefusesInitiatorNodesQEMUCannotBuild() throws {
    let (dir, file) = try gb200Topology {
        $0.replacingOccurrences(of: "{ name: gpu0, host: \"0000:09:01.0\" }", with: "{ name: gpu0, host: \"0000:09:01.0\", genericInitiators: 64 }")
            .replacingOccurrences(of: "{ name: gpu1, host: \"0000:09:02.0\" }", with: "{ name: gpu1, host: \"0000:09:02.0\", genericInitiators: 64 }")
    }
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let r = vsmmu(["validate", file])
    #expect(r.code != 0)
    #expect(r.stderr.contains("asks for 128 Generic Initiator nodes"), "\(r.stderr)")
    #expect(r.stderr.contains("t.yaml:"), "the error points into the file: \(r.stderr)")
    let schema = vsmmu(["validate", try gb200Topology { $0.replacingOccurrences(of: "\" }", with: "\", genericInitiators: 65 }") }.file])
    #expect(schema.code != 0 && schema.stderr.contains("genericInitiators"), "\(schema.stderr)")
}
