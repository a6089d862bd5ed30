import Foundation
import Testing

/// An agent over a simulated host follows edits of STATE/sim/host.yaml made while it runs
/// (as a fresh in-process command does), and logs each request with the peer's uid.
@Test func theAgentReReadsTheSimulatedHostFileAndLogsRequests() throws {
    let agent = try AgentProcess()
    let t = "examples/one-guest-one-vsmmu.yaml"
    #expect(vsmmu(["apply", t, "--socket", agent.socket, "--auto-approve"]).code == 0)
    #expect(vsmmu(["plan", t, "--socket", agent.socket, "--detailed-exitcode"]).code == 0)

    // gpu0 rebound to nvidia by hand: the next plan shows the drift.
    let hostYAML = agent.dir + "/state/sim/host.yaml"
    var text = try String(contentsOfFile: hostYAML, encoding: .utf8)
    let at = try #require(text.range(of: "address: \"0000:09:01.0\""))
    text.replaceSubrange(try #require(text.range(of: "driver: vfio-pci", range: at.upperBound..<text.endIndex)), with: "driver: nvidia")
    try text.write(toFile: hostYAML, atomically: true, encoding: .utf8)
    let p = vsmmu(["plan", t, "--socket", agent.socket, "--detailed-exitcode"])
    #expect(p.code == 2, "\(p.stdout)\(p.stderr)\n\(agent.logText)")
    #expect(p.stdout.contains("device vm1/gpu0"), "\(p.stdout)")
    #expect(agent.logText.contains("sim/host.yaml changed: the simulated host now follows it"), "\(agent.logText)")
    #expect(agent.logText.contains("request by uid \(getuid()) (pid "), "\(agent.logText)")
    #expect(agent.logText.contains("apply \(t) by uid \(getuid()): done"), "\(agent.logText)")
}

/// qemu-args and libvirt-xml work through the agent: resolved against the host it runs on
/// and the allocations it keeps, the same as in-process on that state directory.
@Test func qemuArgsAndLibvirtXMLWorkThroughTheSocket() throws {
    let agent = try AgentProcess()
    let t = "examples/two-vsmmus-four-gpus.yaml"
    #expect(vsmmu(["apply", t, "--socket", agent.socket, "--auto-approve", "--quiet"]).code == 0)
    let viaAgent = vsmmu(["qemu-args", t, "--guest", "train0", "--socket", agent.socket, "--fds", "--format", "argv"])
    #expect(viaAgent.code == 0, "\(viaAgent.stderr)")
    #expect(viaAgent.stdout.contains("arm-smmuv3"), "\(viaAgent.stdout)")
    let local = vsmmu(["qemu-args", t, "--guest", "train0", "--host", grace, "--state-dir", agent.dir + "/state", "--fds", "--format", "argv"])
    #expect(local.code == 0, "\(local.stderr)")
    #expect(viaAgent.stdout == local.stdout)
    let xml = vsmmu(["libvirt-xml", t, "--guest", "train0", "--socket", agent.socket])
    #expect(xml.code == 0, "\(xml.stderr)")
    #expect(xml.stdout.contains("<iommu model='smmuv3'"), "\(xml.stdout.prefix(400))")
    // the dialect and the release travel with the request
    let nvidia = vsmmu(["libvirt-xml", t, "--guest", "train0", "--socket", agent.socket, "--dialect", "nvidia"])
    #expect(nvidia.code == 0 && nvidia.stdout.contains(" ssidSize='"), "\(nvidia.stderr)")
    let old = vsmmu(["libvirt-xml", t, "--guest", "train0", "--socket", agent.socket, "--libvirt-version", "12.5"])
    #expect(old.code == 1 && old.stderr.contains("cannot say accel=on"), "\(old.stderr)")
    #expect(agent.logText.contains("qemu-args \(t)"), "\(agent.logText)")
}

/// An in-process command on a state directory an idle agent serves is told to use the
/// agent's socket, not that something is applying.
@Test func theLockMessageNamesTheAgentAndItsSocket() throws {
    let agent = try AgentProcess()
    let r = vsmmu(["plan", "examples/one-guest-one-vsmmu.yaml", "--host", grace, "--state-dir", agent.dir + "/state"])
    #expect(r.code == 1)
    #expect(r.stderr.contains("a vsmmu agent (pid "), "\(r.stderr)")
    #expect(r.stderr.contains("send the request to it: --socket \(agent.socket)"), "\(r.stderr)")
    #expect(!r.stderr.contains("applying or destroying"))
}
