import ArgumentParser
import Foundation
import VsmmuExecutor
import VsmmuKernel
import VsmmuLinux
import VsmmuModel
import VsmmuPlanner
import VsmmuSim
import VsmmuYAML

/// Options every kernel-facing command takes (SPEC §4 "Common options").
struct KernelOptions: ParsableArguments {
    @Option(help: ArgumentHelp("Run against a simulated kernel started from this host description (kind Host). Its state, including what an agent would hold, is kept under the state directory (sim/host.yaml: edit it to simulate drift); once it exists, it is what runs.", valueName: "FILE"))
    var host: String?

    @Option(help: ArgumentHelp("State directory: holdings, journal, allocations, lock (default /var/lib/vsmmu for root, else $XDG_STATE_HOME/vsmmu).", valueName: "DIR"))
    var stateDir: String?

    @Option(help: ArgumentHelp("Where sysfs is mounted (for tests).", valueName: "DIR"))
    var sysfsRoot: String = "/sys"

    @Option(help: ArgumentHelp("The agent's socket (or VSMMU_SOCKET); with --host and no --socket, everything runs in-process.", valueName: "PATH"))
    var socket: String?

    var resolvedStateDir: String {
        if let stateDir { return stateDir }
        if getuid() == 0 { return "/var/lib/vsmmu" }
        let env = ProcessInfo.processInfo.environment
        let base = env["XDG_STATE_HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? ((env["HOME"] ?? NSTemporaryDirectory()) + "/.local/state")
        return base + "/vsmmu"
    }
}

/// A command-level failure: printed as `error: message` (+ hint), exit status 1.
struct CommandError: Error, CustomStringConvertible {
    var message: String
    var hint: String?
    var description: String { message }
}

/// YAML for the simulated host's host.yaml (the same format as `vsmmu host`).
struct YAMLHostCodec: HostFileCodec {
    func decode(_ text: String, path: String) throws -> HostDescription {
        do { return try HostDescription.parse(SourceText(path: path, bytes: Array(text.utf8))) } catch {
            throw CommandError(message: error.rendered())
        }
    }
    func encode(_ host: HostDescription) -> String {
        "# The simulated host's persistent state (vsmmu keeps it; edit it to simulate drift).\n" + host.renderYAML()
    }
}

/// The kernel a command works on, and the state directory's contents.
final class Session {
    let port: KernelPort
    let sim: SimulatedKernel?
    let stateDir: String
    let simulated: Bool

    init(port: KernelPort, sim: SimulatedKernel?, stateDir: String) {
        self.port = port; self.sim = sim; self.stateDir = stateDir; simulated = sim != nil
    }

    static func open(_ options: KernelOptions) throws -> Session {
        let stateDir = options.resolvedStateDir
        if options.socket != nil || (options.host == nil && ProcessInfo.processInfo.environment["VSMMU_SOCKET"] != nil) {
            throw CommandError(message: "talking to a vsmmu agent is not available in this build",
                               hint: "run in-process against a simulated host with --host FILE")
        }
        guard let hostFile = options.host else {
            if !FileManager.default.fileExists(atPath: "/dev/iommu") {
                throw CommandError(message: "this kernel has no /dev/iommu (it was built without CONFIG_IOMMUFD), so vsmmu cannot work on it",
                                   hint: "try vsmmu on a simulated host: --host examples/hosts/grace-2smmu-cmdqv.yaml")
            }
            if let problem = Preflight.accessProblem() {
                throw CommandError(message: problem)
            }
            // iommufd objects live only as long as the fd that made them (SPEC §6): on a live
            // host the agent holds them and these commands are its clients.
            throw CommandError(message: "on a live host, plan, apply, destroy and show talk to the vsmmu agent that holds the iommufd objects; the agent is not part of this build yet",
                               hint: "use --host FILE to run against a simulated host; `vsmmu host` describes this machine")
        }
        let initial: HostDescription
        do { initial = try HostDescription.load(path: hostFile) } catch {
            throw CommandError(message: error.rendered() + "\n\(hostFile): the host description is invalid")
        }
        let sim: SimulatedKernel
        do {
            sim = try SimStore.open(directory: stateDir + "/sim", initialHost: initial, codec: YAMLHostCodec())
        } catch {
            throw CommandError(message: "cannot open the simulated kernel in \(stateDir)/sim: \(error)")
        }
        return Session(port: sim, sim: sim, stateDir: stateDir)
    }

    /// The host description as the kernel shows it now.
    var host: HostDescription { sim?.currentHost ?? HostDescription(name: "live", kernel: KernelFacts(release: "", iommufd: true, vfioCdev: true), iommus: [], pciDevices: []) }

    func save() throws {
        try sim?.save()
    }
}

/// Parses, validates against the current host, and prints errors the way `validate` does.
func loadValid(_ file: String, host: HostDescription, console: Console) throws -> (Topology, ValidationResult) {
    let topology: Topology
    let source: SourceText
    do { (topology, source) = try Topology.load(path: file) } catch {
        console.error(error.rendered())
        throw ExitCode(1)
    }
    let result = Validator.validate(topology, host: host)
    if !result.isValid {
        for d in result.diagnostics { console.error(d.rendered(source: source)) }
        console.error("\(file): \(result.diagnostics.count == 1 ? "1 error" : "\(result.diagnostics.count) errors"); nothing was changed")
        throw ExitCode(1)
    }
    return (topology, result)
}

/// Topology + host + holdings → plan, with no mutating call.
func makePlan(_ topology: Topology, validation: ValidationResult, session: Session, store: StateStore,
              only guests: Set<String>? = nil, destroying: Bool = false) throws -> Plan {
    do {
        return try Pipeline.plan(topology, validation: validation, port: session.port, host: session.host, store: store,
                                 simulated: session.simulated, onlyGuests: guests, destroying: destroying)
    } catch {
        throw CommandError(message: error.message, hint: error.hint)
    }
}
