import Foundation
import VsmmuTestSupport
import Testing

/// Several topologies on one host, one per VM (docs/contract.md §7): each plans, applies
/// and destroys only the guests it declared.
@Test func twoTopologiesShareOneHost() throws {
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let ml1 = "examples/per-vm-ml1.yaml", ml2 = "examples/per-vm-ml2.yaml"
    let ctx = ["--host", grace, "--state-dir", dir]
    let a1 = vsmmu(["apply", ml1, "--auto-approve"] + ctx)
    #expect(a1.code == 0, "\(a1.stderr)")

    // ml2's plan adds its own guest and neither removes ml1 nor gives its GPU back.
    let p2 = vsmmu(["plan", ml2, "--detailed-exitcode"] + ctx)
    #expect(p2.code == 2, "\(p2.stderr)")
    #expect(!p2.stdout.contains("ml1/"), "\(p2.stdout)")
    #expect(!p2.stdout.contains("- guest"), "\(p2.stdout)")
    #expect(p2.stdout.contains("topology ml2"))
    #expect(p2.stdout.contains("Other topologies hold 1 guest on this host (ml1: 1); this plan leaves them alone."), "\(p2.stdout)")
    #expect(p2.stdout.contains("0 to destroy"))

    let a2 = vsmmu(["apply", ml2, "--auto-approve"] + ctx)
    #expect(a2.code == 0, "\(a2.stderr)")
    for t in [ml1, ml2] {
        let p = vsmmu(["plan", t, "--detailed-exitcode"] + ctx)
        #expect(p.code == 0, "\(t): \(p.stdout)\(p.stderr)")
        #expect(p.stdout.hasPrefix("No changes."))
    }
    let shown = vsmmu(["show", "--format", "json"] + ctx)
    #expect(shown.stdout.contains("\"ml1\"") && shown.stdout.contains("\"ml2\""))

    // destroy ml1 removes ml1 only.
    let d1 = vsmmu(["destroy", ml1, "--auto-approve"] + ctx)
    #expect(d1.code == 0, "\(d1.stderr)")
    #expect(!d1.stdout.contains("ml2/") && !d1.stdout.contains("guest ml2"), "\(d1.stdout)")
    let p2again = vsmmu(["plan", ml2, "--detailed-exitcode"] + ctx)
    #expect(p2again.code == 0, "ml2 still converged: \(p2again.stdout)")
    let p1again = vsmmu(["plan", ml1, "--detailed-exitcode"] + ctx)
    #expect(p1again.code == 2, "ml1 is gone and would be added again")
}

@Test func aGuestOrDeviceOfAnotherTopologyIsAnErrorNamingIt() throws {
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let ctx = ["--host", grace, "--state-dir", dir]
    #expect(vsmmu(["apply", "examples/per-vm-ml1.yaml", "--auto-approve"] + ctx).code == 0)

    // The same guest name under another metadata.name.
    let sameName = dir + "/thief.yaml"
    try String(contentsOfFile: packageRoot + "/examples/per-vm-ml1.yaml", encoding: .utf8)
        .replacingOccurrences(of: "name: ml1\nguests", with: "name: thief\nguests")
        .write(toFile: sameName, atomically: true, encoding: .utf8)
    let g = vsmmu(["plan", sameName] + ctx)
    #expect(g.code == 1)
    #expect(g.stderr.contains("guest 'ml1' belongs to topology 'ml1' (examples/per-vm-ml1.yaml)"), "\(g.stderr)")
    #expect(g.stderr.contains("\(sameName):9:11:"), "\(g.stderr)")

    // Another guest that wants ml1's GPU.
    let sameDevice = dir + "/other.yaml"
    try String(contentsOfFile: packageRoot + "/examples/per-vm-ml2.yaml", encoding: .utf8)
        .replacingOccurrences(of: "0000:19:01.0", with: "0000:09:01.0")
        .write(toFile: sameDevice, atomically: true, encoding: .utf8)
    let d = vsmmu(["apply", sameDevice, "--auto-approve"] + ctx)
    #expect(d.code == 1)
    #expect(d.stderr.contains("device 'gpu0' (0000:09:01.0) is held by guest 'ml1' (device 'gpu0') of topology 'ml1' (examples/per-vm-ml1.yaml)"), "\(d.stderr)")
    #expect(vsmmu(["plan", "examples/per-vm-ml1.yaml", "--detailed-exitcode"] + ctx).code == 0, "ml1 untouched")
}
