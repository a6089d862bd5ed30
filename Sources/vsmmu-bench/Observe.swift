import Foundation
import VsmmuExecutor
import VsmmuKernel
import VsmmuModel
import VsmmuPlanner
import VsmmuSim

/// `vsmmu-bench observe-only`: the converged host's observation alone, full and over the
/// change feed, `repeats` times each (for perf / callgrind; prints best of each).
func observeOnly(gen: TopologyGenerator, repeats: Int) throws {
    let host = gen.host()
    let topology = try Topology.parse(SourceText(path: "bench.yaml", bytes: Array(gen.topologyYAML().utf8)))
    let validation = Validator.validate(topology, host: host)
    let sim = SimulatedKernel(host: host, environment: [:])
    let dir = NSTemporaryDirectory() + "vsmmu-bench-observe-\(getpid())"
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let store = try StateStore(directory: dir)
    let plan = try Pipeline.plan(topology, validation: validation, port: sim, host: sim.currentHost, store: store, simulated: true)
    try Pipeline.apply(plan, port: sim, store: store)
    var addresses = Set<PCIAddress>()
    for g in topology.guests { for d in g.allDevices { if let a = d.host.pciAddress { addresses.insert(a) } } }
    guard case .opened(let feed) = sim.openChangeFeed() else { print("no change feed"); exit(1) }
    let cache = ObservationCache(feed: feed)
    _ = try ObservedState.observe(port: sim, holdings: store.holdings, addresses: addresses, cache: cache)
    let mode = ProcessInfo.processInfo.environment["VSMMU_BENCH_OBSERVE"] ?? "both"
    var full = Double.infinity, fed = Double.infinity
    for _ in 0..<repeats {
        if mode != "fed" { full = min(full, best(1) { _ = try? ObservedState.observe(port: sim, holdings: store.holdings, addresses: addresses) }) }
        if mode != "full" { fed = min(fed, best(1) { _ = try? ObservedState.observe(port: sim, holdings: store.holdings, addresses: addresses, cache: cache) }) }
    }
    print("observe full \(fmt(full)), over the change feed \(fmt(fed)); best of \(repeats)")
}
