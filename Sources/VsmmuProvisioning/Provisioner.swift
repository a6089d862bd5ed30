import Foundation
import VsmmuExecutor
import VsmmuKernel
import VsmmuLinux
import VsmmuModel
import VsmmuPlanner

/// Where a provisioning call reports as it goes: the CLI prints to standard error, the
/// agent sends the lines to its client, a test collects them.
public struct ProvisioningEvents: Sendable {
    /// A line about what is being done besides the plan (recovery, lifecycle, notes).
    public var note: @Sendable (String) -> Void
    /// One line per resource of an apply as it starts and when it ends.
    public var progress: @Sendable (String) -> Void
    /// One line per finished step (kernel call) of an apply.
    public var call: @Sendable (String) -> Void
    /// The plan an apply is about to carry out (shown before it asks for approval).
    public var planned: @Sendable (Plan) -> Void
    /// The step an apply is about to run (`[n/N] CALL resource`), for a live line.
    public var inFlight: @Sendable (String) -> Void = { _ in }

    public init(note: @escaping @Sendable (String) -> Void, progress: @escaping @Sendable (String) -> Void = { _ in },
                call: @escaping @Sendable (String) -> Void = { _ in }, planned: @escaping @Sendable (Plan) -> Void = { _ in }) {
        self.note = note; self.progress = progress; self.call = call; self.planned = planned
    }

    public static let silent = ProvisioningEvents(note: { _ in })
}

/// The topology is not valid here: its diagnostics (or the parse error), for the caller to
/// print with FILE:LINE:COL. Nothing was changed.
public struct InvalidTopology: Error, CustomStringConvertible {
    public var source: SourceText
    public var diagnostics: [Diagnostic]
    /// The file could not be parsed at all (its rendered error).
    public var parseError: String?
    public var description: String { parseError ?? diagnostics.map { $0.rendered(source: source) }.joined(separator: "\n") }
}

/// What to apply: a topology, or a plan saved by `plan --out` (applied only if the kernel
/// has not moved since).
public enum ApplyInput {
    case topology(SourceText)
    case savedPlan(Plan, file: String)
}

public struct ApplyOptions {
    public var destroying = false
    public var dryRun = false
    public var autoApprove = false
    /// Refuse unless a fresh plan has this fingerprint (the plan the user approved).
    public var expectFingerprint: String?
    /// Rebuild a lost holdings record from what the kernel shows (issue 13's recovery).
    public var rebuildState = false
    /// Asks the user; nil when nobody can be asked.
    public var confirm: ((Plan) -> Bool)?
    /// Asked before each step (SIGTERM in the agent).
    public var shouldStop: () -> Bool = { false }
    public init() {}
}

public enum ApplyOutcome {
    case noChanges(Plan)
    case dryRun(Plan)
    case cancelled(Plan)
    case applied(Plan)
    public var plan: Plan {
        switch self { case .noChanges(let p), .dryRun(let p), .cancelled(let p), .applied(let p): return p }
    }
}

/// What `show` reports: the holdings checked against the kernel, the lifecycle and what
/// could not be read.
public struct ShowState {
    public var observed: ObservedState
    public var host: String
    public var simulated: Bool
    public var interrupted: Int
    public var lost: LostState?
    public var lifecycle: [GuestStatus]
    /// Each guest's facts as its topology was last planned (GuestFacts), by guest name.
    public var facts: [String: GuestFacts] = [:]
}

/// What a reconcile found and did.
public struct ReconcileResult {
    /// The plan of what differs (nil: no topology was ever applied here).
    public var drift: Plan?
    public var file: String?
    /// The topology it planned (to apply it).
    public var source: SourceText?
    /// The drift was applied (fix mode).
    public var fixed = false
    public var hasDrift: Bool { drift.map { !$0.isEmpty } ?? false }
}

/// The provisioning API (docs/contract.md §4, §6): plan, apply, destroy, show, reconcile and
/// the guest lifecycle over one session. The CLI (in-process) and the agent both call it;
/// the commands only parse arguments and render what it returns.
public final class Provisioner {
    public let session: Session
    public init(session: Session) { self.session = session }

    var port: KernelPort { session.port }

    // MARK: validation and planning

    /// Parses and validates against `host` (read once: on a live host each read walks sysfs).
    public func validated(_ source: SourceText, host: HostDescription) throws -> (Topology, ValidationResult) {
        try Self.validate(source, host: host)
    }

    /// The same, with no kernel (qemu-args and libvirt-xml resolve a topology against a host file).
    /// A file compiled before against the same host is not parsed nor validated again (CompiledTopologies).
    public static func validate(_ source: SourceText, host: HostDescription) throws -> (Topology, ValidationResult) {
        if let known = CompiledTopologies.shared.validated(source, host: host) { return known }
        let topology: Topology
        do { topology = try CompiledTopologies.shared.parse(source) } catch {
            throw InvalidTopology(source: source, diagnostics: [], parseError: error.rendered())
        }
        let result = Validator.validate(topology, host: host)
        guard result.isValid else { throw InvalidTopology(source: source, diagnostics: result.diagnostics) }
        CompiledTopologies.shared.remember(source, topology, host: host, result: result)
        return (topology, result)
    }

    func makePlan(_ topology: Topology, validation: ValidationResult, host: HostDescription, store: StateStore,
                  only guests: Set<String>? = nil, destroying: Bool = false) throws -> Plan {
        do {
            return try Pipeline.plan(topology, validation: validation, port: port, host: host, store: store,
                                     simulated: session.simulated, onlyGuests: guests, destroying: destroying,
                                     otherFiles: appliedFiles(), observations: session.observations)
        } catch {
            var e = error
            if let h = e.hint, h.hasPrefix("vsmmu ") { e.hint = h + session.context }
            throw e
        }
    }

    /// A state directory as one path, however it was named.
    static func canonical(_ dir: String) -> String { URL(fileURLWithPath: dir).standardizedFileURL.resolvingSymlinksInPath().path }

    /// Every topology applied on this state directory, by name (a record from before
    /// several topologies could share a host moves under its name first).
    func applied() -> [(name: String, record: AppliedTopology.Record)] {
        AppliedTopology.migrateLegacy(stateDir: session.stateDir) { r in (try? CompiledTopologies.shared.parse(SourceText(path: r.path, bytes: r.bytes)))?.name }
        return AppliedTopology.all(stateDir: session.stateDir).compactMap { r in
            (try? CompiledTopologies.shared.parse(SourceText(path: r.path, bytes: r.bytes))).map { ($0.name, r) }
        }
    }

    /// Topology name → the file it was last applied from, for errors about what it holds.
    func appliedFiles() -> [String: String] {
        Dictionary(applied().map { ($0.name, $0.record.path) }, uniquingKeysWith: { a, _ in a })
    }

    /// The plan for `source` on this kernel, with its guests' lifecycle states.
    public func plan(_ source: SourceText, events: ProvisioningEvents) throws -> Plan {
        try settleLifecycle(events: events)
        let store = try StateStore(directory: session.stateDir)
        if !store.interrupted.isEmpty {
            events.note("note: an earlier apply was interrupted inside \(store.interrupted.count) step(s); the plan rebuilds what they touched")
        }
        let host = session.host
        let (topology, validation) = try validated(source, host: host)
        var plan = try makePlan(topology, validation: validation, host: host, store: store)
        plan.guests = guestStatuses(topology, store: store)
        plan.stateDir = Self.canonical(session.stateDir)
        return plan
    }

    /// The lifecycle state of `topology`'s guests, and of running guests it no longer has.
    func guestStatuses(_ topology: Topology, store: StateStore) -> [GuestStatus] {
        let names = Set(topology.guests.map(\.name))
        var out: [GuestStatus] = []
        let own = Pipeline.ownView(store.holdings, allocations: store.allocations, topology: topology.name).holdings
        for var s in GuestLifecycle(session: session).statuses(own) {
            if names.contains(s.name) { out.append(s); continue }
            guard s.state == .running || s.state == .handedOver else { continue }
            s.notes.append("not in \(topology.file): torn down when its VMM exits")
            out.append(s)
        }
        return out
    }

    // MARK: apply and destroy

    /// Lock, recover, plan, confirm, execute, verify.
    public func apply(_ input: ApplyInput, options: ApplyOptions, events: ProvisioningEvents, settled: Bool = false) throws -> ApplyOutcome {
        let lock: StateLock? = options.dryRun || session.holdsLock ? nil : try StateLock(directory: session.stateDir)
        defer { _ = lock }
        if !settled && !options.dryRun { try settleLifecycle(events: events, shouldStop: options.shouldStop) }
        let store = try StateStore(directory: session.stateDir, allowingLostState: options.rebuildState && !options.dryRun)
        if options.rebuildState && !options.dryRun {
            for line in try Recovery.rebuild(port: port, store: store) { events.note("Rebuilding: \(line)") }
            try session.save()
        }
        if !store.interrupted.isEmpty && !options.dryRun {
            events.note("Recovering: an earlier run was interrupted inside step(s) \(store.interruptedSummary); what they touched is rebuilt.")
            for closed in Recovery.sweepOrphans(port: port, holdings: store.holdings) { events.note("Recovering: closed \(closed), which no record names") }
            try store.checkpoint()
            try session.save()
        }
        var plan: Plan
        var checked: (source: SourceText, topology: Topology, validation: ValidationResult)?
        switch input {
        case .savedPlan(let saved, let file):
            guard !options.destroying else { throw CommandError(message: "destroy takes a topology file, not a saved plan") }
            if let made = saved.stateDir, made != Self.canonical(session.stateDir) {
                throw CommandError(.state, "\(file) was made on the state directory \(made), not \(Self.canonical(session.stateDir)); nothing was changed",
                                   hint: "vsmmu apply \(file) --state-dir \(made)\(saved.simulated ? " --host FILE" : ""), or make a new plan here: vsmmu plan \(saved.topologyFile) --out \(file)\(session.context)")
            }
            let own = Pipeline.ownView(store.holdings, allocations: store.allocations, topology: saved.topology).holdings
            let current = try ObservedState.observe(port: port, holdings: own,
                                                    addresses: Set(saved.layout.flatMap { $0.devices.compactMap { PCIAddress($0.host) } }),
                                                    cache: session.observations)
            if current.fingerprint != saved.fingerprint {
                throw CommandError(message: "the kernel's state moved since \(file) was made (fingerprint \(saved.fingerprint), now \(current.fingerprint)); nothing was changed",
                                   hint: "make a new plan: vsmmu plan \(saved.topologyFile) --out \(file)\(session.context)")
            }
            plan = saved
        case .topology(let source):
            let host = session.host
            let (t, v) = try validated(source, host: host)
            checked = (source, t, v)
            plan = try makePlan(t, validation: v, host: host, store: store,
                                only: options.destroying ? Set(t.guests.map(\.name)) : nil, destroying: options.destroying)
        }
        events.planned(plan)
        if let expected = options.expectFingerprint, expected != plan.fingerprint {
            throw CommandError(message: "the kernel's state moved since the plan you approved; nothing was changed", hint: "run the command again to see the new plan")
        }
        if plan.isEmpty || plan.onlyAwaitsRestart {
            if !options.dryRun, store.allocations != plan.allocations { try store.saveAllocations(plan.allocations) }
            for c in plan.changes { events.note("note: \(c.address) runs with its earlier values; the VM must be restarted to take them") }
            // The file applied now is the one to prepare the guests from later.
            if !options.dryRun, let checked { try remember(checked.topology, source: checked.source, destroyed: options.destroying) }
            return .noChanges(plan)
        }
        if options.dryRun { return .dryRun(plan) }
        if !session.simulated, session.remote == nil, let checked {
            // Guest RAM is pinned when it is mapped: check the budget before anything moves
            // (this process's limit; a remote executor's is not readable through the protocol).
            let total = checked.topology.guests.flatMap(\.memory).reduce(UInt64(0)) { $0 &+ $1.size }
            if let problem = Preflight.memlockProblem(pinning: total) { throw CommandError(message: problem + "; nothing was changed") }
        }
        // A saved plan is the approval (as terraform's): the user reviewed it when it was made.
        if case .topology = input, !options.autoApprove && options.expectFingerprint == nil {
            guard let confirm = options.confirm else {
                throw CommandError(message: "refusing to \(options.destroying ? "destroy" : "apply") without confirmation: standard input is not a terminal",
                                   hint: "review the plan, then run again with --auto-approve")
            }
            guard confirm(plan) else { return .cancelled(plan) }
        }
        do {
            try Pipeline.apply(plan, port: port, store: store, progress: events.progress, calls: events.call, inFlight: events.inFlight, shouldStop: options.shouldStop)
        } catch {
            try? session.save()
            throw error
        }
        try session.save()
        if let checked { try remember(checked.topology, source: checked.source, destroyed: options.destroying) }
        if let checked { try verify(checked.topology, checked.validation, store: store, destroying: options.destroying, events: events) }
        return .applied(plan)
    }

    /// Keeps the topology just applied for later re-preparation; forgets it once destroyed.
    func remember(_ topology: Topology, source: SourceText, destroyed: Bool) throws {
        _ = applied()  // moves a record from before ownership under its name
        if !destroyed {
            AppliedTopology.save(stateDir: session.stateDir, name: topology.name, path: topology.file, bytes: source.bytes)
        } else {
            // Destroyed: a reconcile must not build it again.
            AppliedTopology.forget(stateDir: session.stateDir, name: topology.name)
        }
    }

    /// Observes again after an apply: nothing may be left to do.
    func verify(_ topology: Topology, _ validation: ValidationResult, store: StateStore, destroying: Bool, events: ProvisioningEvents) throws {
        let again: Plan
        do {
            // A fresh host: the apply has just changed driver bindings.
            again = try makePlan(topology, validation: validation, host: session.host, store: store,
                                 only: destroying ? Set(topology.guests.map(\.name)) : nil, destroying: destroying)
        } catch {
            throw CommandError(.kernel, "every step succeeded, but reading the kernel back to verify them failed",
                               hint: "run `vsmmu plan \(topology.file)\(session.context)` to check the result", cause: error)
        }
        guard !again.isEmpty, !again.onlyAwaitsRestart else { return }
        for c in again.changes where c.restartRequired != true {
            events.note("\(c.address): desired \(c.action == .destroy ? "absent" : c.summary), current \(c.action == .create ? "absent" : (c.forcedBy ?? c.attributes.map { "\($0.name) \($0.from ?? "none")" }.joined(separator: ", ")))")
        }
        throw CommandError(message: "after applying, the kernel still differs from the topology (\(again.operations.count) operation(s) left)",
                           hint: "run `vsmmu plan \(topology.file)\(session.context)` to see them; something else changed the host meanwhile")
    }

    // MARK: show

    public func show(events: ProvisioningEvents) throws -> ShowState {
        try settleLifecycle(events: events)
        let store = try StateStore(directory: session.stateDir, allowingLostState: true)
        let observed = try ObservedState.observe(port: port, holdings: store.holdings, addresses: [], cache: session.observations)
        return ShowState(observed: observed, host: session.host.name, simulated: session.simulated, interrupted: store.interrupted.count,
                         lost: store.lostState(port: port), lifecycle: GuestLifecycle(session: session).statuses(store.holdings),
                         facts: store.allocations.guests.compactMapValues(\.facts))
    }

    // MARK: reconcile and the lifecycle

    /// Plans each topology applied here against the kernel, and with `fix` applies it.
    /// One result per topology, in name order.
    public func reconcile(fix: Bool, events: ProvisioningEvents, shouldStop: @escaping () -> Bool = { false }) throws -> [ReconcileResult] {
        var results: [ReconcileResult] = []
        for (_, record) in applied() {
            let source = SourceText(path: record.path, bytes: record.bytes)
            var result = ReconcileResult(drift: try plan(source, events: events), file: record.path, source: source)
            if fix, result.hasDrift {
                var options = ApplyOptions()
                options.autoApprove = true
                options.shouldStop = shouldStop
                _ = try apply(.topology(source), options: options, events: events, settled: true)
                result.fixed = true
            }
            results.append(result)
        }
        return results
    }

    /// Guests whose VMM exited go back to prepared (docs/contract.md §6): their records go,
    /// and the topology last applied here is applied again, which rebuilds their graphs.
    /// Every request runs it first, so the in-process simulated host behaves as the agent
    /// (which also runs it as soon as a VMM exits).
    public func settleLifecycle(events: ProvisioningEvents, shouldStop: @escaping () -> Bool = { false }) throws {
        // A state directory that cannot be read is the request's own error to report.
        guard let store = try? StateStore(directory: session.stateDir), !store.holdings.running.isEmpty else { return }
        let before = store.holdings.running
        let gone = try GuestLifecycle(session: session).collectExited(store: store)
        guard !gone.isEmpty else { return }
        for g in gone { events.note("note: guest \(g)'s VMM (pid \(before[g]?.pid ?? 0)) exited; preparing the guest again") }
        try reprepare(events: events, shouldStop: shouldStop)
    }

    /// Applies each topology last applied on this state directory (nothing if none).
    public func reprepare(events: ProvisioningEvents, shouldStop: @escaping () -> Bool = { false }) throws {
        for (_, record) in applied() {
            var options = ApplyOptions()
            options.autoApprove = true
            options.shouldStop = shouldStop
            _ = try apply(.topology(SourceText(path: record.path, bytes: record.bytes)), options: options, events: events, settled: true)
        }
    }
}
