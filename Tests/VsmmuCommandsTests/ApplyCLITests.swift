import VsmmuTestSupport
import Foundation
import Testing

let grace = "examples/hosts/grace-2smmu-cmdqv.yaml"

@Test func planApplyPlanDetailedExitCodes() {
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let t = "examples/one-guest-one-vsmmu.yaml"
    let p1 = vsmmu(["plan", t, "--host", grace, "--state-dir", dir, "--detailed-exitcode"])
    #expect(p1.code == 2)
    #expect(p1.stdout.hasSuffix("Plan: 5 to add, 0 to change, 0 to destroy.\n"))
    let a = vsmmu(["apply", t, "--host", grace, "--state-dir", dir, "--auto-approve"])
    #expect(a.code == 0, "\(a.stderr)")
    #expect(a.stdout.hasSuffix("Apply complete! Resources: 5 added, 0 changed, 0 destroyed.\n"))
    #expect(a.stderr.contains("device vm1/gpu0: Creation complete after "), "\(a.stderr)")
    let p2 = vsmmu(["plan", t, "--host", grace, "--state-dir", dir, "--detailed-exitcode"])
    #expect(p2.code == 0)
    #expect(p2.stdout.hasPrefix("No changes."))
    let a2 = vsmmu(["apply", t, "--host", grace, "--state-dir", dir, "--auto-approve"])
    #expect(a2.code == 0)
    #expect(a2.stderr == "", "a converged apply runs no step")
}

@Test func applyRefusesWithoutConfirmationWhenNotATerminal() {
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let r = vsmmu(["apply", "examples/one-guest-one-vsmmu.yaml", "--host", grace, "--state-dir", dir])
    #expect(r.code == 1)
    #expect(r.stderr.contains("refusing to apply without confirmation"))
    #expect(r.stderr.contains("--auto-approve"))
    let p = vsmmu(["plan", "examples/one-guest-one-vsmmu.yaml", "--host", grace, "--state-dir", dir, "--detailed-exitcode"])
    #expect(p.code == 2, "nothing was applied")
}

@Test func dryRunChangesNothing() {
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let r = vsmmu(["apply", "examples/one-guest-one-vsmmu.yaml", "--host", grace, "--state-dir", dir, "--dry-run"])
    #expect(r.code == 0)
    #expect(r.stdout.contains("Dry run: nothing was changed."))
    let p = vsmmu(["plan", "examples/one-guest-one-vsmmu.yaml", "--host", grace, "--state-dir", dir, "--detailed-exitcode"])
    #expect(p.code == 2)
}

@Test func invalidTopologyChangesNothingAndNamesTheLine() {
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let r = vsmmu(["apply", "examples/invalid/group-not-viable.yaml", "--host", grace, "--state-dir", dir, "--auto-approve"])
    #expect(r.code == 1)
    #expect(r.stderr.contains("examples/invalid/group-not-viable.yaml:10:29: error: IOMMU group 14"))
    #expect(r.stderr.contains("nothing was changed"))
}

@Test func injectedFailureNamesTheStepTheObjectAndTheErrno() throws {
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let t = "examples/two-vsmmus-four-gpus.yaml"
    let r = vsmmu(["apply", t, "--host", grace, "--state-dir", dir, "--auto-approve"], env: ["VSMMU_SIM_FAIL": "IOMMU_VIOMMU_ALLOC#2:ENOMEM"])
    #expect(r.code == 1)
    #expect(r.stderr.contains("error: step 44 IOMMU_VIOMMU_ALLOC (vsmmu train0/smmu1) failed:"), "\(r.stderr)")
    #expect(r.stderr.contains("ENOMEM (cannot allocate memory)"))
    #expect(r.stderr.contains("hint:"))
    let again = vsmmu(["apply", t, "--host", grace, "--state-dir", dir, "--auto-approve"])
    #expect(again.code == 0, "\(again.stderr)")
    #expect(again.stdout.contains("+ vsmmu train0/smmu1"))
    #expect(!again.stdout.contains("+ vsmmu train0/smmu0"), "only what failed is left to do")
}

/// The lab's fail_iommufd found it: a read failing in the check after all steps succeeded
/// was reported as "the kernel still differs", naming neither the call nor the errno.
@Test func aFailedVerificationReadNamesTheCallAndTheErrno() throws {
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let t = "examples/selftest.yaml", host = "examples/hosts/selftest.yaml"
    let r = vsmmu(["apply", t, "--host", host, "--state-dir", dir, "--auto-approve"], env: ["VSMMU_SIM_FAIL": "IOMMU_IOAS_IOVA_RANGES#1:EIO"])
    #expect(r.code == 1)
    #expect(r.stderr.contains("every step succeeded, but reading the kernel back to verify them failed"), "\(r.stderr)")
    #expect(r.stderr.contains("IOMMU_IOAS_IOVA_RANGES"))
    #expect(r.stderr.contains("EIO"))
    #expect(!r.stderr.contains("still differs"))
    let again = vsmmu(["plan", t, "--host", host, "--state-dir", dir])
    #expect(again.code == 0)
    #expect(again.stdout.contains("No changes."), "\(again.stdout)")
}

@Test func bindFailureGivesTheDeviceBackToItsDriver() throws {
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let r = vsmmu(["apply", "examples/one-guest-one-vsmmu.yaml", "--host", grace, "--state-dir", dir, "--auto-approve"],
                  env: ["VSMMU_SIM_FAIL": "SYSFS_DRIVERS_PROBE#1:ENODEV"])
    #expect(r.code == 1)
    #expect(r.stderr.contains("SYSFS_DRIVERS_PROBE"))
    let host = try String(contentsOfFile: dir + "/sim/host.yaml", encoding: .utf8)
    let at = host.range(of: "address: \"0000:09:01.0\"")!
    let tail = host[at.upperBound...]
    #expect(String(tail.prefix(120)).contains("driver: nvidia"), "the device is not left on no driver: \(tail.prefix(120))")
    #expect(r.stderr.contains("rolled back: cleared driver_override of 0000:09:01.0"))
}

@Test func badFaultSpecIsAClearError() {
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let r = vsmmu(["plan", "examples/one-guest-one-vsmmu.yaml", "--host", grace, "--state-dir", dir], env: ["VSMMU_SIM_FAIL": "NOPE:EWHAT"])
    #expect(r.code == 1)
    #expect(r.stderr.contains("VSMMU_SIM_FAIL"))
}

@Test func savedPlanAppliesOnlyWhileTheStateIsUnchanged() throws {
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let t = "examples/two-vsmmus-four-gpus.yaml"
    let planFile = dir + "/p.json"
    let p = vsmmu(["plan", t, "--host", grace, "--state-dir", dir, "--out", planFile])
    #expect(p.code == 0)
    #expect(p.stderr.contains("Saved the plan to"))
    let a = vsmmu(["apply", planFile, "--host", grace, "--state-dir", dir, "--auto-approve"])
    #expect(a.code == 0, "\(a.stderr)")
    #expect(vsmmu(["plan", t, "--host", grace, "--state-dir", dir, "--detailed-exitcode"]).code == 0)

    // A plan made now, then the host moves (gpu1 rebound to nvidia by hand): refused.
    let p2 = vsmmu(["plan", t, "--host", grace, "--state-dir", dir, "--out", planFile])
    #expect(p2.code == 0)
    let hostYAML = dir + "/sim/host.yaml"
    var text = try String(contentsOfFile: hostYAML, encoding: .utf8)
    let at = text.range(of: "address: \"0000:09:02.0\"")!
    text.replaceSubrange(text.range(of: "driver: vfio-pci", range: at.upperBound..<text.endIndex)!, with: "driver: nvidia")
    try text.write(toFile: hostYAML, atomically: true, encoding: .utf8)
    let stale = vsmmu(["apply", planFile, "--host", grace, "--state-dir", dir, "--auto-approve"])
    #expect(stale.code == 1)
    #expect(stale.stderr.contains("moved since"))
    #expect(stale.stderr.contains("nothing was changed"))
}

@Test func twoAppliesAtOnceTheSecondFailsAtOnceNamingTheLock() throws {
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let t = "examples/two-vsmmus-four-gpus.yaml"
    // Create the simulated host first so the slow apply below is all steps.
    #expect(vsmmu(["plan", t, "--host", grace, "--state-dir", dir]).code == 0)
    let slow = Process()
    slow.executableURL = URL(fileURLWithPath: vsmmuBinary)
    slow.arguments = ["apply", t, "--host", grace, "--state-dir", dir, "--auto-approve"]
    slow.currentDirectoryURL = URL(fileURLWithPath: packageRoot)
    slow.environment = ["PATH": "/usr/bin:/bin", "VSMMU_SIM_DELAY_MS": "40"]
    slow.standardOutput = FileHandle.nullDevice
    slow.standardError = FileHandle.nullDevice
    try slow.run()
    defer { slow.waitUntilExit() }
    // wait until it holds the lock (its pid is in the lock file)
    let deadline = Date().addingTimeInterval(20)
    while Date() < deadline {
        if let s = try? String(contentsOfFile: dir + "/lock", encoding: .utf8), s.contains("\(slow.processIdentifier)") { break }
        usleep(20_000)
    }
    let start = Date()
    let second = vsmmu(["apply", t, "--host", grace, "--state-dir", dir, "--auto-approve"])
    #expect(second.code == 1)
    #expect(second.stderr.contains("holds the lock \(dir)/lock"), "\(second.stderr)")
    #expect(second.stderr.contains("pid \(slow.processIdentifier)"))
    #expect(Date().timeIntervalSince(start) < 5, "it failed at once rather than waiting")
    slow.waitUntilExit()
    #expect(slow.terminationStatus == 0)
}

/// kill -9 at several points of a slow apply: the next apply recovers and converges to
/// the same end state as a clean apply, with nothing left open in the kernel.
@Test func killedApplyIsRecoveredByTheNextOne() throws {
    let t = "examples/two-vsmmus-four-gpus.yaml"
    let cleanDir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: cleanDir) }
    #expect(vsmmu(["apply", t, "--host", grace, "--state-dir", cleanDir, "--auto-approve"]).code == 0)
    let expected = try kernelShape(cleanDir)

    var recovered = 0
    // Each kill lands after the apply has printed `killAfterLines` progress lines (stderr), not
    // after a wall-clock delay: under load a fixed delay can fire before the apply has started.
    // Every simulated call sleeps, so a kill right after a line lands inside a step.
    for (i, killAfterLines) in [1, 3, 6, 9, 12, 16].enumerated() {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(vsmmu(["plan", t, "--host", grace, "--state-dir", dir]).code == 0)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: vsmmuBinary)
        p.arguments = ["apply", t, "--host", grace, "--state-dir", dir, "--auto-approve"]
        p.currentDirectoryURL = URL(fileURLWithPath: packageRoot)
        p.environment = ["PATH": "/usr/bin:/bin", "VSMMU_SIM_DELAY_MS": "25"]
        let progress = Pipe()
        p.standardOutput = FileHandle.nullDevice
        p.standardError = progress
        try p.run()
        var lines = 0
        var byte: UInt8 = 0
        while lines < killAfterLines, read(progress.fileHandleForReading.fileDescriptor, &byte, 1) == 1 {
            if byte == UInt8(ascii: "\n") { lines += 1 }
        }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        let again = vsmmu(["apply", t, "--host", grace, "--state-dir", dir, "--auto-approve"])
        #expect(again.code == 0, "kill \(i) after \(killAfterLines) lines: \(again.stderr)")
        if again.stderr.contains("Recovering: an earlier run was interrupted") { recovered += 1 }
        let plan = vsmmu(["plan", t, "--host", grace, "--state-dir", dir, "--detailed-exitcode"])
        #expect(plan.code == 0, "kill \(i) after \(killAfterLines) lines: \(plan.stdout)")
        #expect(try kernelShape(dir) == expected, "kill \(i) after \(killAfterLines) lines")
    }
    // The kills land inside steps (each simulated call sleeps), not only between them.
    #expect(recovered == 6, "only \(recovered) of 6 kills interrupted a step")
}

/// Drivers of every device, open fds and live objects per context in the simulated kernel.
func kernelShape(_ dir: String) throws -> String {
    let host = try String(contentsOfFile: dir + "/sim/host.yaml", encoding: .utf8)
    let drivers = host.split(separator: "\n").filter { $0.contains("driver:") || $0.contains("address:") }.joined(separator: "\n")
    let data = try Data(contentsOf: URL(fileURLWithPath: dir + "/sim/kernel.json"))
    let kernel = try JSONSerialization.jsonObject(with: data) as? [String: Any] ?? [:]
    let files = (kernel["files"] as? [Any])?.count ?? -1
    let contexts = (kernel["contexts"] as? [[String: Any]] ?? []).map { (($0["context"] as? [String: Any])?["objects"] as? [Any])?.count ?? -1 }.sorted()
    return "\(drivers)\nfiles \(files) objects \(contexts)"
}
