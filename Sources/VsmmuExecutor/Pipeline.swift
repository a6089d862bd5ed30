import VsmmuKernel
import VsmmuModel
import VsmmuPlanner

/// Topology → plan → apply, the same for every caller (commands, agent, tests).
public enum Pipeline {
    /// The pipeline's failures are VsmmuErrors (the name is kept for its callers).
    public typealias Failure = VsmmuError

    /// What topology `name` may plan: the holdings without the guests (and their devices)
    /// that other topologies declared (docs/contract.md §7), and those guests' owners.
    public static func ownView(_ all: Holdings, allocations: Allocations, topology name: String) -> (holdings: Holdings, others: [String: String]) {
        let others = allocations.owners(otherThan: name)
        guard !others.isEmpty else { return (all, others) }
        var h = all
        var theirs = Set<PCIAddress>()
        for g in others.keys {
            for d in all.guests[g]?.devices.values ?? [:].values { if let a = d.source.pciAddress { theirs.insert(a) } }
            for a in all.running[g]?.devices.values ?? [:].values { theirs.insert(a) }
            h.guests[g] = nil
            h.running[g] = nil
        }
        h.originalDrivers = h.originalDrivers.filter { !theirs.contains($0.key) }
        h.unknownOriginalDrivers = h.unknownOriginalDrivers.map { $0.subtracting(theirs) }
        return (h, others)
    }

    /// A guest name or a device that another topology holds: the error names that topology
    /// and, from `files` (topology name → the file last applied), its file.
    static func checkOwnership(_ topology: Topology, all: Holdings, others: [String: String], files: [String: String]) throws(Failure) {
        // Nothing is held by another topology (the common case): nothing to look up.
        guard !others.isEmpty else { return }
        func owner(_ t: String) -> String { "topology '\(t)'" + (files[t].map { " (\($0))" } ?? "") }
        for g in topology.guests {
            if let t = others[g.name] {
                throw Failure(.plan, "\(topology.file):\(g.nameMark.line):\(g.nameMark.column): guest '\(g.name)' belongs to \(owner(t)) on this host; nothing was changed",
                              hint: "give the guest another name, or change it in \(files[t] ?? "that topology's file")")
            }
        }
        var holder: [PCIAddress: (guest: String, device: String)] = [:]
        for g in others.keys {
            for (n, d) in all.guests[g]?.devices ?? [:] { if let a = d.source.pciAddress { holder[a] = (g, n) } }
            for (n, a) in all.running[g]?.devices ?? [:] { holder[a] = (g, n) }
        }
        for g in topology.guests {
            for d in g.allDevices {
                guard let a = d.host.pciAddress, let h = holder[a], let t = others[h.guest] else { continue }
                throw Failure(.plan, "\(topology.file):\(d.hostMark.line):\(d.hostMark.column): device '\(d.name)' (\(a)) is held by guest '\(h.guest)' (device '\(h.device)') of \(owner(t)) on this host; nothing was changed",
                              hint: "a device serves one guest: destroy it there first (vsmmu destroy \(files[t] ?? "FILE")), or choose another device")
            }
        }
    }

    /// Observes the kernel (read-only calls) and plans `topology` against it.
    /// `onlyGuests` limits the plan to those guests' holdings; `destroying` plans their teardown.
    /// Guests of other topologies are left alone; `otherFiles` names their files in errors.
    /// `observations`: the agent's cache over a change feed (nil: read everything).
    public static func plan(_ topology: Topology, validation: ValidationResult, port: KernelPort, host: HostDescription,
                            store: StateStore, simulated: Bool, onlyGuests: Set<String>? = nil, destroying: Bool = false,
                            otherFiles: [String: String] = [:], observations: ObservationCache? = nil) throws(Failure) -> Plan {
        // Devices with `vsmmu: auto` are planned where placement put them.
        let topology = validation.placing(topology)
        if let lost = store.lostState(port: port) {
            throw Failure(message: lost.description, hint: "vsmmu apply \(topology.file) --rebuild-state")
        }
        let (owned, others) = ownView(store.holdings, allocations: store.allocations, topology: topology.name)
        try checkOwnership(topology, all: store.holdings, others: others, files: otherFiles)
        var holdings = owned
        if let onlyGuests { holdings.guests = holdings.guests.filter { onlyGuests.contains($0.key) } }
        // A running guest belongs to its VMM (docs/contract.md §6): vsmmu plans none of its
        // objects and never gives its devices back; destroying it is refused.
        let running = holdings.running
        if destroying, let g = topology.guests.first(where: { running[$0.name] != nil }), let r = running[g.name] {
            throw Failure(message: "guest \(g.name) is running: pid \(r.pid) (\(r.commandLine)) holds its devices; nothing was changed",
                          hint: "stop the VMM first (the guest is then prepared again), then destroy")
        }
        let runningDevices = Set(running.values.flatMap(\.devices.values))
        if !runningDevices.isEmpty { holdings.originalDrivers = holdings.originalDrivers.filter { !runningDevices.contains($0.key) } }
        var addresses = Set<PCIAddress>()
        for g in topology.guests { for d in g.allDevices { if let a = d.host.pciAddress { addresses.insert(a) } } }
        let observed: ObservedState
        do { observed = try ObservedState.observe(port: port, holdings: holdings, addresses: addresses, cache: observations) } catch {
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
        let facts = desired.guests.map { GuestFacts.of($0, allocation: plan.allocations.guests[$0.name], placement: validation.placements[$0.name]) }
        plan.facts = facts
        for f in facts { plan.allocations.guests[f.guest]?.facts = f }
        if destroying {
            var kept = store.allocations
            for g in topology.guests { kept.guests[g.name] = nil }
            plan.allocations = kept
        }
        // A running guest keeps every allocated value (its VMM was started with them).
        for name in running.keys { if let a = store.allocations.guests[name] { plan.allocations.guests[name] = a } }
        // A running guest's VMM was started with what it saw then: a change to that plans
        // as `~`, for the operator to restart the VM (docs/contract.md §6).
        let runningHere = topology.guests.filter { running[$0.name] != nil }
        if !runningHere.isEmpty {
            var t = topology
            t.guests = runningHere
            if let d = try? DesiredState.build(topology: t, host: host, resolved: validation.resolved, previous: store.allocations, users: users) {
                for l in Planner.layout(d) {
                    if let before = store.allocations.guests[l.guest]?.layout { plan.changes += Planner.visibleChanges(before, l, restart: true) }
                }
            }
        }
        // Other topologies' guests keep theirs: this plan does not touch them.
        var counts: [String: Int] = [:]
        for (g, t) in others {
            if let a = store.allocations.guests[g] { plan.allocations.guests[g] = a }
            counts[t, default: 0] += 1
        }
        plan.otherTopologies = counts
        return plan
    }

    /// Records the plan's allocations, runs its operations, and checkpoints the holdings
    /// (also after a failure, so the state directory is consistent either way).
    public static func apply(_ plan: Plan, port: KernelPort, store: StateStore, progress: ((String) -> Void)? = nil,
                             calls: ((String) -> Void)? = nil, inFlight: ((String) -> Void)? = nil,
                             shouldStop: () -> Bool = { false }, batch: Int = Executor.defaultBatch) throws {
        try store.saveAllocations(plan.allocations)
        let executor = Executor(port: port, store: store, batch: batch, progress: progress, calls: calls, inFlight: inFlight)
        do {
            try executor.run(plan, shouldStop: shouldStop)
        } catch {
            try? store.checkpoint()
            throw error
        }
        try store.checkpoint()
    }
}
