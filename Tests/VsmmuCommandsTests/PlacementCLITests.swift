import VsmmuTestSupport
import Foundation
import Testing

/// The guest facts of placement (docs/contract.md §4 "Guest facts") through the commands:
/// validate -v, the JSON plan, show after apply, qemu-args' comments.
private let tray = "examples/hosts/gb200-tray.yaml"
private let auto = "examples/gb200-auto.yaml"

@Test func validateVerboseSaysWhereEachDeviceWentAndEachPeerPath() {
    let r = vsmmu(["validate", auto, "--host", tray, "-v"])
    #expect(r.code == 0, "\(r.stderr)")
    #expect(r.stdout.contains("1 guest, 2 vSMMUs, 8 devices"))
    #expect(r.stdout.contains("gb200vm/nic0: vsmmu auto → smmu-16000000: the vSMMU made for smmu3.0x0000000016000000"))
    #expect(r.stdout.contains("gb200vm/nic3 ↔ gpu3: root-complex:"))
}

@Test func planJSONCarriesTheFactsAndShowKeepsThem() throws {
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let p = vsmmu(["plan", auto, "--host", tray, "--state-dir", dir, "--format", "json"])
    #expect(p.code == 0, "\(p.stderr)")
    let plan = try #require(try JSONSerialization.jsonObject(with: Data(p.stdout.utf8)) as? [String: Any])
    let facts = try #require((plan["facts"] as? [[String: Any]])?.first)
    let peers = facts["peers"] as? [[String: Any]] ?? []
    #expect(peers.map { $0["route"] as? String } == ["redirected", "direct", "unknown", "root-complex"])
    let parameter = peers.first?["kernelParameter"] as? [String: Any]
    #expect(parameter?["value"] as? String == "pci=config_acs=000xx@0000:02:00.0;000xx@0000:02:01.0")
    #expect(parameter?["takesEffect"] as? String == "at reboot")
    let kinds = (facts["lifecycle"] as? [[String: Any]] ?? []).map { "\($0["kind"] as? String ?? "") \($0["device"] as? String ?? "-")" }
    #expect(kinds == ["migration-blocked -", "no-hot-unplug gpu0", "no-hot-unplug gpu2"])

    #expect(vsmmu(["apply", auto, "--host", tray, "--state-dir", dir, "--auto-approve", "--quiet"]).code == 0)
    let s = vsmmu(["show", "--host", tray, "--state-dir", dir, "--format", "json"])
    let show = try #require(try JSONSerialization.jsonObject(with: Data(s.stdout.utf8)) as? [String: Any])
    let guest = try #require((show["guests"] as? [String: Any])?["gb200vm"] as? [String: Any])
    #expect((guest["lifecycle"] as? [String])?.first?.hasPrefix("migration is blocked while accel is on") == true)
    let autos = guest["auto"] as? [String] ?? []
    #expect(autos.contains("device nic0 vsmmu: smmu-16000000") && autos.contains("vsmmu smmu-17000000 ssidSize: 0"))

    let q = vsmmu(["qemu-args", auto, "--guest", "gb200vm", "--host", tray, "--state-dir", dir])
    #expect(q.stdout.contains("# note: lifecycle: device gpu2 cannot be hot-unplugged"))
    #expect(q.stdout.contains("# note: lifecycle: vsmmu smmu-16000000 cmdqv was auto: on"))
}
