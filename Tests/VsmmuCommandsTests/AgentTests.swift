import VsmmuTestSupport
import Foundation
import Testing

/// An agent process over a simulated host, in its own temp dir.
final class AgentProcess {
    let dir: String
    let socket: String
    let process = Process()
    let log: String

    init(host: String = grace, env: [String: String] = [:], extra: [String] = []) throws {
        dir = tempDir()
        socket = dir + "/agent.sock"
        log = dir + "/agent.log"
        try start(host: host, env: env, extra: extra)
    }

    private var host = grace
    private var env: [String: String] = [:]
    private var extra: [String] = []
    private var current: Process?

    func start(host: String, env: [String: String], extra: [String]) throws {
        self.host = host; self.env = env; self.extra = extra
        let p = Process()
        p.executableURL = URL(fileURLWithPath: vsmmuBinary)
        p.arguments = ["agent", "--host", host, "--socket", socket, "--state-dir", dir + "/state", "--reconcile-interval", "0"] + extra
        p.currentDirectoryURL = URL(fileURLWithPath: packageRoot)
        var e = ["PATH": "/usr/bin:/bin"]
        for (k, v) in env { e[k] = v }
        p.environment = e
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        let h = FileHandle(forWritingAtPath: log)!
        h.seekToEndOfFile()
        p.standardOutput = h
        p.standardError = h
        try p.run()
        current = p
        // Ready once its start-up reconcile ran (it logs "ready" then).
        let before = logText.components(separatedBy: "vsmmu-agent: ready").count
        let deadline = Date().addingTimeInterval(30)
        while logText.components(separatedBy: "vsmmu-agent: ready").count == before && Date() < deadline { usleep(20_000) }
    }

    func restart(extra: [String]? = nil, env: [String: String]? = nil) throws {
        stop()
        try start(host: host, env: env ?? self.env, extra: extra ?? self.extra)
    }

    func stop() {
        guard let p = current, p.isRunning else { return }
        kill(p.processIdentifier, SIGTERM)
        p.waitUntilExit()
    }

    var logText: String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }

    var pid: Int32 { current?.processIdentifier ?? 0 }

    /// How many mutating calls the simulated kernel has executed so far: the sequence number
    /// of the last one, in the redo log or else in the saved state.
    func simulatedCallCount() -> UInt64 {
        let sim = dir + "/state/sim"
        var seq: UInt64 = 0
        if let data = FileManager.default.contents(atPath: sim + "/kernel.json"),
           let o = try? JSONSerialization.jsonObject(with: data) as? [String: Any], let n = o["appliedSequence"] as? Int { seq = UInt64(n) }
        for line in ((try? String(contentsOfFile: sim + "/calls.log", encoding: .utf8)) ?? "").split(separator: "\n") {
            if let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], let n = o["seq"] as? Int { seq = max(seq, UInt64(n)) }
        }
        return seq
    }

    deinit {
        stop()
        try? FileManager.default.removeItem(atPath: dir)
    }
}

@Test func applyThroughTheSocketThenPlanIsEmpty() throws {
    let agent = try AgentProcess()
    let t = "examples/two-vsmmus-four-gpus.yaml"
    let a = vsmmu(["apply", t, "--socket", agent.socket, "--auto-approve", "-v"])
    #expect(a.code == 0, "\(a.stderr) \(agent.logText)")
    #expect(a.stdout.contains("Apply complete! Resources: 10 added"))
    // -v reaches the agent: the per-call lines under the resource lines.
    #expect(a.stderr.contains("[54/54]"))
    #expect(a.stderr.contains("vsmmu train0/smmu1: Creation complete after "))
    let p = vsmmu(["plan", t, "--socket", agent.socket, "--detailed-exitcode"])
    #expect(p.code == 0)
    #expect(p.stdout.hasPrefix("No changes."))
    // same outputs and exit codes as in-process: a bad file is FILE:LINE:COL and exit 1
    let bad = vsmmu(["plan", "examples/invalid/group-not-viable.yaml", "--socket", agent.socket])
    #expect(bad.code == 1)
    #expect(bad.stderr.contains("examples/invalid/group-not-viable.yaml:10:29: error: IOMMU group 14"))
    // an in-process run on the agent's state directory is refused, naming the lock
    let local = vsmmu(["plan", t, "--host", grace, "--state-dir", agent.dir + "/state"])
    #expect(local.code == 1)
    #expect(local.stderr.contains("holds the lock"))
    #expect(local.stderr.contains("--socket"))
}

@Test func aClientThatDisconnectsMidApplyDoesNotStopIt() throws {
    let agent = try AgentProcess(env: ["VSMMU_SIM_DELAY_MS": "15"])
    let t = "examples/two-vsmmus-four-gpus.yaml"
    let p = Process()
    p.executableURL = URL(fileURLWithPath: vsmmuBinary)
    p.arguments = ["apply", t, "--socket", agent.socket, "--auto-approve"]
    p.currentDirectoryURL = URL(fileURLWithPath: packageRoot)
    p.standardOutput = FileHandle.nullDevice
    p.standardError = FileHandle.nullDevice
    try p.run()
    // kill the client once the agent has begun applying (its journal exists)
    let deadline = Date().addingTimeInterval(20)
    while !FileManager.default.fileExists(atPath: agent.dir + "/state/journal.log") && Date() < deadline { usleep(10_000) }
    usleep(100_000)
    kill(p.processIdentifier, SIGKILL)
    p.waitUntilExit()
    // The next request waits for the apply in flight (one writer), then sees it done.
    let plan = vsmmu(["plan", t, "--socket", agent.socket, "--detailed-exitcode"])
    #expect(plan.code == 0, "\(plan.stdout)\(plan.stderr)")
}

@Test func twoClientsAtOnceAreServedOneAfterTheOther() throws {
    let agent = try AgentProcess(env: ["VSMMU_SIM_DELAY_MS": "5"])
    let t = "examples/two-vsmmus-four-gpus.yaml"
    final class Results: @unchecked Sendable { var items: [RunResult] = []; let lock = NSLock() }
    let results = Results()
    let socket = agent.socket
    DispatchQueue.concurrentPerform(iterations: 2) { _ in
        let r = vsmmu(["apply", t, "--socket", socket, "--auto-approve"])
        results.lock.lock(); results.items.append(r); results.lock.unlock()
    }
    let r = results.items
    #expect(r.allSatisfy { $0.code == 0 }, "\(r.map(\.stderr))")
    // exactly one of them did the work; the other found nothing to do
    #expect(r.filter { $0.stdout.contains("Apply complete!") }.count == 1)
    #expect(r.filter { $0.stdout.hasPrefix("No changes.") }.count == 1)
}

@Test func aClientOfAnotherUIDIsRefused() throws {
    // A world-writable socket, so that only SO_PEERCRED stands between nobody and the agent.
    let agent = try AgentProcess(extra: ["--socket-mode", "666"])
    let r = runAs(nobody: true, ["show", "--socket", agent.socket])
    #expect(r.code == 1, "\(r.stdout) \(r.stderr)")
    #expect(r.stderr.contains("uid 65534"))
    #expect(r.stderr.contains("may not use this agent"))
    #expect(agent.logText.contains("refused uid 65534"))
    #expect(vsmmu(["show", "--socket", agent.socket]).code == 0)
}

func runAs(nobody: Bool, _ args: [String]) -> RunResult {
    // setpriv drops to nobody. A copy of the binary in a world-readable temp dir, since the
    // checkout may sit under a directory nobody cannot enter.
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let binary = dir + "/vsmmu"
    try? FileManager.default.copyItem(atPath: vsmmuBinary, toPath: binary)
    chmod(dir, 0o755)
    chmod(binary, 0o755)
    // A test running in parallel may fork while the copy's write fd is open: its child holds
    // that fd until it execs, and exec of the copy fails with ETXTBSY meanwhile. Try again.
    var result = RunResult(code: -1, stdout: "", stderr: "")
    for _ in 0..<20 {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        p.arguments = ["--reuid=65534", "--regid=65534", "--clear-groups", binary] + args
        p.currentDirectoryURL = URL(fileURLWithPath: "/")
        p.environment = ["PATH": "/usr/bin:/bin", "HOME": "/tmp"]
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try? p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        result = RunResult(code: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: e, as: UTF8.self))
        guard result.code == 126, result.stderr.contains("Text file busy") else { break }
        usleep(100_000)
    }
    return result
}

@Test func agentRestartRecreatesWhatTheKernelLost() throws {
    let agent = try AgentProcess(extra: ["--reconcile", "fix"])
    let t = "examples/one-guest-one-vsmmu.yaml"
    #expect(vsmmu(["apply", t, "--socket", agent.socket, "--auto-approve"]).code == 0)
    try agent.restart()
    // the new agent found the contexts gone and re-created them at start
    #expect(agent.logText.contains("reconcile (start): drift found, re-applying"))
    #expect(agent.logText.contains("context lost"))
    #expect(agent.logText.contains("reconcile (start): converged"))
    #expect(vsmmu(["plan", t, "--socket", agent.socket, "--detailed-exitcode"]).code == 0)
}

@Test func agentRestartInReportModeShowsTheLossInPlan() throws {
    let agent = try AgentProcess()
    let t = "examples/one-guest-one-vsmmu.yaml"
    #expect(vsmmu(["apply", t, "--socket", agent.socket, "--auto-approve"]).code == 0)
    try agent.restart()
    #expect(agent.logText.contains("drift found"))
    let p = vsmmu(["plan", t, "--socket", agent.socket, "--detailed-exitcode"])
    #expect(p.code == 2)
    #expect(p.stdout.contains("-/+ guest vm1"))
    #expect(p.stdout.contains("context lost"))
    #expect(!p.stdout.contains("SYSFS"), "host-level bindings survived the restart")
}

@Test func handoffPassesEveryFdWithTheMapOfIDs() throws {
    let agent = try AgentProcess()
    let t = "examples/two-vsmmus-four-gpus.yaml"
    #expect(vsmmu(["apply", t, "--socket", agent.socket, "--auto-approve"]).code == 0)
    // a separate process receives the fds and uses them (reads what each stand-in names)
    let r = vsmmu(["handoff", "--guest", "train0", "--socket", agent.socket])
    #expect(r.code == 0, "\(r.stderr)")
    let map = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
    #expect(map["guest"] as? String == "train0")
    #expect(map["formatVersion"] as? Int == 1)
    // each fd received stands for what the map says it is
    let standIns = map["standIns"] as? [String: [String: Any]] ?? [:]
    func stands(_ fd: Any?) -> String? { (fd as? Int).flatMap { standIns[String($0)]?["standsFor"] as? String } }
    #expect(stands(map["iommufdFd"]) == "vsmmu-train0-iommufd")
    let devices = map["devices"] as? [String: [String: Any]] ?? [:]
    #expect(Set(devices.keys) == ["gpu0", "gpu1", "gpu2", "gpu3"])
    for (name, d) in devices {
        #expect(stands(d["fd"]) == "vsmmu-train0-\(name)")
        #expect((d["fd"] as? Int ?? -1) > 2)
    }
    let vsmmus = map["vsmmus"] as? [String: [String: Any]] ?? [:]
    let vdevs = vsmmus["smmu1"]?["vdevices"] as? [String: [String: Any]] ?? [:]
    #expect(vdevs["gpu2"]?["vsid"] as? Int == 0x2100)
    #expect(((vsmmus["smmu0"]?["veventqs"] as? [String: Any])?.count ?? 0) == 2)
    #expect(vsmmus["smmu0"]?["bypassHwpt"] is Int)
    let memory = map["memory"] as? [String: [String: Any]] ?? [:]
    #expect(stands(memory["ram0"]?["fd"]) == "vsmmu-train0-ram0")
    let unknown = vsmmu(["handoff", "--guest", "nope", "--socket", agent.socket])
    #expect(unknown.code == 1)
    #expect(unknown.stderr.contains("holds no prepared guest 'nope'"))
}

@Test func reconcileOnRequestReportsDriftAndFixModeRepairsIt() throws {
    let agent = try AgentProcess()
    let t = "examples/two-vsmmus-four-gpus.yaml"
    #expect(vsmmu(["apply", t, "--socket", agent.socket, "--auto-approve"]).code == 0)
    #expect(vsmmu(["reconcile", "--socket", agent.socket]).code == 0)
    // drift: someone rebinds gpu1 to nvidia behind the agent's back (simulated host.yaml)
    agent.stop()
    let hostYAML = agent.dir + "/state/sim/host.yaml"
    var text = try String(contentsOfFile: hostYAML, encoding: .utf8)
    let at = text.range(of: "address: \"0000:09:02.0\"")!
    text.replaceSubrange(text.range(of: "driver: vfio-pci", range: at.upperBound..<text.endIndex)!, with: "driver: nvidia")
    try text.write(toFile: hostYAML, atomically: true, encoding: .utf8)
    try agent.restart(extra: [])
    let r = vsmmu(["reconcile", "--socket", agent.socket])
    #expect(r.code == 2)
    #expect(r.stderr.contains("drift found"))
    #expect(r.stderr.contains("0000:09:02.0 (nvidia → vfio-pci)"))
    try agent.restart(extra: ["--reconcile", "fix"])
    #expect(agent.logText.contains("reconcile (start): converged"))
    #expect(vsmmu(["reconcile", "--socket", agent.socket]).code == 0)
}

@Test func noAgentIsAClearError() {
    let r = vsmmu(["plan", "examples/one-guest-one-vsmmu.yaml", "--socket", "/tmp/no-such-vsmmu.sock"])
    #expect(r.code == 1)
    #expect(r.stderr.contains("no vsmmu agent is running at /tmp/no-such-vsmmu.sock"))
    #expect(r.stderr.contains("hint: start it"))
}

@Test func anAgentOverARemoteExecutorServesAndRefusesHandoff() throws {
    let binary = try #require(vsmmuRemoteBinary, "vsmmu-remote is not built next to the tests (swift build builds it)")
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let root = dir + "/guest"
    for p in ["sys/bus/pci/devices", "sys/class/iommu", "dev/vfio/devices"] {
        try FileManager.default.createDirectory(atPath: root + "/" + p, withIntermediateDirectories: true)
    }
    _ = FileManager.default.createFile(atPath: root + "/dev/iommu", contents: nil)
    let server = try UnixSocketExecutor(binary: binary, root: root)
    let socket = dir + "/agent.sock", log = dir + "/agent.log"
    _ = FileManager.default.createFile(atPath: log, contents: nil)
    let p = Process()
    p.executableURL = URL(fileURLWithPath: vsmmuBinary)
    p.arguments = ["agent", "--remote", "unix:" + server.path, "--socket", socket, "--state-dir", dir + "/state", "--reconcile-interval", "0"]
    p.environment = ["PATH": "/usr/bin:/bin"]
    let h = FileHandle(forWritingAtPath: log)!
    p.standardOutput = h
    p.standardError = h
    try p.run()
    defer { if p.isRunning { kill(p.processIdentifier, SIGTERM); p.waitUntilExit() } }
    let logText = { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }
    let deadline = Date().addingTimeInterval(30)
    while !logText().contains("vsmmu-agent: ready") && p.isRunning && Date() < deadline { usleep(20_000) }
    #expect(logText().contains("holding the kernel behind the remote executor at unix:\(server.path)"), "\(logText())")
    let show = vsmmu(["show", "--socket", socket])
    #expect(show.code == 0, "\(show.stderr)")
    let handoff = vsmmu(["handoff", "--guest", "vm1", "--socket", socket])
    #expect(handoff.code != 0)
    #expect(handoff.stderr.contains("its fds live in that process"))
}
