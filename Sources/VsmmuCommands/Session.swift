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

    /// The agent to talk to, or nil to run in-process (with --host and no --socket).
    var agentSocket: String? {
        if socket == nil, host != nil, (ProcessInfo.processInfo.environment["VSMMU_SOCKET"] ?? "").isEmpty { return nil }
        return AgentProtocol.socket(socket)
    }

    var resolvedStateDir: String {
        if let stateDir { return stateDir }
        if getuid() == 0 { return "/var/lib/vsmmu" }
        let env = ProcessInfo.processInfo.environment
        let base = env["XDG_STATE_HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? ((env["HOME"] ?? NSTemporaryDirectory()) + "/.local/state")
        return base + "/vsmmu"
    }
}

/// `--remote unix:PATH`, for the commands that can work on another kernel (host, agent).
/// Whether discovery may bind a driverless device to vfio-pci to read its IOMMU (host, agent).
struct ProbeOptions: ParsableArguments {
    @Flag(inversion: .prefixedNo, help: ArgumentHelp(
        "When no device behind an IOMMU is on vfio-pci, read the IOMMU's features through a device that has no driver: "
        + "bound to vfio-pci for the probe, then given back to no driver (a device with a driver is never moved). "
        + "Without it such an IOMMU's nesting, coherency and the rest are listed as unknown."))
    var probeDriverless = true
}

struct RemoteOptions: ParsableArguments {
    static let help = "Run the kernel calls through a vsmmu-remote executor (docs/remote-executor.md) instead of this machine's kernel. "
        + "The /dev/iommu and VFIO cdev checks then go through the executor; this machine's RLIMIT_MEMLOCK "
        + "and device-node access checks are skipped."

    @Option(help: ArgumentHelp(RemoteOptions.help, valueName: "unix:PATH"))
    var remote: String?

    @Option(help: ArgumentHelp("Seconds to wait for each answer of the remote executor.", valueName: "SECONDS", visibility: .hidden))
    var remoteTimeout: Double = 30

    func validate() throws {
        if let remote, !remote.hasPrefix("unix:") || remote.count <= 5 {
            throw ValidationError("--remote takes unix:PATH (the executor's socket), not '\(remote)'")
        }
        if remoteTimeout <= 0 { throw ValidationError("--remote-timeout must be positive") }
    }

    /// --remote names a live kernel elsewhere: no simulated host, no local sysfs root.
    func check(against kernel: KernelOptions) throws {
        guard remote != nil else { return }
        if kernel.host != nil { throw ValidationError("--remote and --host exclude each other: a remote kernel is a live one") }
        if kernel.sysfsRoot != "/sys" { throw ValidationError("--sysfs-root does not apply with --remote: start vsmmu-remote with --root DIR instead") }
    }

    /// The executor, connected and greeted; nil without --remote.
    func connect() throws -> RemoteExecutor? {
        guard let remote else { return nil }
        do { return try RemoteExecutor(address: remote, timeout: remoteTimeout) } catch {
            throw CommandError(message: "\(error)", hint: "is vsmmu-remote serving \(remote)? (docs/remote-executor.md)")
        }
    }
}

/// A command-level failure: printed as `error: message` (+ hint), exit status 1.
/// The commands' failures are VsmmuErrors (`CommandError(message:hint:)` is code .command).
typealias CommandError = VsmmuError

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
final class Session: @unchecked Sendable {
    let port: KernelPort
    let sim: SimulatedKernel?
    let stateDir: String
    let simulated: Bool
    /// The kernel is behind a vsmmu-remote executor: its fds are not this process's, and
    /// this machine's limits say nothing about it.
    var remote: RemoteExecutor?
    /// The state directory's lock, held for the whole session (simulated host, agent).
    var lock: StateLock?
    var holdsLock = false
    /// The agent keeps the last applied topology, for `--reconcile=fix`.
    var onApplied: ((Topology, [UInt8]?) -> Void)?

    func remember(_ t: Topology, source: [UInt8]?) { onApplied?(t, source) }

    init(port: KernelPort, sim: SimulatedKernel?, stateDir: String) {
        self.port = port; self.sim = sim; self.stateDir = stateDir; simulated = sim != nil
    }

    static func open(_ options: KernelOptions, remote: RemoteExecutor? = nil) throws -> Session {
        let stateDir = options.resolvedStateDir
        if let remote {
            let linux = LinuxKernel(remote: remote)
            if let problem = Preflight.remoteAccessProblem(linux) { throw CommandError(message: problem) }
            let session = Session(port: linux, sim: nil, stateDir: stateDir)
            session.remote = remote
            return session
        }
        guard let hostFile = options.host else {
            if !FileManager.default.fileExists(atPath: "/dev/iommu") {
                throw CommandError(message: "this kernel has no /dev/iommu (it was built without CONFIG_IOMMUFD), so vsmmu cannot work on it",
                                   hint: "try vsmmu on a simulated host: --host examples/hosts/grace-2smmu-cmdqv.yaml")
            }
            if let problem = Preflight.accessProblem(sysfsRoot: options.sysfsRoot) {
                throw CommandError(message: problem)
            }
            return Session(port: LinuxKernel(sysfsRoot: options.sysfsRoot), sim: nil, stateDir: stateDir)
        }
        let initial: HostDescription
        do { initial = try HostDescription.load(path: hostFile) } catch {
            throw CommandError(message: error.rendered() + "\n\(hostFile): the host description is invalid")
        }
        // The simulated kernel's files have one writer at a time: this process, for as long
        // as the session lives (an agent over the same state directory holds it too).
        let lock = try StateLock(directory: stateDir)
        let sim: SimulatedKernel
        do {
            sim = try SimStore.open(directory: stateDir + "/sim", initialHost: initial, codec: YAMLHostCodec())
        } catch {
            throw CommandError(message: "cannot open the simulated kernel in \(stateDir)/sim: \(error)")
        }
        let session = Session(port: sim, sim: sim, stateDir: stateDir)
        session.lock = lock
        session.holdsLock = true
        return session
    }

    /// IOMMU facts probed once on a live host (a device bound by this holder cannot be
    /// bound again for a probe).
    private var probedIOMMUs: [String: HostIOMMU] = [:]

    /// Reads the live host once, probing IOMMUs through driverless devices (ProbeOptions),
    /// and keeps what it learned for every later `host` (which never binds anything).
    /// Returns discovery's notes. Nothing on a simulated host.
    func probeIOMMUs(driverless: Bool) -> [String] {
        guard sim == nil else { return [] }
        do { return try describeLive(probeDriverless: driverless)?.notes ?? [] } catch { return ["reading the host failed: \(error)"] }
    }

    /// The host description as the kernel shows it now.
    var host: HostDescription {
        if let sim { return sim.currentHost }
        guard let r = try? describeLive(probeDriverless: false) else {
            return HostDescription(name: "live", kernel: KernelFacts(release: "", iommufd: true, vfioCdev: true), iommus: [], pciDevices: [])
        }
        return r.host
    }

    /// Discovery on the live port, keeping every IOMMU it could read fully.
    private func describeLive(probeDriverless: Bool) throws -> HostDiscovery.Result? {
        guard let linux = port as? LinuxKernel else { return nil }
        let r = try HostDiscovery(kernel: linux).describe(probed: probedIOMMUs, probeDriverless: probeDriverless)
        for i in r.host.iommus where i.unknown.isEmpty { probedIOMMUs[i.name] = i }
        return r
    }

    func save() throws {
        try sim?.save()
    }
}

