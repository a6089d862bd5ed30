import Foundation
import Testing
import VsmmuTestSupport

@Test(.enabled(if: !FileManager.default.fileExists(atPath: "/dev/iommu"), "this machine has iommufd"))
func hostOnAMachineWithoutIommufdIsAClearError() {
    let r = vsmmu(["host"])
    #expect(r.code == 1)
    #expect(r.stderr.contains("this kernel has no /dev/iommu"))
    #expect(r.stderr.contains("hint: describe a simulated host instead"))
}

@Test func hostOnAFakeSysfsTreeIsAcceptedByValidate() throws {
    let root = tempDir()
    defer { try? FileManager.default.removeItem(atPath: root) }
    let fm = FileManager.default
    func mk(_ p: String) { try? fm.createDirectory(atPath: root + "/" + p, withIntermediateDirectories: true) }
    func put(_ p: String, _ s: String) { _ = fm.createFile(atPath: root + "/" + p, contents: Data(s.utf8)) }
    func ln(_ p: String, _ t: String) { try? fm.createSymbolicLink(atPath: root + "/" + p, withDestinationPath: t) }
    mk("class/iommu/dmar0"); mk("bus/pci/drivers/e1000e"); mk("kernel/iommu_groups/4/devices")
    mk("dev/vfio/devices"); put("dev/iommu", "")   // device nodes stand-ins: iommufd and cdev present
    let d = "bus/pci/devices/0000:00:04.0"
    mk(d)
    put(d + "/vendor", "0x8086\n"); put(d + "/device", "0x10d3\n"); put(d + "/class", "0x020000\n"); put(d + "/numa_node", "-1\n")
    ln(d + "/driver", "../../../../bus/pci/drivers/e1000e")
    ln(d + "/iommu_group", "../../../../kernel/iommu_groups/4")
    ln(d + "/iommu", "../../../../class/iommu/dmar0")
    ln("kernel/iommu_groups/4/devices/0000:00:04.0", "../../../../bus/pci/devices/0000:00:04.0")
    put("kernel/iommu_groups/4/reserved_regions", "0x00000000fee00000 0x00000000feefffff msi\n")

    let r = vsmmu(["host", "--sysfs-root", root, "--dev-root", root + "/dev"])
    #expect(r.code == 0, "\(r.stderr)")
    #expect(r.stdout.contains("address: \"0000:00:04.0\""))
    #expect(r.stdout.contains("iommufd: true"))
    #expect(r.stdout.contains("unknown: [nesting, coherent, ats, ril, pasid, ssidSize, oas]"))
    #expect(r.stderr.contains("dmar0: no device behind it is bound to vfio-pci"))
    let hostFile = root + "/host.yaml"
    try r.stdout.write(toFile: hostFile, atomically: true, encoding: .utf8)
    let topo = root + "/t.yaml"
    try """
    apiVersion: vsmmu/v1
    kind: Topology
    metadata: { name: t }
    guests:
      - name: vm1
        devices: [{ name: nic0, host: 0000:00:04.0 }]
      - name: vm2
        vsmmus:
          - name: s0
            devices: [{ name: x, host: 0000:00:04.0 }]
    """.write(toFile: topo, atomically: true, encoding: .utf8)
    let v = vsmmu(["validate", topo, "--host", hostFile])
    // the host file itself is accepted; the topology errors are about the topology
    #expect(!v.stderr.contains("host description is invalid"))
    #expect(v.stderr.contains("unknown (the host description could not read them)"))
    #expect(v.stderr.contains("is used twice"))
}

@Test func hostThroughARemoteExecutorDescribesTheTreeItServes() throws {
    let binary = try #require(vsmmuRemoteBinary, "vsmmu-remote is not built next to the tests (swift build builds it)")
    let root = tempDir()
    defer { try? FileManager.default.removeItem(atPath: root) }
    let fm = FileManager.default
    func mk(_ p: String) { try? fm.createDirectory(atPath: root + "/" + p, withIntermediateDirectories: true) }
    func put(_ p: String, _ s: String) { _ = fm.createFile(atPath: root + "/" + p, contents: Data(s.utf8)) }
    func ln(_ p: String, _ t: String) { try? fm.createSymbolicLink(atPath: root + "/" + p, withDestinationPath: t) }
    // the executor's --root holds sys/ and dev/, as the guest's / would
    mk("sys/class/iommu/dmar0"); mk("sys/bus/pci/drivers/e1000e"); mk("sys/kernel/iommu_groups/4/devices")
    mk("dev/vfio/devices"); put("dev/iommu", "")
    let d = "sys/bus/pci/devices/0000:00:04.0"
    mk(d)
    put(d + "/vendor", "0x8086\n"); put(d + "/device", "0x10d3\n"); put(d + "/class", "0x020000\n"); put(d + "/numa_node", "-1\n")
    ln(d + "/driver", "../../../../bus/pci/drivers/e1000e")
    ln(d + "/iommu_group", "../../../../kernel/iommu_groups/4")
    ln(d + "/iommu", "../../../../class/iommu/dmar0")
    put("sys/kernel/iommu_groups/4/reserved_regions", "0x00000000fee00000 0x00000000feefffff msi\n")

    let server = try UnixSocketExecutor(binary: binary, root: root)
    let remote = vsmmu(["host", "--remote", "unix:" + server.path])
    let local = vsmmu(["host", "--sysfs-root", root + "/sys", "--dev-root", root + "/dev"])
    #expect(remote.code == 0, "\(remote.stderr)")
    #expect(remote.stdout.contains("name: \"unix:\(server.path)\""))
    // everything but the host's name is what the same tree read locally gives
    let body = { (s: String) in s.split(separator: "\n").filter { !$0.hasPrefix("  name:") } }
    #expect(body(remote.stdout) == body(local.stdout))
    #expect(remote.stdout.contains("address: \"0000:00:04.0\""))
    #expect(remote.stdout.contains("iommufd: true"))
}

@Test func hostWithAnUnreachableRemoteSaysWhere() {
    let r = vsmmu(["host", "--remote", "unix:/nonexistent/vsmmu-remote.sock"])
    #expect(r.code == 1)
    #expect(r.stderr.contains("unix:/nonexistent/vsmmu-remote.sock"))
    #expect(vsmmu(["host", "--remote", "/no/scheme"]).code == 64)
    #expect(vsmmu(["agent", "--remote", "unix:/x", "--host", "examples/hosts/selftest.yaml"]).code == 64)
}
