import Foundation
import Testing

/// One representation per value across outputs: vSIDs as QEMU and the kernel write them
/// (0x hex), vIOMMU types by name, in plan and show alike.
@Test func planAndShowWriteVSIDsAndTypesTheSameWay() throws {
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let ctx = ["--host", grace, "--state-dir", dir]
    let t = "examples/one-guest-one-vsmmu.yaml"
    let plan = try JSONSerialization.jsonObject(with: Data(vsmmu(["plan", t, "--format", "json"] + ctx).stdout.utf8)) as! [String: Any]
    let layout = (plan["layout"] as! [[String: Any]])[0]
    let device = (layout["devices"] as! [[String: Any]])[0]
    #expect(device["vsid"] as? String == "0x1100")
    let planType = (layout["vsmmus"] as! [[String: Any]])[0]["viommuType"] as? String
    #expect(planType == "TEGRA241_CMDQV")

    #expect(vsmmu(["apply", t, "--auto-approve"] + ctx).code == 0)
    let show = try JSONSerialization.jsonObject(with: Data(vsmmu(["show", "--format", "json"] + ctx).stdout.utf8)) as! [String: Any]
    let smmu0 = ((show["guests"] as! [String: Any])["vm1"] as! [String: Any])["vsmmus"] as! [String: [String: Any]]
    #expect(smmu0["smmu0"]?["viommuType"] as? String == planType)
    #expect(((smmu0["smmu0"]?["vdevices"] as? [String: [String: Any]])?["gpu0"]?["vsid"] as? String) == "0x1100")
}

/// One --format vocabulary: text (the default), json and yaml where each makes sense.
@Test func oneFormatVocabulary() throws {
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let ctx = ["--host", grace, "--state-dir", dir]
    let t = "examples/one-guest-one-vsmmu.yaml"
    let ok = vsmmu(["validate", t, "--host", grace, "--format", "json"])
    #expect(ok.code == 0, "\(ok.stderr)")
    let okDoc = try JSONSerialization.jsonObject(with: Data(ok.stdout.utf8)) as! [String: Any]
    #expect(okDoc["valid"] as? Bool == true && okDoc["devices"] as? Int == 1 && okDoc["host"] as? String == "grace-01")
    let bad = vsmmu(["validate", "examples/invalid/group-not-viable.yaml", "--host", grace, "--format", "json"])
    #expect(bad.code == 1)
    let badDoc = try JSONSerialization.jsonObject(with: Data(bad.stdout.utf8)) as! [String: Any]
    let first = (badDoc["diagnostics"] as! [[String: Any]])[0]
    #expect(first["line"] as? Int == 10 && first["column"] as? Int == 29, "\(first)")

    let yaml = vsmmu(["plan", t, "--format", "yaml"] + ctx)
    #expect(yaml.code == 0)
    #expect(yaml.stdout.contains("vsid: \"0x1100\""), "\(yaml.stdout)")
    #expect(yaml.stdout.contains("formatVersion: 1"))
    let text = vsmmu(["plan", t, "--format", "text"] + ctx)
    #expect(text.stdout.hasPrefix("vsmmu will make these changes"))
    #expect(vsmmu(["show", "--format", "text"] + ctx).stdout == vsmmu(["show"] + ctx).stdout)
    #expect(vsmmu(["show", "--format", "yaml"] + ctx).code == 0)
}

/// `vsmmu host --format json` says what the YAML form says: the page size and every
/// per-device fact (the aarch64 lab found them missing from the JSON form).
@Test func hostJSONHasThePerDeviceFactsAndThePageSize() throws {
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let r = vsmmu(["host", "--host", "examples/hosts/gb200-64k.yaml", "--state-dir", dir, "--format", "json"])
    #expect(r.code == 0, "\(r.stderr)")
    let doc = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as! [String: Any]
    #expect((doc["kernel"] as? [String: Any])?["pageSize"] as? Int == 65536)
    let devices = doc["pciDevices"] as! [[String: Any]]
    let gpu = try #require(devices.first { $0["address"] as? String == "0000:19:02.0" })
    #expect(gpu["ats"] as? Bool == false)
    #expect(gpu["vfioDriver"] as? String == "nvgrace_gpu_vfio_pci")
    #expect(gpu["pasidWidth"] as? Int != nil && gpu["canwbs"] as? Bool != nil)
    #expect((gpu["bars"] as? [[String: Any]])?.count == 2)
    #expect(devices.contains { ($0["unknown"] as? [String])?.isEmpty == false })
}
