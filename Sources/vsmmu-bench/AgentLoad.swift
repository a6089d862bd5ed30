import Foundation
import VsmmuIPC

/// 100 (or --clients) concurrent plan requests to a real agent process over a
/// simulated host: correctness and latency percentiles.
func agentLoad(gen: TopologyGenerator, clients: Int) throws {
    let dir = NSTemporaryDirectory() + "vsmmu-agent-load-\(getpid())"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    try gen.topologyYAML().write(toFile: dir + "/topology.yaml", atomically: true, encoding: .utf8)
    try gen.host().renderYAML().write(toFile: dir + "/host.yaml", atomically: true, encoding: .utf8)
    let vsmmu = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("vsmmu").path
    let socket = dir + "/agent.sock"
    let agent = Process()
    agent.executableURL = URL(fileURLWithPath: vsmmu)
    agent.arguments = ["agent", "--host", dir + "/host.yaml", "--socket", socket, "--state-dir", dir + "/state", "--reconcile-interval", "0"]
    agent.standardError = FileHandle.nullDevice
    try agent.run()
    defer { kill(agent.processIdentifier, SIGTERM); agent.waitUntilExit() }
    while !FileManager.default.fileExists(atPath: socket) { usleep(10_000) }
    let topology = try Data(contentsOf: URL(fileURLWithPath: dir + "/topology.yaml")).base64EncodedString()
    @Sendable func request(_ command: String) -> String {
        let extra = command == "apply" ? ",\"autoApprove\":true" : ""
        return "{\"version\":1,\"request\":{\"command\":\"\(command)\",\"file\":\"topology.yaml\",\"contentBase64\":\"\(topology)\"\(extra),\"ops\":false,\"detailedExitcode\":true,\"dryRun\":false,\"wantSavedPlan\":false}}"
    }
    /// One request; returns its exit status and whether "No changes." was printed.
    @Sendable func call(_ command: String) -> (Int32, Bool) {
        guard let c = try? Channel.connect(socket) else { return (-1, false) }
        c.send(request(command))
        var sawNoChanges = false
        while let line = c.readLine() {
            if line.contains("No changes.") { sawNoChanges = true }
            if let r = line.range(of: "\"exit\":") {
                let code = Int32(line[r.upperBound...].prefix { $0 == "-" || $0.isNumber }) ?? -1
                return (code, sawNoChanges)
            }
        }
        return (-2, false)
    }
    let clock = ContinuousClock()
    let tApply = seconds(clock.measure { _ = call("apply") })
    final class Box: @unchecked Sendable { var latencies: [Double] = []; var ok = 0; let lock = NSLock() }
    let box = Box()
    // 100 real threads, released together: all requests are in flight at once.
    let start = DispatchSemaphore(value: 0)
    let done = DispatchGroup()
    for _ in 0..<clients {
        done.enter()
        Thread.detachNewThread {
            start.wait()
            var result: (Int32, Bool) = (-1, false)
            let t = seconds(ContinuousClock().measure { result = call("plan") })
            box.lock.lock()
            box.latencies.append(t)
            if result.0 == 0 && result.1 { box.ok += 1 }
            box.lock.unlock()
            done.leave()
        }
    }
    let tAll = seconds(clock.measure {
        for _ in 0..<clients { start.signal() }
        done.wait()
    })
    let sorted = box.latencies.sorted()
    func pct(_ p: Double) -> Double { sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))] }
    print("agent over a simulated host, \(gen.devices) devices over \(gen.guests) guests; apply through the socket \(fmt(tApply))")
    print("\(clients) concurrent clients, plan each: \(box.ok)/\(clients) answered correctly (exit 0, No changes.) in \(fmt(tAll)) total")
    print("  latency p50 \(fmt(pct(0.50)))   p90 \(fmt(pct(0.90)))   p99 \(fmt(pct(0.99)))   max \(fmt(sorted.last ?? 0))")
    print("  (the agent serves one request at a time: latency is mostly queueing behind the others)")
}
