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
