import Foundation
import VsmmuExecutor
import VsmmuKernel
import VsmmuLinux
import VsmmuModel
import VsmmuPlanner
import VsmmuYAML

/// One kernel-facing request (plan, apply, destroy, show), the same whether the CLI runs
/// it in-process or sends it to the agent: the agent runs exactly this code, so outputs
/// and exit codes are the same both ways.
public struct Request: Codable, Sendable {
    public var command: String
    /// The file as the user named it (for FILE:LINE:COL), and its bytes.
    public var file: String?
    public var contentBase64: String?
    public var format: String?
    public var ops = false
    public var detailedExitcode = false
    public var autoApprove = false
    public var dryRun = false
    /// With `plan --out`: the saved plan comes back for the client to write.
    public var wantSavedPlan = false
    /// apply: refuse unless a fresh plan has this fingerprint (the plan the user approved).
    public var expectFingerprint: String?
    public var guest: String?

    public init(command: String) { self.command = command }

    // Absent keys take their defaults, so older and newer clients of protocol version 1
    // can leave out what they do not use.
    enum CodingKeys: String, CodingKey {
        case command, file, contentBase64, format, ops, detailedExitcode, autoApprove, dryRun, wantSavedPlan, expectFingerprint, guest
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        command = try c.decode(String.self, forKey: .command)
        file = try c.decodeIfPresent(String.self, forKey: .file)
        contentBase64 = try c.decodeIfPresent(String.self, forKey: .contentBase64)
        format = try c.decodeIfPresent(String.self, forKey: .format)
        ops = try c.decodeIfPresent(Bool.self, forKey: .ops) ?? false
        detailedExitcode = try c.decodeIfPresent(Bool.self, forKey: .detailedExitcode) ?? false
        autoApprove = try c.decodeIfPresent(Bool.self, forKey: .autoApprove) ?? false
        dryRun = try c.decodeIfPresent(Bool.self, forKey: .dryRun) ?? false
        wantSavedPlan = try c.decodeIfPresent(Bool.self, forKey: .wantSavedPlan) ?? false
        expectFingerprint = try c.decodeIfPresent(String.self, forKey: .expectFingerprint)
        guest = try c.decodeIfPresent(String.self, forKey: .guest)
    }

    var content: [UInt8]? { contentBase64.flatMap { Data(base64Encoded: $0) }.map { [UInt8]($0) } }

    mutating func attach(file path: String) throws {
        file = path
        let source: SourceText
        do { source = try InputFile.read(path) } catch {
            throw CommandError(message: error.rendered())
        }
        contentBase64 = Data(source.bytes).base64EncodedString()
    }
}

/// What a request produced besides text: a saved plan or a fingerprint for the client.
final class RequestOutcome: @unchecked Sendable {
    var savedPlan: Plan?
    var fingerprint: String?
}

enum Runner {
    /// Runs `request` on `session`, writing to `console`. `confirm` asks the user (nil when
    /// nobody can be asked: then --auto-approve or an expected fingerprint is required).
    static func execute(_ request: Request, session: Session, console: Console, outcome: RequestOutcome,
                        confirm: ((Plan) -> Bool)? = nil, shouldStop: @escaping () -> Bool = { false }) -> Int32 {
        do {
            return try runReporting(console) {
                switch request.command {
                case "plan": return try plan(request, session: session, console: console, outcome: outcome)
                case "apply": return try apply(request, session: session, console: console, confirm: confirm, destroying: false, shouldStop: shouldStop)
                case "destroy": return try apply(request, session: session, console: console, confirm: confirm, destroying: true, shouldStop: shouldStop)
                case "show": return try show(request, session: session, console: console)
                default: throw CommandError(message: "unknown request '\(request.command)'")
                }
            }
        } catch {
            return 1
        }
    }

    static func source(_ r: Request) throws -> SourceText {
        guard let file = r.file, let bytes = r.content else { throw CommandError(message: "the request names no file") }
        return SourceText(path: file, bytes: bytes)
    }

    /// Parses and validates against the current host, printing errors as `validate` does.
    static func loadValid(_ source: SourceText, host: HostDescription, console: Console) throws -> (Topology, ValidationResult) {
        let topology: Topology
        do { topology = try Topology.parse(source) } catch {
            console.error(error.rendered())
            throw ExitCode1()
        }
        let result = Validator.validate(topology, host: host)
        if !result.isValid {
            for d in result.diagnostics { console.error(d.rendered(source: source)) }
            console.error("\(source.path): \(ValidateRunner.countPhrase(result.diagnostics.count)); nothing was changed")
            throw ExitCode1()
        }
        return (topology, result)
    }

    /// `host` is the snapshot the topology was validated against: on a live host each
    /// `session.host` walks sysfs again, so callers read it once and pass it here.
    static func makePlan(_ topology: Topology, validation: ValidationResult, host: HostDescription, session: Session, store: StateStore,
                         only guests: Set<String>? = nil, destroying: Bool = false) throws -> Plan {
        do {
            return try Pipeline.plan(topology, validation: validation, port: session.port, host: host, store: store,
                                     simulated: session.simulated, onlyGuests: guests, destroying: destroying)
        } catch {
            throw error
        }
    }

    static func plan(_ r: Request, session: Session, console: Console, outcome: RequestOutcome) throws -> Int32 {
        let store = try StateStore(directory: session.stateDir)
        if !store.interrupted.isEmpty {
            console.error("note: an earlier apply was interrupted inside \(store.interrupted.count) step(s); the plan rebuilds what they touched")
        }
        let host = session.host
        let (topology, validation) = try loadValid(try source(r), host: host, console: console)
        let plan = try makePlan(topology, validation: validation, host: host, session: session, store: store)
        if r.format == "json" {
            console.print(PlanJSON.render(plan).rendered())
        } else {
            console.write(PlanText.render(plan, ops: r.ops))
        }
        outcome.fingerprint = plan.fingerprint
        if r.wantSavedPlan { outcome.savedPlan = plan }
        return r.detailedExitcode && !plan.isEmpty ? 2 : 0
    }

    /// Apply and destroy: lock, recover, plan, confirm, execute, verify.
    static func apply(_ r: Request, session: Session, console: Console, confirm: ((Plan) -> Bool)?, destroying: Bool,
                      shouldStop: @escaping () -> Bool) throws -> Int32 {
        let lock: StateLock? = r.dryRun || session.holdsLock ? nil : try StateLock(directory: session.stateDir)
        defer { _ = lock }
        let store = try StateStore(directory: session.stateDir)
        if !store.interrupted.isEmpty && !r.dryRun {
            let steps = store.interrupted.map { "\($0.index) \($0.call) (\($0.resource))" }.joined(separator: ", ")
            console.error("Recovering: an earlier run was interrupted inside step(s) \(steps); what they touched is rebuilt.")
            for closed in Recovery.sweepOrphans(port: session.port, holdings: store.holdings) {
                console.error("Recovering: closed \(closed), which no record names")
            }
            try store.checkpoint()
            try session.save()
        }
        let file = r.file ?? "?"
        var plan: Plan
        var topology: Topology?
        var validation: ValidationResult?
        if let bytes = r.content, let saved = SavedPlan.decode(bytes) {
            guard !destroying else { throw CommandError(message: "destroy takes a topology file, not a saved plan") }
            let current = try ObservedState.observe(port: session.port, holdings: store.holdings,
                                                    addresses: Set(saved.layout.flatMap { $0.devices.compactMap { PCIAddress($0.host) } }))
            if current.fingerprint != saved.fingerprint {
                throw CommandError(message: "the kernel's state moved since \(file) was made (fingerprint \(saved.fingerprint), now \(current.fingerprint)); nothing was changed",
                                   hint: "make a new plan: vsmmu plan \(saved.topologyFile) --out \(file)")
            }
            plan = saved
        } else {
            let host = session.host
            let (t, v) = try loadValid(try source(r), host: host, console: console)
            topology = t
            validation = v
            plan = try makePlan(t, validation: v, host: host, session: session, store: store,
                                only: destroying ? Set(t.guests.map(\.name)) : nil, destroying: destroying)
        }
        console.write(PlanText.render(plan, ops: false))
        if let expected = r.expectFingerprint, expected != plan.fingerprint {
            throw CommandError(message: "the kernel's state moved since the plan you approved; nothing was changed", hint: "run the command again to see the new plan")
        }
        if plan.isEmpty {
            if !r.dryRun, store.allocations != plan.allocations { try store.saveAllocations(plan.allocations) }
            return 0
        }
        if r.dryRun {
            console.print("Dry run: nothing was changed.")
            return 0
        }
        if !session.simulated, session.remote == nil, let topology {
            // Guest RAM is pinned when it is mapped: check the budget before anything moves
            // (this process's limit; a remote executor's is not readable through the protocol).
            let total = topology.guests.flatMap(\.memory).reduce(UInt64(0)) { $0 &+ $1.size }
            if let problem = Preflight.memlockProblem(pinning: total) { throw CommandError(message: problem + "; nothing was changed") }
        }
        if !r.autoApprove && r.expectFingerprint == nil {
            guard let confirm else {
                throw CommandError(message: "refusing to \(destroying ? "destroy" : "apply") without confirmation: standard input is not a terminal",
                                   hint: "review the plan, then run again with --auto-approve")
            }
            guard confirm(plan) else {
                console.print("Cancelled: nothing was changed.")
                return 1
            }
        }
        do {
            try Pipeline.apply(plan, port: session.port, store: store, progress: { console.error($0) }, shouldStop: shouldStop)
        } catch {
            try? session.save()
            throw error
        }
        try session.save()
        if !destroying, let topology { session.remember(topology, source: r.content) }

        // Verify: observe again; nothing may be left to do.
        if let topology, let validation {
            // A fresh host: the apply has just changed driver bindings.
            let again: Plan
            do {
                again = try makePlan(topology, validation: validation, host: session.host, session: session, store: store,
                                     only: destroying ? Set(topology.guests.map(\.name)) : nil, destroying: destroying)
            } catch {
                throw CommandError(message: "every step succeeded, but reading the kernel back to verify them failed: \(error)",
                                   hint: "run `vsmmu plan` to check the result")
            }
            if !again.isEmpty {
                for c in again.changes {
                    console.error("\(c.address): desired \(c.action == .destroy ? "absent" : c.summary), current \(c.action == .create ? "absent" : (c.forcedBy ?? c.attributes.map { "\($0.name) \($0.from ?? "none")" }.joined(separator: ", ")))")
                }
                throw CommandError(message: "after applying, the kernel still differs from the topology (\(again.operations.count) operation(s) left)",
                                   hint: "run `vsmmu plan` to see them; something else changed the host meanwhile")
            }
        }
        let verb = destroying ? "Destroy" : "Apply"
        console.print("\(verb) complete! Resources: \(plan.toAdd) added, \(plan.toChange) changed, \(plan.toDestroy) destroyed.")
        return 0
    }

    static func show(_ r: Request, session: Session, console: Console) throws -> Int32 {
        let store = try StateStore(directory: session.stateDir)
        let observed = try ObservedState.observe(port: session.port, holdings: store.holdings, addresses: [])
        let doc = ShowDocument.build(observed, host: session.host.name, simulated: session.simulated, interrupted: store.interrupted.count)
        if r.format == "json" { console.print(doc.rendered()) } else { console.write(ShowDocument.yaml(doc)) }
        return 0
    }
}

/// Exit status 1 after errors were already printed.
struct ExitCode1: Error {}
