import VsmmuTestSupport
import VsmmuVMM
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
    ("gb200-four-gpus", "examples/hosts/gb200-64k.yaml", "gb200vm"),
    ("gb200-auto", "examples/hosts/gb200-tray.yaml", "gb200vm"),
]

@Test(arguments: vmmGuests.map { "\($0.example)/\($0.guest)" })
func goldenVMMConfiguration(key: String) throws {
    let g = vmmGuests.first { "\($0.example)/\($0.guest)" == key }!
    for (suffix, command, extra) in [("qemu.txt", "qemu-args", [String]()), ("qemu.argv", "qemu-args", ["--format", "argv"]),
                                     ("qemu-fds.json", "qemu-args", ["--fds", "--format", "json"]), ("qemu-fds.argv", "qemu-args", ["--fds", "--format", "argv"]),
                                     ("libvirt.xml", "libvirt-xml", []), ("libvirt-nvidia.xml", "libvirt-xml", ["--dialect", "nvidia"])] {
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
    text = text.replacingOccurrences(of: "          - name: gpu0\n            host: \"0000:09:01.0\"\n", with: "")
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

/// `--fds`: every fd QEMU is given is a `{vsmmu-GUEST-NAME}` placeholder listed under "fds",
/// and numbers for exactly those leave no placeholder and only numeric fd references.
@Test(arguments: vmmGuests.map { "\($0.example)/\($0.guest)" })
func everyFDReferenceIsAPlaceholder(key: String) throws {
    let g = vmmGuests.first { "\($0.example)/\($0.guest)" == key }!
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let r = vsmmu(["qemu-args", "examples/\(g.example).yaml", "--guest", g.guest, "--host", g.host, "--state-dir", dir, "--fds", "--format", "json"])
    #expect(r.code == 0, "\(r.stderr)")
    let doc = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
    let args = try #require(doc["args"] as? [String])
    let fds = try #require(doc["fds"] as? [String: String])
    func refs(_ a: String) -> [String] {
        a.split(separator: ",").compactMap { p -> String? in
            if p.hasPrefix("fd=") { return String(p.dropFirst(3)) }
            if p.hasPrefix("mem-path=/proc/self/fd/") { return String(p.dropFirst("mem-path=/proc/self/fd/".count)) }
            return nil
        }
    }
    let used = args.flatMap(refs)
    #expect(used.contains("{vsmmu-\(g.guest)-iommufd}"))
    #expect(!args.contains { $0.contains("host=") }, "no host= path with --fds")
    for u in used { #expect(u.hasPrefix("{vsmmu-\(g.guest)-") && u.hasSuffix("}"), "\(u) is not a placeholder") }
    #expect(Set(used.map { String($0.dropFirst().dropLast()) }) == Set(fds.keys), "every placeholder described under fds, and only those")
    var numbers: [String: Int32] = [:]
    for (i, k) in fds.keys.sorted().enumerated() { numbers[k] = Int32(10 + i) }
    let resolved = try FDPlaceholder.substitute(in: args, numbers: numbers)
    #expect(resolved.allSatisfy { FDPlaceholder.unresolved(in: $0).isEmpty })
    for n in resolved.flatMap(refs) { #expect(Int32(n) != nil, "fd reference \(n) is not a number after substitution") }
}

@Test func fdPlaceholdersHaveOneNaming() throws {
    #expect(FDPlaceholder.name(guest: "vm1", thing: .iommufd) == "vsmmu-vm1-iommufd")
    #expect(FDPlaceholder.token(guest: "vm1", thing: .device("gpu0")) == "{vsmmu-vm1-gpu0}")
    #expect(FDPlaceholder.token(guest: "vm1", thing: .memory("ram0")) == "{vsmmu-vm1-ram0}")
    let names = try FDPlaceholder.names(guest: "vm1", devices: ["gpu0"], memory: ["ram0"])
    #expect(names == ["vsmmu-vm1-iommufd": .iommufd, "vsmmu-vm1-gpu0": .device("gpu0"), "vsmmu-vm1-ram0": .memory("ram0")])
    #expect(throws: FDPlaceholder.Collision.self) { try FDPlaceholder.names(guest: "vm1", devices: ["iommufd"], memory: []) }
    #expect(throws: FDPlaceholder.Collision.self) { try FDPlaceholder.names(guest: "vm1", devices: ["a"], memory: ["a"]) }
}

@Test func substituteReplacesEveryPlaceholderAndNamesTheOnesLeft() throws {
    let args = ["-object", "iommufd,id=iommufd0,fd={vsmmu-vm1-iommufd}",
                "-device", "vfio-pci,id=gpu0,fd={vsmmu-vm1-gpu0},bus=rp",
                "-object", "memory-backend-file,id=m,mem-path=/proc/self/fd/{vsmmu-vm1-ram0},share=on",
                "-name", "{not-ours}"]
    let all: [String: Int32] = ["vsmmu-vm1-iommufd": 3, "vsmmu-vm1-gpu0": 4, "vsmmu-vm1-ram0": 5, "vsmmu-vm1-unused": 9]
    #expect(try FDPlaceholder.substitute(in: args, numbers: all) == [
        "-object", "iommufd,id=iommufd0,fd=3", "-device", "vfio-pci,id=gpu0,fd=4,bus=rp",
        "-object", "memory-backend-file,id=m,mem-path=/proc/self/fd/5,share=on", "-name", "{not-ours}"])
    do {
        _ = try FDPlaceholder.substitute(in: args + ["x={vsmmu-vm1-gpu0}"], numbers: ["vsmmu-vm1-iommufd": 3])
        Issue.record("a missing fd number must be an error")
    } catch {
        #expect(error.names == ["vsmmu-vm1-gpu0", "vsmmu-vm1-ram0"])
        #expect("\(error)".contains("{vsmmu-vm1-gpu0}, {vsmmu-vm1-ram0}, which are no fd of this hand-over"))
        #expect(error.hint == "its fds: {vsmmu-vm1-iommufd}")
    }
}

/// `--format argv` survives `$(...)` word splitting: split on spaces, it is the JSON args.
@Test(arguments: vmmGuests.map { "\($0.example)/\($0.guest)" })
func argvIsTheArgumentsOnOneLine(key: String) throws {
    let g = vmmGuests.first { "\($0.example)/\($0.guest)" == key }!
    for extra in [[String](), ["--fds"]] {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let base = ["qemu-args", "examples/\(g.example).yaml", "--guest", g.guest, "--host", g.host, "--state-dir", dir] + extra
        let line = vsmmu(base + ["--format", "argv"])
        let json = vsmmu(base + ["--format", "json"])
        #expect(line.code == 0, "\(line.stderr)")
        let doc = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any])
        #expect(line.stdout.hasSuffix("\n") && line.stdout.filter { $0 == "\n" }.count == 1)
        #expect(!line.stdout.contains("#") && !line.stdout.contains("\\"))
        #expect(line.stdout.dropLast().split(separator: " ", omittingEmptySubsequences: false).map(String.init) == doc["args"] as? [String])
    }
}

@Test func argvRefusesAnArgumentTheShellWouldSplit() {
    for (bad, reason) in [("mem-path=/my hugepages", "contains a space"), ("a\tb", "contains whitespace"), ("x=*", "glob character '*'"), ("", "is empty")] {
        let o = QEMUArgs.Output(platform: .armVirt, machine: [], args: ["-object", bad])
        #expect(throws: QEMUArgs.UnsafeArgument.self) { try QEMUArgs.argv(o) }
        do { _ = try QEMUArgs.argv(o) } catch { #expect("\(error)".contains(reason)) }
    }
}

/// Plain passthrough on Intel VT-d is an x86 q35 guest, with the machine RAM given as a
/// separate -machine (QEMU merges every -machine into one set of options).
@Test func intelHostGivesQ35Arguments() throws {
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let r = vsmmu(["qemu-args", "examples/devices-without-vsmmu.yaml", "--guest", "vm1", "--host", "examples/hosts/intel-vtd.yaml", "--state-dir", dir, "--format", "json"])
    let doc = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
    #expect(doc["platform"] as? String == "x86_64-q35")
    #expect((doc["machine"] as? [String])?.prefix(2) == ["-machine", "q35,accel=kvm"])
    let args = try #require(doc["args"] as? [String])
    #expect(args.joined(separator: " ").contains("-machine memory-backend=mem.ram0 -m 2G"))
    #expect(!args.contains { $0.contains("arm-smmuv3") || $0.contains("virt") })
    let xml = vsmmu(["libvirt-xml", "examples/devices-without-vsmmu.yaml", "--guest", "vm1", "--host", "examples/hosts/intel-vtd.yaml", "--state-dir", dir])
    #expect(xml.stdout.contains("<type arch='x86_64' machine='q35'>hvm</type>"))
}

@Test func aDeviceNamedLikeAnotherFDIsRefusedWithFDs() throws {
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let file = dir + "/t.yaml"
    try String(contentsOfFile: path("examples/devices-without-vsmmu.yaml"), encoding: .utf8)
        .replacingOccurrences(of: "name: edu0", with: "name: iommufd").write(toFile: file, atomically: true, encoding: .utf8)
    let r = vsmmu(["qemu-args", file, "--guest", "vm1", "--host", "examples/hosts/intel-vtd.yaml", "--state-dir", dir, "--fds"])
    #expect(r.code == 1)
    #expect(r.stderr.contains("the guest's iommufd and device 'iommufd' would share the fd placeholder {vsmmu-vm1-iommufd}"), "\(r.stderr)")
    #expect(vsmmu(["qemu-args", file, "--guest", "vm1", "--host", "examples/hosts/intel-vtd.yaml", "--state-dir", dir]).code == 0, "without --fds there is no fd to name")
}

/// The hand-over form: the iommufd comes from an fd group named as qemu-args names it,
/// every hostdev uses iommufd, memfd RAM is shared, and libvirt's version need is said.
@Test func libvirtXMLIsTheHandOverForm() throws {
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let r = vsmmu(["libvirt-xml", "examples/one-guest-one-vsmmu.yaml", "--guest", "vm1", "--host", grace, "--state-dir", dir])
    #expect(r.code == 0)
    #expect(r.stdout.contains("<iommufd enabled='yes' fdgroup='\(FDPlaceholder.name(guest: "vm1", thing: .iommufd))'/>"))
    #expect(r.stdout.contains("<source type='memfd'/>\n    <access mode='shared'/>"))
    #expect(r.stdout.components(separatedBy: "<hostdev ").count - 1 == r.stdout.components(separatedBy: "<driver iommufd='yes'/>").count - 1)
    #expect(r.stdout.contains("<driver pciBus='1' accel='on' ats='on' ril='on' ssidsize='20' oas='48' cmdqv='on'/>"))
    #expect(r.stderr.contains("needs libvirt >= 12.7.0"))
    #expect(r.stderr.contains("the SMMUv3 identifier has no libvirt attribute"))
}

/// The help examples are one option per line and survive an 80-column terminal unwrapped.
@Test func vmmHelpExamplesFitEightyColumns() {
    for (command, lines) in [("qemu-args", ["  vsmmu qemu-args examples/two-vsmmus-four-gpus.yaml \\", "      --guest train0 \\",
                                            "      $(vsmmu qemu-args examples/devices-without-vsmmu.yaml \\", "          --format argv)"]),
                             ("libvirt-xml", ["  vsmmu libvirt-xml examples/two-vsmmus-four-gpus.yaml \\", "      > train0.xml"])] {
        let r = vsmmu([command, "--help"], env: ["COLUMNS": "80"])
        let help = r.stdout.components(separatedBy: "\n")
        for l in lines { #expect(help.contains(l), "\(command) --help lost the line '\(l)'") }
        let examples = help.drop { !$0.hasPrefix("Example") }.prefix { !$0.hasPrefix("USAGE") }
        #expect(!examples.isEmpty && examples.allSatisfy { $0.count <= 80 }, "\(command) --help examples wider than 80 columns")
    }
}
