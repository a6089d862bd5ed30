import VsmmuKernel
import VsmmuModel
import VsmmuPlanner

/// Topology → plan → apply, the same for every caller (commands, agent, tests).
public enum Pipeline {
    /// The pipeline's failures are VsmmuErrors (the name is kept for its callers).
    public typealias Failure = VsmmuError

    /// Observes the kernel (read-only calls) and plans `topology` against it.
    /// `onlyGuests` limits the plan to those guests' holdings; `destroying` plans their teardown.
    public static func plan(_ topology: Topology, validation: ValidationResult, port: KernelPort, host: HostDescription,
                            store: StateStore, simulated: Bool, onlyGuests: Set<String>? = nil, destroying: Bool = false) throws(Failure) -> Plan {
        if let lost = store.lostState(port: port) {
            throw Failure(message: lost.description, hint: "vsmmu apply \(topology.file) --rebuild-state")
        }
        var holdings = store.holdings
        if let onlyGuests { holdings.guests = holdings.guests.filter { onlyGuests.contains($0.key) } }
        // A running guest belongs to its VMM (docs/contract.md §6): vsmmu plans none of its
        // objects and never gives its devices back; destroying it is refused.
        let running = holdings.running
        if destroying, let g = topology.guests.first(where: { running[$0.name] != nil }), let r = running[g.name] {
            throw Failure(message: "guest \(g.name) is running: pid \(r.pid) (\(r.commandLine)) holds its devices; nothing was changed",
                          hint: "stop the VMM first (the guest is then prepared again), then destroy")
        }
        let runningDevices = Set(running.values.flatMap(\.devices.values))
        holdings.originalDrivers = holdings.originalDrivers.filter { !runningDevices.contains($0.key) }
        var addresses = Set<PCIAddress>()
        for g in topology.guests { for d in g.allDevices { if let a = d.host.pciAddress { addresses.insert(a) } } }
        let observed: ObservedState
        do { observed = try ObservedState.observe(port: port, holdings: holdings, addresses: addresses) } catch {
            throw VsmmuError("cannot read the kernel's state", kernel: error)
        }
        var effective = topology
        if destroying { effective.guests = [] }
        effective.guests.removeAll { running[$0.name] != nil }
        let users: UserResolver = simulated ? SimulatedUserResolver() : SystemUserResolver()
        let desired: DesiredState
        do {
            desired = try DesiredState.build(topology: effective, host: host, resolved: validation.resolved, previous: store.allocations, users: users)
        } catch {
            throw error
        }
        var plan = Planner.plan(desired: desired, observed: observed, topologyFile: topology.file, hostName: host.name, simulated: simulated)
        if destroying {
            var kept = store.allocations
            for g in topology.guests { kept.guests[g.name] = nil }
            plan.allocations = kept
        }
        // A running guest keeps every allocated value (its VMM was started with them).
        for name in running.keys { if let a = store.allocations.guests[name] { plan.allocations.guests[name] = a } }
        return plan
    }

    /// Records the plan's allocations, runs its operations, and checkpoints the holdings
    /// (also after a failure, so the state directory is consistent either way).
    public static func apply(_ plan: Plan, port: KernelPort, store: StateStore, progress: @escaping (String) -> Void = { _ in },
                             shouldStop: () -> Bool = { false }) throws {
        try store.saveAllocations(plan.allocations)
        let executor = Executor(port: port, store: store, progress: progress)
        do {
            try executor.run(plan, shouldStop: shouldStop)
        } catch {
            try? store.checkpoint()
            throw error
        }
        try store.checkpoint()
    }
}
