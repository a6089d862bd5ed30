import ArgumentParser
import Foundation
import VsmmuProvisioning
import VsmmuExecutor
import VsmmuKernel
import VsmmuLinux
import VsmmuModel
import VsmmuPlanner
import VsmmuSim
import VsmmuYAML

/// Options every kernel-facing command takes (docs/contract.md §4 "Common options").
struct KernelOptions: ParsableArguments {
    @Option(name: .customLong("host"), help: ArgumentHelp("Run against a simulated kernel started from this host description (kind Host; or VSMMU_HOST). Its state, including what an agent would hold, is kept under the state directory (sim/host.yaml: edit it to simulate drift); once it exists, it is what runs, and another host for it is an error.", valueName: "FILE"))
    var hostOption: String?

    @Option(name: .customLong("state-dir"), help: ArgumentHelp("State directory (or VSMMU_STATE_DIR): holdings, journal, allocations, lock (default /var/lib/vsmmu for root, else $XDG_STATE_HOME/vsmmu).", valueName: "DIR"))
    var stateDirOption: String?

    private static func environment(_ name: String) -> String? {
        Environment.nonEmpty(name)
    }

    /// --host, else VSMMU_HOST.
    var host: String? { hostOption ?? Self.environment("VSMMU_HOST") }
    /// --state-dir, else VSMMU_STATE_DIR (nil: the default).
    var stateDir: String? { stateDirOption ?? Self.environment("VSMMU_STATE_DIR") }

    /// The options to repeat in a command vsmmu suggests, so that it reaches the same
    /// kernel and state (what came from the environment is still there).
    var context: String {
        var out = ""
        if let h = hostOption { out += " --host \(h)" }
        if let d = stateDirOption { out += " --state-dir \(d)" }
        if let s = socket { out += " --socket \(s)" }
        return out
    }

    @Option(help: ArgumentHelp("Where sysfs is mounted (for tests).", valueName: "DIR"))
    var sysfsRoot: String = "/sys"

    @Option(help: ArgumentHelp("The agent's socket (or VSMMU_SOCKET); with --host and no --socket, everything runs in-process.", valueName: "PATH"))
    var socket: String?

    /// The agent to talk to, or nil to run in-process (with --host and no --socket).
    var agentSocket: String? {
        if socket == nil, host != nil, Environment.nonEmpty("VSMMU_SOCKET") == nil { return nil }
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

extension Session {
    /// The session the options name (a simulated host, the live kernel, or a remote one).
    static func open(_ options: KernelOptions, remote: RemoteExecutor? = nil) throws -> Session {
        let session = try Session.open(host: options.host, stateDir: options.resolvedStateDir, sysfsRoot: options.sysfsRoot, remote: remote)
        session.context = options.context
        return session
    }
}
