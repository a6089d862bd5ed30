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
