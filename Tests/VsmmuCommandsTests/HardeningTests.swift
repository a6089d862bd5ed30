import Foundation
import Testing
import VsmmuIPC
import VsmmuTestSupport

// Issue 13: each reproducer of the hardening review, run against the real binary.

private let oneGuest = "examples/one-guest-one-vsmmu.yaml"

private func simArgs(_ state: String) -> [String] { ["--host", grace, "--state-dir", state] }

/// A root-owned file outside the state directory that must never change.
private func victim() -> String {
    let v = tempDir() + "/victim"
    _ = FileManager.default.createFile(atPath: v, contents: Data("precious\n".utf8))
    return v
}

private func contents(_ p: String) -> String { (try? String(contentsOfFile: p, encoding: .utf8)) ?? "<missing>" }

// MARK: 1. links and ownership in the state directory

@Test func aLockLinkInAnotherUsersStateDirectoryIsNeverFollowed() throws {
    guard getuid() == 0 else { return }   // needs to hand the directory to another user
    let state = tempDir(), target = victim()
    try FileManager.default.createSymbolicLink(atPath: state + "/lock", withDestinationPath: target)
    chown(state, 65534, 65534)
    let r = vsmmu(["plan", oneGuest] + simArgs(state))
    #expect(r.code == 1)
    #expect(r.stderr.contains("belongs to uid 65534, not to you (uid 0)"), "\(r.stderr)")
    #expect(contents(target) == "precious\n")
}

@Test func aStateDirectoryWritableByOthersIsRefused() throws {
    let state = tempDir()
    chmod(state, 0o777)
    let r = vsmmu(["plan", oneGuest] + simArgs(state))
    #expect(r.code == 1)
    #expect(r.stderr.contains("is writable by every user") && r.stderr.contains("chmod go-w"), "\(r.stderr)")
}

@Test func journalAndCallsLogLinksAreRefusedNotWrittenThrough() throws {
    let state = tempDir(), journalTarget = victim(), logTarget = victim()
    try FileManager.default.createSymbolicLink(atPath: state + "/journal.log", withDestinationPath: journalTarget)
    let a = vsmmu(["apply", oneGuest, "--auto-approve"] + simArgs(state))
    #expect(a.code == 1)
    #expect(a.stderr.contains("journal.log is a symbolic link"), "\(a.stderr)")
    #expect(contents(journalTarget) == "precious\n")

    let other = tempDir()
    try FileManager.default.createDirectory(atPath: other + "/sim", withIntermediateDirectories: true)
    try FileManager.default.createSymbolicLink(atPath: other + "/sim/calls.log", withDestinationPath: logTarget)
    let p = vsmmu(["plan", oneGuest] + simArgs(other))
    #expect(p.code == 1)
    #expect(p.stderr.contains("calls.log is a symbolic link"), "\(p.stderr)")
    #expect(contents(logTarget) == "precious\n")
}

@Test func aNewStateDirectoryIsCreated0700() throws {
    let state = tempDir() + "/new/state"
    let r = vsmmu(["plan", oneGuest] + simArgs(state))
    #expect(r.code == 0, "\(r.stderr)")
    let mode = try FileManager.default.attributesOfItem(atPath: state)[.posixPermissions] as? Int
    #expect(mode == 0o700)
}

// MARK: 7. errors that say what is wrong

@Test func lockProblemsSayWhatTheyAreNotThatAnotherVsmmuHoldsIt() throws {
    let dangling = tempDir()
    try FileManager.default.createSymbolicLink(atPath: dangling + "/lock", withDestinationPath: "/nonexistent/x")
    let d = vsmmu(["plan", oneGuest] + simArgs(dangling))
    #expect(d.code == 1)
    #expect(d.stderr.contains("lock is a symbolic link") && !d.stderr.contains("another vsmmu"), "\(d.stderr)")

    let directory = tempDir()
    try FileManager.default.createDirectory(atPath: directory + "/lock", withIntermediateDirectories: true)
    let l = vsmmu(["plan", oneGuest] + simArgs(directory))
    #expect(l.code == 1)
    #expect(l.stderr.contains("lock is a directory") && !l.stderr.contains("another vsmmu"), "\(l.stderr)")

    let unc = vsmmu(["plan", oneGuest] + simArgs("/proc/vsmmu-cannot-be/state"))
    #expect(unc.code == 1)
    #expect(unc.stderr.contains("cannot create the state directory /proc/vsmmu-cannot-be/state") && !unc.stderr.contains("NSCocoaErrorDomain"), "\(unc.stderr)")
}

@Test func anUnwritableStateDirectorySaysSo() throws {
    guard getuid() == 0 else { return }
    let dir = tempDir()
    chmod(dir, 0o755)
    let state = dir + "/state"
    try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
    chown(state, 65534, 65534)
    chmod(state, 0o500)
    let hostCopy = dir + "/host.yaml", topo = dir + "/t.yaml"
    try FileManager.default.copyItem(atPath: packageRoot + "/" + grace, toPath: hostCopy)
    try FileManager.default.copyItem(atPath: packageRoot + "/" + oneGuest, toPath: topo)
    chmod(hostCopy, 0o644); chmod(topo, 0o644)
    let r = runAs(nobody: true, ["plan", topo, "--host", hostCopy, "--state-dir", state])
    #expect(r.code == 1)
    #expect(r.stderr.contains("Permission denied") && r.stderr.contains("must be writable") && !r.stderr.contains("another vsmmu"), "\(r.stderr)")
}

// MARK: 2. a lost holdings.json

@Test func aLostHoldingsFileIsAnErrorThenRebuiltAndTheOriginalDriverNeverBecomesVfioPci() throws {
    let state = tempDir()
    defer { try? FileManager.default.removeItem(atPath: state) }
    #expect(vsmmu(["apply", oneGuest, "--auto-approve"] + simArgs(state)).code == 0)
    try FileManager.default.removeItem(atPath: state + "/holdings.json")

    let plan = vsmmu(["plan", oneGuest] + simArgs(state))
    #expect(plan.code == 1)
    #expect(plan.stderr.contains("holdings.json is missing, but"), "\(plan.stderr)")
    #expect(plan.stderr.contains("--rebuild-state"))
    let apply = vsmmu(["apply", oneGuest, "--auto-approve"] + simArgs(state))
    #expect(apply.code == 1 && !apply.stdout.contains("Apply complete"), "\(apply.stdout)")

    // show names what was found
    let show = vsmmu(["show", "--format", "json"] + simArgs(state))
    #expect(show.code == 0, "\(show.stderr)")
    #expect(show.stdout.contains("\"lostState\""), "\(show.stdout)")
    #expect(show.stdout.contains("allocates guest(s) vm1"))
    #expect(show.stdout.contains("the VFIO cdev of 0000:09:01.0"))

    let rebuilt = vsmmu(["apply", oneGuest, "--auto-approve", "--rebuild-state"] + simArgs(state))
    #expect(rebuilt.code == 0, "\(rebuilt.stderr)")
    #expect(rebuilt.stderr.contains("Rebuilding: closed fd"), "\(rebuilt.stderr)")
    #expect(rebuilt.stdout.contains("Apply complete!"))
    #expect(vsmmu(["plan", oneGuest, "--detailed-exitcode"] + simArgs(state)).code == 0)

    let after = vsmmu(["show", "--format", "json"] + simArgs(state))
    let bindings = after.stdout.replacingOccurrences(of: " ", with: "")
    #expect(bindings.contains("\"originalDriver\":\"unknown\""), "\(after.stdout)")
    #expect(!bindings.contains("\"originalDriver\":\"vfio-pci\""))
    #expect(!after.stdout.contains("lostState"))

    // destroy leaves it on vfio-pci (its driver before is unknown), never "back" to vfio-pci as if that were nvidia's place
    let destroy = vsmmu(["destroy", oneGuest, "--auto-approve"] + simArgs(state))
    #expect(destroy.code == 0, "\(destroy.stderr)")
    #expect(destroy.stdout.contains("original driver, which is unknown"), "\(destroy.stdout)")
}

// MARK: 8. the simulated host file follows the live rules for driver names

@Test func theSimulatedHostFileRefusesDriverNamesTheLivePathRefuses() throws {
    for bad in ["../../x", "a/b", "nv\\nidia", ".."] {
        let state = tempDir()
        defer { try? FileManager.default.removeItem(atPath: state) }
        #expect(vsmmu(["plan", oneGuest] + simArgs(state)).code == 0)
        let hostFile = state + "/sim/host.yaml"
        let text = contents(hostFile)
        #expect(text.contains("driver: nvidia\n"))
        try text.replacingOccurrences(of: "driver: nvidia\n", with: "driver: \"\(bad)\"\n").write(toFile: hostFile, atomically: true, encoding: .utf8)
        let r = vsmmu(["plan", oneGuest] + simArgs(state))
        #expect(r.code == 1, "\(bad): \(r.stdout)")
        #expect(r.stderr.contains("host.yaml:") && r.stderr.contains("is not a driver name"), "\(bad): \(r.stderr)")
    }
}

// MARK: 3, 5. the agent's limits

private func agentFDs(_ pid: Int32) -> Int { (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1 }
private func agentThreads(_ pid: Int32) -> Int { (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task").count) ?? -1 }

@Test func fdsAClientSendsAreClosedByTheAgent() throws {
    let agent = try AgentProcess()
    let before = agentFDs(agent.pid)
    for _ in 0..<5 {
        let fds = (0..<50).map { _ in open("/dev/null", O_RDONLY) }
        let c = try Channel.connect(agent.socket)
        c.send("{\"version\":1,\"request\":{\"command\":\"show\"}}", fds: fds)
        for f in fds { close(f) }
        while let line = c.readLine() { if line.contains("\"exit\"") { break } }
    }
    usleep(200_000)
    let after = agentFDs(agent.pid)
    #expect(before > 0 && after - before < 10, "agent fds \(before) -> \(after)")
}

@Test func idleConnectionsAreBoundedAndTimedOut() throws {
    let agent = try AgentProcess(env: ["VSMMU_AGENT_REQUEST_TIMEOUT": "2"])
    var idle: [Channel] = []
    for _ in 0..<150 { idle.append(try Channel.connect(agent.socket)) }
    usleep(500_000)
    let threads = agentThreads(agent.pid)
    #expect(threads > 0 && threads < 64 + 30, "\(threads) threads for 150 idle connections")
    // A silent client is answered and dropped after the timeout, not held forever.
    let quiet = idle[0]
    var tv = timeval(tv_sec: 20, tv_usec: 0)
    _ = setsockopt(quiet.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    // (SO_RCVTIMEO 20 s: an agent that held it would leave `line` nil.)
    let line = quiet.readLine()
    #expect(line?.contains("not a vsmmu request") == true, "\(line ?? "nil")")
    // Once the idle ones are dropped, a real client is served.
    let show = vsmmu(["show", "--socket", agent.socket])
    #expect(show.code == 0, "\(show.stderr)")
    idle.removeAll()
}

/// Reads one line of `bytes` bytes through a socketpair; returns how many bytes the
/// reader examined for a newline (the old reader rescanned its whole buffer on every
/// 64 KiB read: a 63 MB line took 9.7 s; counted, not timed).
private func bytesExamined(readingLineOf bytes: Int) -> Int {
    var sv: [Int32] = [0, 0]
    _ = socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &sv)
    let reader = Channel(fd: sv[0]), writer = Channel(fd: sv[1])
    let line = String(repeating: "x", count: bytes)
    Thread.detachNewThread { _ = writer.send(line) }
    let got = reader.readLine()
    #expect(got?.utf8.count == bytes)
    return reader.bytesExamined
}

@Test func aLongLineIsReadInLinearTime() throws {
    // Each byte is looked at once (plus the newline): 4 times the bytes, 4 times the work.
    for size in [1 << 20, 8 << 20] {
        let examined = bytesExamined(readingLineOf: size)
        #expect(examined <= size + 1, "a \(size)-byte line made the reader examine \(examined) bytes")
    }
}
