import Foundation
import Testing
import VsmmuTestSupport

/// Apply's output as an operator reads it: one line per resource as it starts and when it
/// ends (with its time and ids), each kernel call under -v, nothing under --quiet.
@Test func applyPrintsOneLinePerResourceStartAndEnd() throws {
    let t = "examples/two-vsmmus-four-gpus.yaml"
    for (flag, dir) in [("", tempDir()), ("-v", tempDir()), ("--quiet", tempDir())] {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let a = vsmmu(["apply", t, "--host", grace, "--state-dir", dir, "--auto-approve"] + (flag.isEmpty ? [] : [flag]))
        #expect(a.code == 0, "\(a.stderr)")
        let lines = a.stderr.split(separator: "\n").map(String.init)
        let calls = lines.filter { $0.contains("] ") && $0.hasSuffix(": ok") }
        switch flag {
        case "":
            // 10 resources: a start and an end line each, no per-call line.
            #expect(lines.count == 20, "\(a.stderr)")
            #expect(calls.isEmpty)
            #expect(lines.contains("vsmmu train0/smmu0: Creating..."))
            #expect(lines.contains { $0.hasPrefix("vsmmu train0/smmu0: Creation complete after ") && $0.contains("[viommu ") }, "\(a.stderr)")
            #expect(lines.contains { $0.hasPrefix("device train0/gpu2: Creation complete after ") && $0.contains("(vSID 0x2100)]") }, "\(a.stderr)")
        case "-v":
            #expect(calls.count == 54, "\(calls.count)")
            #expect(lines.contains("vsmmu train0/smmu0: Creating..."))
        default:
            #expect(a.stderr == "", "\(a.stderr)")
        }
    }
}

/// A first SIGINT lets the step in flight finish, stops, says how to resume and exits 130.
@Test func aFirstInterruptFinishesTheStepAndSaysHowToResume() throws {
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let t = "examples/two-vsmmus-four-gpus.yaml"
    let ctx = ["--host", grace, "--state-dir", dir]
    #expect(vsmmu(["plan", t] + ctx).code == 0)   // the simulated host exists: the apply below is all steps
    // Interrupt once the steps run (the first resource line is out).
    let (p, err, seen) = try applyUntilTheFirstStep(["apply", t, "--auto-approve"] + ctx, env: ["VSMMU_SIM_DELAY_MS": "100"])
    kill(p.processIdentifier, SIGINT)
    let text = String(decoding: seen + err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    p.waitUntilExit()
    #expect(p.terminationStatus == 130, "\(text)")
    #expect(text.contains("Interrupted: the step in flight finished and everything done is journaled. Resume with: vsmmu apply \(t) --host \(grace) --state-dir \(dir)"), "\(text)")
    // Resuming converges.
    let resumed = vsmmu(["apply", t, "--auto-approve"] + ctx)
    #expect(resumed.code == 0, "\(resumed.stderr)")
    #expect(vsmmu(["plan", t, "--detailed-exitcode"] + ctx).code == 0)
}

/// A second signal within the grace period is ignored (the step in flight still finishes and
/// the apply stops with 130); after the grace period a second one stops vsmmu at once.
@Test(arguments: [false, true])
func aSecondInterruptIsIgnoredDuringTheGracePeriodThenStopsAtOnce(afterGrace: Bool) throws {
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let t = "examples/two-vsmmus-four-gpus.yaml"
    let ctx = ["--host", grace, "--state-dir", dir]
    #expect(vsmmu(["plan", t] + ctx).code == 0)
    // Each call takes 4 s: the first signal comes as the first step starts, so a second one
    // 0.2 s or 1.2 s later lands inside that same step.
    let (p, err, seen) = try applyUntilTheFirstStep(["apply", t, "--auto-approve"] + ctx,
                                                    env: ["VSMMU_SIM_DELAY_MS": "4000", "VSMMU_INTERRUPT_GRACE_SECONDS": "1"])
    kill(p.processIdentifier, SIGINT)
    usleep(afterGrace ? 1_200_000 : 200_000)
    kill(p.processIdentifier, SIGINT)
    let text = String(decoding: seen + err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    p.waitUntilExit()
    if afterGrace {
        #expect(p.terminationReason == .uncaughtSignal && p.terminationStatus == SIGINT, "\(p.terminationStatus) \(text)")
    } else {
        #expect(p.terminationReason == .exit && p.terminationStatus == 130, "\(text)")
        #expect(text.contains("Interrupted: the step in flight finished"), "\(text)")
    }
    // Either way the next apply converges (the journal covers a step cut short).
    #expect(vsmmu(["apply", t, "--auto-approve"] + ctx).code == 0)
    #expect(vsmmu(["plan", t, "--detailed-exitcode"] + ctx).code == 0)
}

/// On a terminal the step in flight has a live line (`… [n/N] CALL resource`), overwritten by
/// the next line; through a pipe there is none (only whole lines).
@Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/script")))
func aTerminalShowsTheStepInFlightAndAPipeDoesNot() throws {
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let apply = [vsmmuBinary, "apply", "examples/two-vsmmus-four-gpus.yaml", "--host", grace, "--state-dir", dir + "/tty", "--auto-approve"]
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/script")
    p.arguments = ["-qec", apply.joined(separator: " "), "/dev/null"]
    p.currentDirectoryURL = URL(fileURLWithPath: packageRoot)
    p.environment = ["PATH": "/usr/bin:/bin", "HOME": NSTemporaryDirectory(), "TERM": "xterm"]
    let out = Pipe()
    p.standardOutput = out
    p.standardError = out
    p.standardInput = FileHandle.nullDevice
    try p.run()
    let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    p.waitUntilExit()
    #expect(p.terminationStatus == 0, "\(text)")
    #expect(text.contains("\r\u{1B}[K  … [1/54] OPEN_IOMMUFD guest train0"), "\(text)")
    #expect(text.contains("\r\u{1B}[Kdevice train0/gpu3: Creation complete"), "\(text)")
    let piped = vsmmu(Array(apply.dropFirst().dropLast(3)) + ["--state-dir", dir + "/pipe", "--auto-approve"])
    #expect(piped.code == 0)
    #expect(!piped.stderr.contains("\u{1B}[K") && !piped.stderr.contains("… ["), "\(piped.stderr)")
}

/// Starts `vsmmu ARGS` and returns once its first resource line ("Creating...") is out: the
/// process, its standard error and what it has written there so far.
private func applyUntilTheFirstStep(_ args: [String], env: [String: String]) throws -> (Process, Pipe, Data) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: vsmmuBinary)
    p.arguments = args
    p.currentDirectoryURL = URL(fileURLWithPath: packageRoot)
    p.environment = ["PATH": "/usr/bin:/bin", "HOME": NSTemporaryDirectory()].merging(env) { _, new in new }
    let err = Pipe()
    p.standardError = err
    p.standardOutput = FileHandle.nullDevice
    p.standardInput = FileHandle.nullDevice
    try p.run()
    var seen = Data()
    while !String(decoding: seen, as: UTF8.self).contains("Creating...") {
        let chunk = err.fileHandleForReading.availableData
        if chunk.isEmpty { break }
        seen += chunk
    }
    return (p, err, seen)
}
