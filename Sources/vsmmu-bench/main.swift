import Foundation
import VsmmuKernel
import VsmmuModel
import VsmmuYAML
import VsmmuExecutor
import VsmmuPlanner
import VsmmuSim
import VsmmuIPC

/// vsmmu-bench: speed and memory figures, in a release build, never as unit tests.
///   swift run -c release vsmmu-bench compile [--devices N] [--guests N] [--repeat N]
///   swift run -c release vsmmu-bench generate --devices N --guests N DIR
let usage = """
usage: vsmmu-bench compile [--devices 10000] [--guests 1250] [--repeat 15]
       vsmmu-bench plan [--devices 10000] [--guests 1250] [--rounds 3] [--replans 3]   (plan from empty, apply, converged re-plan; ratios to floors)
       vsmmu-bench agent-load [--devices 1000] [--guests 125] [--clients 100]   (concurrent plan requests to a real agent)
       vsmmu-bench generate [--devices N] [--guests N] DIR   (writes topology.yaml and host.yaml)
"""

func option(_ name: String, _ args: [String], default value: Int) -> Int {
    guard let i = args.firstIndex(of: name), i + 1 < args.count, let v = Int(args[i + 1]) else { return value }
    return v
}

/// Peak resident set size of this process so far (VmHWM), in MiB.
func peakRSSMiB() -> Double {
    guard let s = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return -1 }
    for line in s.split(separator: "\n") where line.hasPrefix("VmHWM:") {
        let kb = line.split(separator: " ").compactMap { Double($0) }.first ?? -1
        return kb / 1024
    }
    return -1
}

func seconds(_ d: Duration) -> Double { Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18 }

/// Best of `n` runs (the least disturbed by the other core's load).
func best(_ n: Int, _ body: () -> Void) -> Double {
    let clock = ContinuousClock()
    var times: [Double] = []
    for _ in 0..<n { times.append(seconds(clock.measure(body))) }
    return times.min() ?? 0
}

/// Best of `n` runs of a step that builds something; freeing it is not timed
/// (the caller goes on to use it).
func bestKeeping<T>(_ n: Int, _ body: () -> T) -> (Double, T?) {
    let clock = ContinuousClock()
    var times: [Double] = []
    var last: T?
    for _ in 0..<n {
        var made: T?
        times.append(seconds(clock.measure { made = body() }))
        last = made   // the previous result is freed here, outside the timed region
    }
    return (times.min() ?? 0, last)
}

func fmt(_ s: Double) -> String { String(format: "%8.1f ms", s * 1000) }

/// One append + fsync of a small file in the temp directory (where the bench's state
/// directories live), median of 50: what one journal sync costs on this machine now.
func fsyncSeconds() -> Double {
    let path = NSTemporaryDirectory() + "vsmmu-bench-fsync-\(getpid())"
    let fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0o600)
    defer { close(fd); unlink(path) }
    let line = [UInt8](repeating: 65, count: 200)
    let clock = ContinuousClock()
    var times: [Double] = []
    for _ in 0..<50 { times.append(seconds(clock.measure { _ = line.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }; fsync(fd) })) }
    return times.sorted()[times.count / 2]
}

let args = Array(CommandLine.arguments.dropFirst())
guard let command = args.first else { print(usage); exit(2) }
let devices = option("--devices", args, default: 10_000)
let guests = option("--guests", args, default: 1_250)
let repeats = option("--repeat", args, default: 15)
let gen = TopologyGenerator(guests: guests, devices: devices)

switch command {
case "generate":
    guard let dir = args.last, !dir.hasPrefix("-"), args.count >= 2 else { print(usage); exit(2) }
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    try gen.topologyYAML().write(toFile: dir + "/topology.yaml", atomically: true, encoding: .utf8)
    try gen.host().renderYAML().write(toFile: dir + "/host.yaml", atomically: true, encoding: .utf8)
    print("wrote \(dir)/topology.yaml and \(dir)/host.yaml (\(devices) devices over \(guests) guests)")

case "compose-only":
    // For profiling the composer alone (valgrind --tool=callgrind).
    let yaml = Array(gen.topologyYAML().utf8)
    for _ in 0..<repeats { _ = try? YAMLComposer.compose(yaml) }

case "compile":
    let yaml = Array(gen.topologyYAML().utf8)
    let host = gen.host()
    let source = SourceText(path: "bench.yaml", bytes: yaml)
    var events = 0
    // Raw parse and compose alternate, so that both see the same machine state.
    var raw = Double.infinity, compose = Double.infinity
    for _ in 0..<repeats {
        raw = min(raw, best(1) { events = YAMLComposer.countEvents(yaml) })
        compose = min(compose, bestKeeping(1) { try? YAMLComposer.compose(yaml) }.0)
    }
    let (parse, parsed) = bestKeeping(repeats) { try? Topology.parse(source) }
    let topology = parsed ?? nil
    guard let topology else { print("generated topology does not parse"); exit(1) }
    var result: ValidationResult?
    let validate = best(repeats) { result = Validator.validate(topology, host: host) }
    let (total, _) = bestKeeping(repeats) { () -> ValidationResult? in
        guard let t = try? Topology.parse(source) else { return nil }
        return Validator.validate(t, host: host)
    }
    guard let result, result.isValid else {
        print("generated topology is invalid: \(result?.diagnostics.prefix(3).map(\.description) ?? [])")
        exit(1)
    }
    let n = topology.guests.reduce(0) { $0 + $1.allDevices.count }
    print("topology: \(n) devices, \(topology.guests.count) guests, \(yaml.count / 1024) KiB, \(events) events; best of \(repeats)")
    print("raw libyaml event parse      \(fmt(raw))")
    print("parse + compose (nodes)      \(fmt(compose))   ratio to raw \(String(format: "%.2f", compose / raw))x  (target <= 1.5x)")
    print("compose + schema + model     \(fmt(parse))")
    print("semantic validate vs host    \(fmt(validate))   (target < 200 ms)")
    print("file to validated, in all    \(fmt(total))")
    print("peak RSS                     \(String(format: "%8.1f MiB", peakRSSMiB()))   (target < 150 MiB)")

case "plan":
    // One size per process, so peak RSS is this size's. Each round is a fresh host and
    // state directory: plan from empty, apply, converged re-plan. Every figure is printed
    // next to its floor measured in the same run, as a ratio (the machine may be busy).
    let host = gen.host()
    let source = SourceText(path: "bench.yaml", bytes: Array(gen.topologyYAML().utf8))
    guard let topology = try? Topology.parse(source) else { print("generated topology does not parse"); exit(1) }
    let clock = ContinuousClock()
    var validation: ValidationResult!
    let tValidate = seconds(clock.measure { validation = Validator.validate(topology, host: host) })
    guard validation.isValid else { print("invalid: \(validation.diagnostics.prefix(3))"); exit(1) }
    let rounds = args.contains("--plan-only") ? 1 : option("--rounds", args, default: 3)
    // --replans N: converged re-plans per round, each kind (best of all; a profile of the re-plan alone).
    let replans = max(1, option("--replans", args, default: 3))
    var tPlan = Double.infinity, tApply = Double.infinity, tReplan = Double.infinity, tObserve = Double.infinity
    var tReplanFed = Double.infinity, tObserveFed = Double.infinity   // with the agent's change feed
    var operations = 0, resources = 0, applied = 0, replanOps = 0, replanCalls = 0, journalSyncs = 0, syncs = 0, rssPlan = 0.0
    for round in 0..<rounds {
        let sim = SimulatedKernel(host: host, environment: [:])
        let dir = NSTemporaryDirectory() + "vsmmu-bench-\(getpid())-\(round)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try StateStore(directory: dir)
        var plan: Plan!
        tPlan = min(tPlan, try seconds(clock.measure {
            plan = try Pipeline.plan(topology, validation: validation, port: sim, host: sim.currentHost, store: store, simulated: true)
        }))
        operations = plan.operations.count; resources = plan.changes.count
        if round == 0 { rssPlan = peakRSSMiB() }
        if args.contains("--plan-only") { break }
        let syncsBefore = store.syncs
        tApply = min(tApply, try seconds(clock.measure { try Pipeline.apply(plan, port: sim, store: store) }))
        applied = sim.mutatingCalls; journalSyncs = store.journalSyncs; syncs = store.syncs - syncsBefore
        var again: Plan!
        for _ in 0..<replans {
            tReplan = min(tReplan, try seconds(clock.measure {
                again = try Pipeline.plan(topology, validation: validation, port: sim, host: sim.currentHost, store: store, simulated: true)
            }))
        }
        replanOps = again.operations.count; replanCalls = sim.mutatingCalls - applied
        // The converged re-plan's floor: observing the kernel for the same holdings alone.
        var addresses = Set<PCIAddress>()
        for g in topology.guests { for d in g.allDevices { if let a = d.host.pciAddress { addresses.insert(a) } } }
        tObserve = min(tObserve, best(replans) { _ = try? ObservedState.observe(port: sim, holdings: store.holdings, addresses: addresses) })
        // The agent's converged re-plan: its observation over the change feed (one full read first).
        guard case .opened(let feed) = sim.openChangeFeed() else { print("no change feed on the simulated kernel"); exit(1) }
        let cache = ObservationCache(feed: feed)
        _ = try? ObservedState.observe(port: sim, holdings: store.holdings, addresses: addresses, cache: cache)
        for _ in 0..<replans {
            tReplanFed = min(tReplanFed, try seconds(clock.measure {
                _ = try Pipeline.plan(topology, validation: validation, port: sim, host: sim.currentHost, store: store, simulated: true, observations: cache)
            }))
        }
        tObserveFed = min(tObserveFed, best(5) { _ = try? ObservedState.observe(port: sim, holdings: store.holdings, addresses: addresses, cache: cache) })
    }
    if args.contains("--plan-only") {
        print("plan from empty \(fmt(tPlan)), \(operations) operations")
        exit(0)
    }
    let fsync = fsyncSeconds()
    func ratio(_ a: Double, _ b: Double) -> String { String(format: "%6.2fx", a / b) }
    let n = topology.guests.reduce(0) { $0 + $1.allDevices.count }
    print("\(n) devices over \(topology.guests.count) guests; best of \(rounds) rounds, each ratio against a floor measured in this run")
    print("  validate                 \(fmt(tValidate))")
    print("  plan from empty          \(fmt(tPlan))             \(operations) operations, \(resources) resources   (target < 500 ms)")
    print("  apply (journaled, fsync) \(fmt(tApply))  \(ratio(tApply, tPlan)) the plan from empty   (target <= 5x)   \(applied) mutating calls")
    print("    fsyncs                 \(String(format: "%8d", syncs))             \(journalSyncs) of the journal (one per \(Executor.defaultBatch) steps) + snapshots; one fsync here \(String(format: "%.0f", fsync * 1e6)) us, so \(fmt(Double(syncs) * fsync)) of the apply")
    print("  converged re-plan        \(fmt(tReplan))  \(ratio(tReplan, tObserve)) observing the kernel alone (\(fmt(tObserve)))   \(replanOps) operations, \(replanCalls) mutating calls   (target 0, <= 50 ms quiet)")
    print("  converged re-plan, fed   \(fmt(tReplanFed))  \(ratio(tReplanFed, tReplan)) the full one; observing over the change feed \(fmt(tObserveFed)), \(ratio(tObserveFed, tObserve)) the full observation   (target <= 10 ms)")
    print("  peak RSS after plan      \(String(format: "%8.1f MiB", rssPlan))")
    print("  peak RSS at the end      \(String(format: "%8.1f MiB", peakRSSMiB()))   (target < 300 MiB)")

case "observe-only":   // for perf/callgrind: the observation alone (Observe.swift)
    try observeOnly(gen: gen, repeats: repeats)

case "agent-load":
    try agentLoad(gen: gen, clients: option("--clients", args, default: 100))

default:
    print(usage)
    exit(2)
}
