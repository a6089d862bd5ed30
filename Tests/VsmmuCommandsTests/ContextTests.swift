import Foundation
import Testing

/// The context options (--host, --state-dir, --socket, and VSMMU_HOST, VSMMU_STATE_DIR)
/// everywhere, and carried into every command vsmmu suggests.
@Test func suggestedCommandsCarryTheContextAndASavedPlanIsBoundToItsStateDirectory() throws {
    let dir = tempDir(), other = tempDir()
    defer { for d in [dir, other] { try? FileManager.default.removeItem(atPath: d) } }
    let t = "examples/one-guest-one-vsmmu.yaml", planFile = dir + "/p.json"
    let p = vsmmu(["plan", t, "--host", grace, "--state-dir", dir + "/s", "--out", planFile])
    #expect(p.code == 0)
    #expect(p.stderr.contains("Apply exactly this plan with: vsmmu apply \(planFile) --host \(grace) --state-dir \(dir)/s\n"), "\(p.stderr)")

    // Another state directory: refused, naming the one it was made on.
    let elsewhere = vsmmu(["apply", planFile, "--host", grace, "--state-dir", other])
    #expect(elsewhere.code == 1)
    #expect(elsewhere.stderr.contains("was made on the state directory \(dir)/s"), "\(elsewhere.stderr)")
    #expect(vsmmu(["plan", t, "--host", grace, "--state-dir", other, "--detailed-exitcode"]).code == 2, "nothing applied there")

    // The saved plan is the approval: no prompt, no --auto-approve.
    let a = vsmmu(["apply", planFile, "--host", grace, "--state-dir", dir + "/s"])
    #expect(a.code == 0, "\(a.stderr)")

    // A stale saved plan's hint keeps --host and --state-dir.
    let p2 = vsmmu(["plan", t, "--host", grace, "--state-dir", dir + "/s", "--out", planFile])
    #expect(p2.code == 0)
    #expect(vsmmu(["destroy", t, "--host", grace, "--state-dir", dir + "/s", "--auto-approve"]).code == 0)
    let stale = vsmmu(["apply", planFile, "--host", grace, "--state-dir", dir + "/s"])
    #expect(stale.code == 1)
    #expect(stale.stderr.contains("vsmmu plan \(t) --out \(planFile) --host \(grace) --state-dir \(dir)/s"), "\(stale.stderr)")
}

@Test func theEnvironmentGivesTheContext() throws {
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let env = ["VSMMU_HOST": grace, "VSMMU_STATE_DIR": dir]
    let t = "examples/one-guest-one-vsmmu.yaml"
    #expect(vsmmu(["apply", t, "--auto-approve"], env: env).code == 0)
    #expect(FileManager.default.fileExists(atPath: dir + "/sim/host.yaml"), "VSMMU_STATE_DIR chose the state directory")
    let p = vsmmu(["plan", t, "--detailed-exitcode"], env: env)
    #expect(p.code == 0, "\(p.stdout)\(p.stderr)")
    // validate takes the same options and reads the same host as plan.
    #expect(vsmmu(["validate", t, "--state-dir", dir, "--host", grace]).code == 0)
    let v = vsmmu(["validate", "examples/devices-without-vsmmu.yaml", "--host", "examples/hosts/intel-vtd.yaml"], env: ["VSMMU_STATE_DIR": dir])
    #expect(v.code == 1)
    #expect(v.stderr.contains("was made from host grace-01"), "\(v.stderr)")
}
