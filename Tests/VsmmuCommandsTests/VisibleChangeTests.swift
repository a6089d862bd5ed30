import Foundation
import Testing
import VsmmuTestSupport

/// A copy of the one-guest example with `line` added under its vSMMU's `physical: auto`.
private func variant(_ dir: String, _ name: String, _ line: String) throws -> String {
    let path = dir + "/" + name
    try String(contentsOfFile: packageRoot + "/examples/one-guest-one-vsmmu.yaml", encoding: .utf8)
        .replacingOccurrences(of: "        physical: auto\n", with: "        physical: auto\n" + line)
        .write(toFile: path, atomically: true, encoding: .utf8)
    return path
}

/// Guest-visible values are desired state (docs/contract.md §4): `ats: auto` (on, from the
/// physical SMMU) → `ats: off` changes no kernel object but the VM's arguments.
@Test func aGuestVisibleChangePlansAsAnUpdate() throws {
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let ctx = ["--host", grace, "--state-dir", dir + "/state"]
    let auto = try variant(dir, "auto.yaml", ""), off = try variant(dir, "off.yaml", "        ats: off\n        ril: off\n")
    #expect(vsmmu(["apply", auto, "--auto-approve"] + ctx).code == 0)

    let p = vsmmu(["plan", off, "--detailed-exitcode"] + ctx)
    #expect(p.code == 2, "\(p.stdout)\(p.stderr)")
    #expect(p.stdout.contains("~ vsmmu vm1/smmu0"), "\(p.stdout)")
    #expect(p.stdout.contains("ats: on → off; ril: on → off"), "\(p.stdout)")
    #expect(p.stdout.contains("Plan: 0 to add, 1 to change, 0 to destroy."))
    let json = vsmmu(["plan", off, "--format", "json"] + ctx)
    #expect(json.stdout.contains("\"name\": \"ats\""), "\(json.stdout)")

    #expect(vsmmu(["apply", off, "--auto-approve"] + ctx).code == 0)
    #expect(vsmmu(["plan", off, "--detailed-exitcode"] + ctx).code == 0)
    // Back: the plan says so again.
    #expect(vsmmu(["plan", auto, "--detailed-exitcode"] + ctx).stdout.contains("ats: off → on"))
}

/// For a running guest, the change waits for the VM's restart and says so.
@Test func aGuestVisibleChangeToARunningGuestSaysTheVMMustBeRestarted() throws {
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let ctx = ["--host", grace, "--state-dir", dir + "/state"]
    let auto = try variant(dir, "auto.yaml", ""), off = try variant(dir, "off.yaml", "        ats: off\n")
    #expect(vsmmu(["apply", auto, "--auto-approve"] + ctx).code == 0)
    let vmm = try LaunchedVMM(["launch", "--guest", "vm1"] + ctx + ["--", "sleep", "600"])
    #expect(vmm.waitForExec("sleep"))

    let p = vsmmu(["plan", off, "--detailed-exitcode"] + ctx)
    #expect(p.code == 2, "\(p.stdout)\(p.stderr)")
    #expect(p.stdout.contains("~ vsmmu vm1/smmu0"), "\(p.stdout)")
    #expect(p.stdout.contains("(the VM must be restarted); ats: on → off"), "\(p.stdout)")
    let a = vsmmu(["apply", off, "--auto-approve"] + ctx)
    #expect(a.code == 0, "\(a.stderr)")
    #expect(a.stderr.contains("the VM must be restarted"), "\(a.stderr)")
    #expect(vsmmu(["plan", off, "--detailed-exitcode"] + ctx).code == 2, "still running with ats on")

    vmm.kill()
    // The VMM exited: the guest is prepared again from off.yaml, and the change is done.
    let after = vsmmu(["plan", off, "--detailed-exitcode"] + ctx)
    #expect(after.code == 0, "\(after.stdout)\(after.stderr)")
}
