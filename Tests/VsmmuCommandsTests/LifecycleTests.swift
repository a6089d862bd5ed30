import VsmmuTestSupport
import Foundation
import Testing

// The guest lifecycle through the CLI (docs/contract.md §6): prepared → running (a VMM's
// pid) → prepared, in-process on a simulated host and through an agent.

/// `vsmmu launch ... -- sleep 600` in the background: the launched process becomes sleep.
final class LaunchedVMM {
    let process = Process()
    let stderr = Pipe()
    init(_ args: [String]) throws {
        process.executableURL = URL(fileURLWithPath: vsmmuBinary)
        process.arguments = args
        process.currentDirectoryURL = URL(fileURLWithPath: packageRoot)
        process.environment = ["PATH": "/usr/bin:/bin", "HOME": NSTemporaryDirectory()]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = stderr
        process.standardInput = FileHandle.nullDevice
        try process.run()
    }
    var pid: Int32 { process.processIdentifier }
    /// True once the pid runs `comm` (the exec happened).
    func waitForExec(_ comm: String, timeout: Double = 20) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let c = try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8), c.hasPrefix(comm) { return true }
            if !process.isRunning { return false }
            usleep(20_000)
        }
        return false
    }
    func kill() {
        guard process.isRunning else { return }
        Foundation.kill(pid, SIGKILL)
        process.waitUntilExit()
    }
    deinit { kill() }
}

private let topology = "examples/one-guest-one-vsmmu.yaml"

@Test func launchInProcessRunsThenPreparesAgainWhenTheVMMExits() throws {
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let ctx = ["--host", grace, "--state-dir", dir]
    #expect(vsmmu(["apply", topology, "--auto-approve"] + ctx).code == 0)

    let vmm = try LaunchedVMM(["launch", "--guest", "vm1"] + ctx + ["--", "sleep", "600"])
    #expect(vmm.waitForExec("sleep"), "launch did not exec the VMM")
    let show = vsmmu(["show", "--format", "json"] + ctx)
    let doc = try JSONSerialization.jsonObject(with: Data(show.stdout.utf8)) as! [String: Any]
    let vm1 = (doc["guests"] as! [String: Any])["vm1"] as! [String: Any]
    #expect(vm1["state"] as? String == "running")
    #expect(vm1["pid"] as? Int == Int(vmm.pid))
    #expect((vm1["command"] as? String)?.hasPrefix("sleep 600") == true)

    let running = vsmmu(["plan", topology, "--detailed-exitcode"] + ctx)
    #expect(running.code == 0, "\(running.stdout)\(running.stderr)")
    #expect(running.stdout.hasPrefix("No changes."))
    #expect(running.stdout.contains("Guest vm1 is running: pid \(vmm.pid)"))

    // destroy of a running guest is refused, naming the pid; nothing changes
    let destroy = vsmmu(["destroy", topology, "--auto-approve"] + ctx)
    #expect(destroy.code == 1)
    #expect(destroy.stderr.contains("guest vm1 is running: pid \(vmm.pid)"))
    #expect(vsmmu(["plan", topology, "--detailed-exitcode"] + ctx).code == 0)

    // a second launch of a running guest is refused
    let again = vsmmu(["launch", "--guest", "vm1"] + ctx + ["--", "true"])
    #expect(again.code == 1)
    #expect(again.stderr.contains("already running as pid \(vmm.pid)"))

    vmm.kill()
    let after = vsmmu(["plan", topology, "--detailed-exitcode"] + ctx)
    #expect(after.code == 0, "\(after.stdout)\(after.stderr)")
    #expect(after.stdout.hasPrefix("No changes."))
    #expect(!after.stdout.contains("running"))
    #expect(after.stderr.contains("VMM (pid \(vmm.pid)) exited; preparing the guest again"))
    let prepared = vsmmu(["show"] + ctx)
    #expect(prepared.stdout.contains("state: prepared"))
    // and it can be launched again, then destroyed once its VMM is gone
    let vmm2 = try LaunchedVMM(["launch", "--guest", "vm1"] + ctx + ["--", "sleep", "600"])
    #expect(vmm2.waitForExec("sleep"))
    vmm2.kill()
    #expect(vsmmu(["destroy", topology, "--auto-approve"] + ctx).code == 0)
}

@Test func launchRefusesWhatCannotBeHandedOver() throws {
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let ctx = ["--host", grace, "--state-dir", dir]
    // nothing applied: not prepared
    let unprepared = vsmmu(["launch", "--guest", "vm1"] + ctx + ["--", "true"])
    #expect(unprepared.code == 1)
    #expect(unprepared.stderr.contains("vsmmu holds no prepared guest 'vm1'; nothing was changed"))
    #expect(vsmmu(["apply", topology, "--auto-approve"] + ctx).code == 0)
    let unknown = vsmmu(["launch", "--guest", "nope"] + ctx + ["--", "true"])
    #expect(unknown.code == 1)
    #expect(unknown.stderr.contains("prepared or running guests: vm1"))
    // a placeholder of another guest: refused before anything changes? it is checked
    // after the handover, so the guest must come back prepared
    let noCommand = vsmmu(["launch", "--guest", "vm1"] + ctx)
    #expect(noCommand.code == 64)
    #expect(noCommand.stderr.contains("give the VMM's command after --"))
    #expect(vsmmu(["plan", topology, "--detailed-exitcode"] + ctx).code == 0)
    #expect(vsmmu(["show"] + ctx).stdout.contains("state: prepared"))
}

@Test func launchThroughTheAgentAndTheAgentsOwnFds() throws {
    let agent = try AgentProcess()
    #expect(vsmmu(["apply", topology, "--socket", agent.socket, "--auto-approve"]).code == 0)
    let agentPID = agent.pid
    let before = openFDs(agentPID)

    let vmm = try LaunchedVMM(["launch", "--guest", "vm1", "--socket", agent.socket, "--", "sleep", "600"])
    #expect(vmm.waitForExec("sleep"), "\(agent.logText)")
    let show = vsmmu(["show", "--socket", agent.socket])
    #expect(show.stdout.contains("state: running"))
    #expect(show.stdout.contains("pid: \(vmm.pid)"))
    #expect(vsmmu(["plan", topology, "--socket", agent.socket, "--detailed-exitcode"]).code == 0)

    // the agent restarts while the VMM runs: the new agent finds it running, changes nothing
    let callsBefore = agent.simulatedCallCount()
    try agent.restart()
    #expect(agent.logText.contains("guest vm1 is running: pid \(vmm.pid) (sleep 600); watching it"))
    let again = vsmmu(["show", "--socket", agent.socket])
    #expect(again.stdout.contains("state: running"), "\(again.stdout)\(agent.logText)")
    // one mutating call: the old agent's exit (its fds close), simulated at the start
    #expect(agent.simulatedCallCount() == callsBefore + 1, "a restarted agent made mutating calls")

    // the VMM exits: the agent prepares the guest again by itself
    vmm.kill()
    let deadline = Date().addingTimeInterval(20)
    while !agent.logText.contains("its VMM (pid \(vmm.pid)) exited") && Date() < deadline { usleep(50_000) }
    let plan = vsmmu(["plan", topology, "--socket", agent.socket, "--detailed-exitcode"])
    #expect(plan.code == 0, "\(plan.stdout)\(agent.logText)")
    #expect(vsmmu(["show", "--socket", agent.socket]).stdout.contains("state: prepared"))
    // a launch/exit cycle leaves the agent with the fds it had (the restarted one: same count)
    let vmm3 = try LaunchedVMM(["launch", "--guest", "vm1", "--socket", agent.socket, "--", "sleep", "600"])
    #expect(vmm3.waitForExec("sleep"))
    vmm3.kill()
    let deadline3 = Date().addingTimeInterval(20)
    while !agent.logText.contains("its VMM (pid \(vmm3.pid)) exited") && Date() < deadline3 { usleep(50_000) }
    #expect(vsmmu(["plan", topology, "--socket", agent.socket, "--detailed-exitcode"]).code == 0)
    #expect(openFDs(agent.pid) == before, "the agent's fds: \(openFDs(agent.pid)) vs \(before)")
    _ = agentPID
}

func openFDs(_ pid: Int32) -> Int {
    ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []).count
}

@Test(arguments: [false, true])
func adoptHandsThePreparedContextItself(throughAgent: Bool) throws {
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let agent = throughAgent ? try AgentProcess() : nil
    let ctx = agent.map { ["--socket", $0.socket] } ?? ["--host", grace, "--state-dir", dir]
    #expect(vsmmu(["apply", topology, "--auto-approve"] + ctx).code == 0)
    let mapFile = dir + "/map.json"
    let vmm = try LaunchedVMM(["launch", "--guest", "vm1", "--vmm", "adopt"] + ctx
                              + ["--", "/bin/sh", "-c", "printf %s \"$VSMMU_ADOPT_MAP\" > \(mapFile); echo {vsmmu-vm1-iommufd} > \(mapFile).fd; exec sleep 600"])
    #expect(vmm.waitForExec("sleep"))
    // the VMM got the map of every object id (the vIOMMU, the vDevice with its vSID) and the fd
    let map = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: mapFile))) as? [String: Any])
    let vsmmus = map["vsmmus"] as? [String: [String: Any]] ?? [:]
    #expect(vsmmus["smmu0"]?["viommu"] is Int)
    #expect(((vsmmus["smmu0"]?["vdevices"] as? [String: [String: Any]])?["gpu0"]?["vsid"] as? Int) == 0x1100)
    let fdText = try String(contentsOfFile: mapFile + ".fd", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
    #expect(Int(fdText) != nil, "the placeholder was not replaced: \(fdText)")
    let show = vsmmu(["show", "--format", "json"] + ctx)
    let doc = try JSONSerialization.jsonObject(with: Data(show.stdout.utf8)) as! [String: Any]
    let vm1 = (doc["guests"] as! [String: Any])["vm1"] as! [String: Any]
    #expect(vm1["state"] as? String == "running")
    #expect(vm1["vmm"] as? String == "adopt")
    #expect(vm1["iommufdFd"] == nil, "vsmmu still holds the adopted context")
    vmm.kill()
    if let agent {
        let deadline = Date().addingTimeInterval(20)
        while !agent.logText.contains("its VMM (pid \(vmm.pid)) exited") && Date() < deadline { usleep(50_000) }
    }
    #expect(vsmmu(["plan", topology, "--detailed-exitcode"] + ctx).code == 0)
    #expect(vsmmu(["show"] + ctx).stdout.contains("state: prepared"))
}

@Test func validateThroughTheAgentChecksAgainstItsHost() throws {
    let agent = try AgentProcess()
    let ok = vsmmu(["validate", "examples/one-guest-one-vsmmu.yaml", "--socket", agent.socket])
    #expect(ok.code == 0, "\(ok.stderr)")
    #expect(ok.stdout.contains("is valid against the host of the agent"))
    // a rule that needs the host: only checked when the agent's host is used
    let bad = vsmmu(["validate", "examples/invalid/group-not-viable.yaml", "--socket", agent.socket])
    #expect(bad.code == 1)
    #expect(bad.stderr.contains("examples/invalid/group-not-viable.yaml:10:29: error: IOMMU group 14"))
}
