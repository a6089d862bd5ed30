import VsmmuTestSupport
import Foundation
import Testing
#if canImport(FoundationXML)
import FoundationXML
#endif

/// Every guest of every example: QEMU args and libvirt XML against golden files
/// (regenerate with VSMMU_UPDATE_GOLDEN=1), plus the rules a VMM enforces.
let vmmGuests: [(example: String, host: String, guest: String)] = [
    ("one-guest-one-vsmmu", "examples/hosts/grace-2smmu-cmdqv.yaml", "vm1"),
    ("two-vsmmus-four-gpus", "examples/hosts/grace-2smmu-cmdqv.yaml", "train0"),
    ("cmdqv", "examples/hosts/grace-2smmu-cmdqv.yaml", "vm1"),
    ("several-guests", "examples/hosts/grace-2smmu-cmdqv.yaml", "vm1"),
    ("several-guests", "examples/hosts/grace-2smmu-cmdqv.yaml", "vm3"),
    ("devices-without-vsmmu", "examples/hosts/intel-vtd.yaml", "vm1"),
]

@Test(arguments: vmmGuests.map { "\($0.example)/\($0.guest)" })
func goldenVMMConfiguration(key: String) throws {
    let g = vmmGuests.first { "\($0.example)/\($0.guest)" == key }!
    for (suffix, command, extra) in [("qemu.txt", "qemu-args", [String]()), ("qemu-fds.json", "qemu-args", ["--fds", "--format", "json"]), ("libvirt.xml", "libvirt-xml", [])] {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = vsmmu([command, "examples/\(g.example).yaml", "--guest", g.guest, "--host", g.host, "--state-dir", dir] + extra)
        #expect(r.code == 0, "\(r.stderr)")
        let golden = path("Tests/VsmmuCommandsTests/golden/\(g.example).\(g.guest).\(suffix)")
        if ProcessInfo.processInfo.environment["VSMMU_UPDATE_GOLDEN"] == "1" {
            try r.stdout.write(toFile: golden, atomically: true, encoding: .utf8)
            continue
        }
        #expect(r.stdout == (try String(contentsOfFile: golden, encoding: .utf8)), "\(g.example).\(g.guest).\(suffix)")
    }
}

@Test(arguments: vmmGuests.map { "\($0.example)/\($0.guest)" })
func qemuArgsFollowTheAcceleratedModesRules(key: String) throws {
    let g = vmmGuests.first { "\($0.example)/\($0.guest)" == key }!
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let r = vsmmu(["qemu-args", "examples/\(g.example).yaml", "--guest", g.guest, "--host", g.host, "--state-dir", dir, "--format", "json"])
    let doc = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
    let args = doc["args"] as? [String] ?? []
    var devices: [String] = []
    var i = 0
    while i + 1 < args.count { if args[i] == "-device" { devices.append(args[i + 1]) }; i += 1 }
    func prop(_ d: String, _ k: String) -> String? {
        d.split(separator: ",").first { $0.hasPrefix(k + "=") }.map { String($0.dropFirst(k.count + 1)) }
    }
    let pxbs = devices.filter { $0.hasPrefix("pxb-pcie,") }
    let smmus = devices.filter { $0.hasPrefix("arm-smmuv3,") }
    let ports = devices.filter { $0.hasPrefix("pcie-root-port,") }
    let vfios = devices.filter { $0.hasPrefix("vfio-pci,") }
    #expect(Set(pxbs.compactMap { prop($0, "bus_nr") }).count == pxbs.count, "bus_nr unique")
    #expect(Set(ports.compactMap { prop($0, "chassis") }).count == ports.count, "chassis unique")
    #expect(Set(smmus.compactMap { prop($0, "primary-bus") }).count == smmus.count, "one SMMU per root bus")
    #expect(Set(smmus.compactMap { prop($0, "identifier") }).count == smmus.count, "identifiers distinct")
    for s in smmus {
        #expect(prop(s, "accel") == "on")
        #expect(!s.contains("auto"), "every feature explicit: \(s)")
        for k in ["ats", "ril", "ssidsize", "oas", "cmdqv"] { #expect(prop(s, k) != nil, "\(k) missing in \(s)") }
    }
    #expect(vfios.allSatisfy { prop($0, "iommufd") == "iommufd0" })
    // one device per root port, and every device on a root port
    let portIDs = Set(ports.compactMap { prop($0, "id") })
    let used = vfios.compactMap { prop($0, "bus") }
    #expect(Set(used).count == used.count)
    #expect(Set(used).isSubset(of: portIDs))
    #expect(args.contains("iommufd,id=iommufd0"))
}

@Test func libvirtXMLIsWellFormed() throws {
    for g in vmmGuests {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = vsmmu(["libvirt-xml", "examples/\(g.example).yaml", "--guest", g.guest, "--host", g.host, "--state-dir", dir])
        let parser = XMLParser(data: Data(r.stdout.utf8))
        #expect(parser.parse(), "\(g.example)/\(g.guest): \(parser.parserError.map { "\($0)" } ?? "")")
    }
}

@Test func vmmConfigurationFollowsTheAppliedAllocations() throws {
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let base = dir + "/t.yaml"
    try String(contentsOfFile: path("examples/two-vsmmus-four-gpus.yaml"), encoding: .utf8).write(toFile: base, atomically: true, encoding: .utf8)
    #expect(vsmmu(["apply", base, "--host", grace, "--state-dir", dir, "--auto-approve"]).code == 0)
    // remove gpu0: its root port stays, empty, so gpu1 keeps bus 0x12 and vSID 0x1200
    var text = try String(contentsOfFile: base, encoding: .utf8)
    text = text.replacingOccurrences(of: "          - name: gpu0\n            host: 0000:09:01.0\n", with: "")
    try text.write(toFile: base, atomically: true, encoding: .utf8)
    #expect(vsmmu(["apply", base, "--host", grace, "--state-dir", dir, "--auto-approve"]).code == 0)
    let r = vsmmu(["qemu-args", base, "--guest", "train0", "--host", grace, "--state-dir", dir])
    #expect(r.stdout.contains("-device pcie-root-port,id=rp.smmu0.0,bus=pcie.1,chassis=1,addr=0x0 \\\n-device pcie-root-port,id=rp.smmu0.1"))
    #expect(r.stdout.contains("# note: root port rp.smmu0.0 is empty on purpose"))
    #expect(r.stdout.contains("-device vfio-pci,id=gpu1,host=0000:09:02.0,bus=rp.smmu0.1,iommufd=iommufd0"))
    let show = vsmmu(["show", "--host", grace, "--state-dir", dir, "--format", "json"])
    #expect(show.stdout.contains("\"vsid\": \"0x1200\""))
}

@Test func unknownGuestIsAClearError() {
    let r = vsmmu(["qemu-args", "examples/cmdqv.yaml", "--guest", "nope", "--host", grace, "--state-dir", tempDir()])
    #expect(r.code == 1)
    #expect(r.stderr.contains("has no guest 'nope'"))
    #expect(r.stderr.contains("guests: vm1"))
}
