import Foundation
import VsmmuProvisioning
import VsmmuExecutor
import VsmmuKernel
import VsmmuLinux
import VsmmuModel
import VsmmuPlanner
import VsmmuYAML

/// What a request asks for. On the agent's socket it is the command's name.
public enum RequestKind: String, Codable, Sendable {
    case plan, apply, destroy, show, reconcile
    /// The guest's QEMU arguments or libvirt domain, resolved where the agent runs.
    case qemuArgs = "qemu-args", libvirtXML = "libvirt-xml"
}

/// One kernel-facing request (plan, apply, destroy, show), the same whether the CLI runs
/// it in-process or sends it to the agent: both render what the provisioning API
/// (VsmmuProvisioning.Provisioner) returns, so outputs and exit codes are the same both ways.
public struct Request: Codable, Sendable {
    public var command: RequestKind
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
    /// apply: rebuild a lost holdings.json from the journal and the kernel first.
    public var rebuildState = false
    /// apply/destroy: a line per kernel call too (-v), or no progress lines at all (--quiet).
    public var verbose = false
    public var quiet = false
    /// qemu-args: fd placeholders (--fds).
    public var fds = false
    /// libvirt-xml: --dialect and --libvirt-version.
    public var libvirtDialect: String?
    public var libvirtVersion: String?

    public init(_ command: RequestKind) { self.command = command }

    // Absent keys take their defaults, so older and newer clients of protocol version 1
    // can leave out what they do not use.
    enum CodingKeys: String, CodingKey {
        case command, file, contentBase64, format, ops, detailedExitcode, autoApprove, dryRun, wantSavedPlan, expectFingerprint, guest, rebuildState
        case verbose, quiet, fds
        case libvirtDialect, libvirtVersion
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        command = try c.decode(RequestKind.self, forKey: .command)
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
        rebuildState = try c.decodeIfPresent(Bool.self, forKey: .rebuildState) ?? false
        verbose = try c.decodeIfPresent(Bool.self, forKey: .verbose) ?? false
        quiet = try c.decodeIfPresent(Bool.self, forKey: .quiet) ?? false
        fds = try c.decodeIfPresent(Bool.self, forKey: .fds) ?? false
        libvirtDialect = try c.decodeIfPresent(String.self, forKey: .libvirtDialect)
        libvirtVersion = try c.decodeIfPresent(String.self, forKey: .libvirtVersion)
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

/// Runs a request through the provisioning API and renders its result on a console.
enum Runner {
    /// Runs `request` on `session`, writing to `console`. `confirm` asks the user (nil when
    /// nobody can be asked: then --auto-approve or an expected fingerprint is required).
    static func execute(_ request: Request, session: Session, console: Console, outcome: RequestOutcome,
                        confirm: ((Plan) -> Bool)? = nil, shouldStop: @escaping () -> Bool = { false }) -> Int32 {
        do {
            return try runReporting(console) {
                let api = Provisioner(session: session)
                switch request.command {
                case .plan: return try plan(request, api: api, console: console, outcome: outcome)
                case .apply: return try apply(request, api: api, console: console, confirm: confirm, destroying: false, shouldStop: shouldStop)
                case .destroy: return try apply(request, api: api, console: console, confirm: confirm, destroying: true, shouldStop: shouldStop)
                case .show: return try show(request, api: api, console: console)
                case .reconcile: throw CommandError(message: "reconcile is the agent's: run it with --socket")
                case .qemuArgs, .libvirtXML: return try vmm(request, session: session, console: console)
                }
            }
        } catch {
            return 1
        }
    }

    /// qemu-args and libvirt-xml resolved on this session's host and allocations.
    static func vmm(_ r: Request, session: Session, console: Console) throws -> Int32 {
        guard let guest = r.guest else { throw CommandError(message: "the request names no guest") }
        let l = try LayoutOptions.layout(try source(r), guest: guest, host: session.host, stateDir: session.stateDir,
                                         simulated: session.simulated, console: console)
        if r.command == .libvirtXML {
            return try LibvirtXml.write(l, dialect: try LibvirtXml.dialect(r.libvirtDialect), version: try LibvirtXml.version(r.libvirtVersion), console: console)
        }
        return try QemuArgs.write(l, guest: guest, format: QemuArgs.Format(rawValue: r.format ?? "args") ?? .args, fds: r.fds, console: console)
    }

    /// Where the API's lines go: notes and progress to standard error.
    /// `request` chooses the progress lines: per resource (default), with each call (-v), none (--quiet).
    static func events(_ console: Console, request: Request? = nil, plan: @escaping @Sendable (Plan) -> Void = { _ in }) -> ProvisioningEvents {
        let quiet = request?.quiet ?? false, verbose = request?.verbose ?? false
        // On a terminal (and only there: a pipe or an agent's client gets whole lines), the
        // step in flight is shown on a line that the next line overwrites.
        let live = console.stderrIsTerminal && !quiet && !verbose
        let clear = live ? "\r\u{1B}[K" : ""
        var events = ProvisioningEvents(note: { console.errorRaw(clear); console.error($0) },
                                        progress: { if !quiet { console.errorRaw(clear); console.error($0) } },
                                        call: { if verbose && !quiet { console.error("  " + $0) } }, planned: plan)
        if live { events.inFlight = { console.errorRaw(clear + "  … " + $0) } }
        return events
    }

    static func source(_ r: Request) throws -> SourceText {
        guard let file = r.file, let bytes = r.content else { throw CommandError(message: "the request names no file") }
        return SourceText(path: file, bytes: bytes)
    }

    static func plan(_ r: Request, api: Provisioner, console: Console, outcome: RequestOutcome) throws -> Int32 {
        let plan = try api.plan(try source(r), events: events(console))
        if r.format == "json" {
            console.print(PlanJSON.render(plan).rendered())
        } else if r.format == "yaml" {
            console.write(ShowDocument.yaml(PlanJSON.render(plan)))
        } else {
            console.write(PlanText.render(plan, ops: r.ops))
        }
        outcome.fingerprint = plan.fingerprint
        if r.wantSavedPlan { outcome.savedPlan = plan }
        return r.detailedExitcode && !plan.isEmpty ? 2 : 0
    }

    /// Apply and destroy: the API does lock, recover, plan, confirm, execute, verify.
    static func apply(_ r: Request, api: Provisioner, console: Console, confirm: ((Plan) -> Bool)?, destroying: Bool,
                      shouldStop: @escaping () -> Bool) throws -> Int32 {
        var options = ApplyOptions()
        options.destroying = destroying
        options.dryRun = r.dryRun
        options.autoApprove = r.autoApprove
        options.expectFingerprint = r.expectFingerprint
        options.rebuildState = r.rebuildState
        options.confirm = confirm
        options.shouldStop = shouldStop
        let input: ApplyInput
        if let bytes = r.content, let saved = SavedPlan.decode(bytes) { input = .savedPlan(saved, file: r.file ?? "?") } else { input = .topology(try source(r)) }
        let outcome = try api.apply(input, options: options, events: events(console, request: r, plan: { console.write(PlanText.render($0, ops: false)) }))
        switch outcome {
        case .noChanges: return 0
        case .dryRun:
            console.print("Dry run: nothing was changed.")
            return 0
        case .cancelled:
            console.print("Cancelled: nothing was changed.")
            return 1
        case .applied(let plan):
            console.print("\(destroying ? "Destroy" : "Apply") complete! Resources: \(plan.toAdd) added, \(plan.toChange) changed, \(plan.toDestroy) destroyed.")
            return 0
        }
    }

    static func show(_ r: Request, api: Provisioner, console: Console) throws -> Int32 {
        let s = try api.show(events: events(console))
        let doc = ShowDocument.build(s.observed, host: s.host, simulated: s.simulated, interrupted: s.interrupted, lost: s.lost, lifecycle: s.lifecycle,
                                     facts: s.facts)
        if r.format == "json" { console.print(doc.rendered()) } else { console.write(ShowDocument.yaml(doc)) }
        return 0
    }
}

/// Exit status 1 after errors were already printed.
struct ExitCode1: Error {}
