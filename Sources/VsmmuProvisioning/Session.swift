import Foundation
import VsmmuExecutor
import VsmmuKernel
import VsmmuLinux
import VsmmuModel
import VsmmuPlanner
import VsmmuSim
import VsmmuYAML

/// A command-level failure, printed as `error: message`, its causes and a hint, exit
/// status 1: a VsmmuError (`CommandError(message:hint:)` is code .command).
public typealias CommandError = VsmmuError

/// YAML for the simulated host's host.yaml (the same format as `vsmmu host`).
public struct YAMLHostCodec: HostFileCodec {
    public init() {}
    public func decode(_ text: String, path: String) throws -> HostDescription {
        do { return try HostDescription.parse(SourceText(path: path, bytes: Array(text.utf8))) } catch {
            throw CommandError(message: error.rendered())
        }
    }
    public func encode(_ host: HostDescription) -> String {
        "# The simulated host's persistent state (vsmmu keeps it; edit it to simulate drift).\n" + host.renderYAML()
    }
}

/// The kernel a command works on, and the state directory's contents.
public final class Session: @unchecked Sendable {
    public let port: KernelPort
    public let sim: SimulatedKernel?
    public let stateDir: String
    /// The options a command suggested to the user must repeat to reach this session's
    /// kernel and state (" --host FILE --state-dir DIR"; empty when all are defaults).
    public var context = ""
    public let simulated: Bool
    /// The kernel is behind a vsmmu-remote executor: its fds are not this process's, and
    /// this machine's limits say nothing about it.
    public var remote: RemoteExecutor?
    /// The state directory's lock, held for the whole session (simulated host, agent).
    public var lock: StateLock?
    public var holdsLock = false
    /// The agent's last observation, kept current by the kernel's change signals
    /// (docs/kernel-interface.md §12); nil: every observation reads everything (a CLI run
    /// observes once).
    public var observations: ObservationCache?

    public init(port: KernelPort, sim: SimulatedKernel?, stateDir: String) {
        self.port = port; self.sim = sim; self.stateDir = stateDir; simulated = sim != nil
    }

    /// A session on the simulated host `host` (a Host file), on the kernel behind `remote`,
    /// or on this machine's kernel.
    public static func open(host hostFile: String?, stateDir: String, sysfsRoot: String = "/sys", remote: RemoteExecutor? = nil) throws -> Session {
        if let remote {
            let linux = LinuxKernel(remote: remote)
            if let problem = Preflight.remoteAccessProblem(linux) { throw CommandError(message: problem) }
            let session = Session(port: linux, sim: nil, stateDir: stateDir)
            session.remote = remote
            return session
        }
        guard let hostFile else {
            try HostOrigin.checkLive(stateDir: stateDir)
            if !FileManager.default.fileExists(atPath: "/dev/iommu") {
                throw CommandError(message: "this kernel has no /dev/iommu (it was built without CONFIG_IOMMUFD), so vsmmu cannot work on it",
                                   hint: "try vsmmu on a simulated host: --host examples/hosts/grace-2smmu-cmdqv.yaml")
            }
            if let problem = Preflight.accessProblem(sysfsRoot: sysfsRoot) {
                throw CommandError(message: problem)
            }

            return Session(port: LinuxKernel(sysfsRoot: sysfsRoot), sim: nil, stateDir: stateDir)
        }
        let initial: HostDescription
        do { initial = try HostDescription.load(path: hostFile) } catch {
            throw CommandError(message: error.rendered() + "\n\(hostFile): the host description is invalid")
        }
        // The simulated kernel's files have one writer at a time: this process, for as long
        // as the session lives (an agent over the same state directory holds it too).
        let lock = try StateLock(directory: stateDir)
        try HostOrigin.check(hostFile: hostFile, host: initial, stateDir: stateDir)
        let sim: SimulatedKernel
        do {
            sim = try SimStore.open(directory: stateDir + "/sim", initialHost: initial, codec: YAMLHostCodec())
        } catch {
            throw CommandError(.state, "cannot open the simulated kernel in \(stateDir)/sim", cause: error)
        }
        let session = Session(port: sim, sim: sim, stateDir: stateDir)
        session.lock = lock
        session.holdsLock = true
        return session
    }

    /// IOMMU facts probed once on a live host (a device bound by this holder cannot be
    /// bound again for a probe).
    private var probedIOMMUs: [String: HostIOMMU] = [:]
    /// Per-device GET_HW_INFO facts read while the device was free (docs/contract.md §3).
    private var probedDevices: [PCIAddress: HostPCIDevice] = [:]

    /// Reads the live host once, probing IOMMUs through driverless devices (ProbeOptions),
    /// and keeps what it learned for every later `host` (which never binds anything).
    /// Returns discovery's notes. Nothing on a simulated host.
    public func probeIOMMUs(driverless: Bool) -> [String] {
        guard sim == nil else { return [] }
        do { return try describeLive(probeDriverless: driverless)?.notes ?? [] } catch { return ["reading the host failed: \(error)"] }
    }

    /// The host description as the kernel shows it now.
    public var host: HostDescription {
        if let sim { return sim.currentHost }
        guard let r = try? describeLive(probeDriverless: false) else {
            return HostDescription(name: "live", kernel: KernelFacts(release: "", iommufd: true, vfioCdev: true), iommus: [], pciDevices: [])
        }
        return r.host
    }

    /// Discovery on the live port, keeping every IOMMU it could read fully.
    private func describeLive(probeDriverless: Bool) throws -> HostDiscovery.Result? {
        guard let linux = port as? LinuxKernel else { return nil }
        let r = try HostDiscovery(kernel: linux).describe(probed: probedIOMMUs, probedDevices: probedDevices, probeDriverless: probeDriverless)
        for i in r.host.iommus where i.unknown.isEmpty { probedIOMMUs[i.name] = i }
        // A device this session holds cannot be bound again for a probe: keep what was read.
        for d in r.host.pciDevices where d.ats != nil && !d.isUnknown(.ats) { probedDevices[d.address] = d }
        return r
    }

    public func save() throws {
        try sim?.save()
    }
}


extension Session {
    /// Opens the kernel's change feed for an agent's observations; returns a line for its log.
    public func watchChanges() -> String {
        switch port.openChangeFeed() {
        case .opened(let feed):
            observations = ObservationCache(feed: feed)
            return "change signals: uevents proven; a reconcile re-reads what changed and every driver_override"
                + (feed.limitation.map { "; \($0)" } ?? "")
        case .unavailable(let why):
            observations = nil
            return "no change signal (\(why)): every reconcile reads the whole state"
        }
    }
}
