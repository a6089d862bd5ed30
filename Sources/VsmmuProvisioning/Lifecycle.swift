import Foundation
import VsmmuExecutor
import VsmmuKernel
import VsmmuLinux
import VsmmuPlanner
import VsmmuSim
import VsmmuVMM

/// A launch refused before anything changed.
/// A launch or hand-over that cannot go ahead: a VsmmuError (code .command).
public typealias LaunchError = VsmmuError

/// The fresh fds of a handover and how `{placeholder}`s in the VMM's command name them.
public struct Handover: Sendable {
    public var guest: String
    public var files: VMMFiles
    public var layout: VMMGuestLayout
    /// Placeholder name (as `qemu-args --fds` writes it, without braces) → fd in this process.
    public var placeholders: [String: Int32]
    /// Bytes of guest RAM the VMM will pin: its RLIMIT_MEMLOCK must allow them.
    public var pinnedBytes: UInt64
    /// Every fd of the handover (what goes to the VMM).
    public var allFDs: [Int32] { placeholders.values.sorted() }
}

/// The guest lifecycle on one session: prepared → handed over → running → prepared.
public final class GuestLifecycle {
    public let session: Session
    public init(session: Session) { self.session = session }

    var port: KernelPort { session.port }

    // MARK: status

    /// Every guest vsmmu prepared or a VMM runs, with what the running checks found.
    public func statuses(_ holdings: Holdings) -> [GuestStatus] {
        var out: [GuestStatus] = []
        for name in Set(holdings.guests.keys).union(holdings.running.keys).sorted() {
            if let r = holdings.running[name] {
                var s = GuestStatus(name: name, state: .running, pid: r.pid, command: r.commandLine, vmm: r.vmm)
                s.notes = runningProblems(r)
                if !s.notes.isEmpty { s.state = .handedOver }
                out.append(s)
            } else if let h = holdings.guests[name] {
                out.append(GuestStatus(name: name, state: h.uncertain ? nil : .prepared))
            }
        }
        return out
    }

    /// Host state of a running guest's devices (docs/contract.md §6 "running"): each on its
    /// VFIO driver, its cdev open in the VMM's process. Empty when all is well.
    public func runningProblems(_ r: RunningGuest) -> [String] {
        var problems: [String] = []
        for (name, a) in r.devices.sorted(by: { $0.key < $1.key }) {
            guard let d = try? port.pciDevice(a) else { problems.append("\(name) \(a): cannot be read"); continue }
            if !VFIODriver.isVFIO(d.driver) { problems.append("\(name) \(a) is on \(d.driver ?? "no driver"), not a VFIO driver") }
            let holders = (try? port.deviceHolders(a)) ?? []
            if r.remote == nil, !holders.contains(where: { $0.pid == r.pid }) {
                problems.append("\(name) \(a): its VFIO cdev is not open in pid \(r.pid)")
            }
            // Between the release and the VMM's own bind another process could take the
            // device (root, or the cdev's owner): name it.
            for other in holders where other.pid != r.pid {
                problems.append("\(name) \(a) is held by \(other), not by the VMM")
            }
        }
        return problems
    }

    // MARK: VMM exits

    /// Whether a running guest's VMM is still the process that took it.
    public func isAlive(_ r: RunningGuest) -> Bool {
        if r.remote != nil {
            // The pid lives behind the executor that started it, and only that executor
            // knows it: another connection (a restarted agent) cannot ask, so the VMM counts
            // as alive until its devices are seen free.
            guard let remote = session.remote else { return true }
            switch try? remote.vmmStatus(pid: r.pid) {
            case .running?: return true
            case .exited?: return false
            case nil:
                return r.devices.values.contains { a in ((try? port.deviceHolders(a)) ?? []).contains { $0.pid == r.pid } }
            }
        }
        return LocalProcess(pid: r.pid, startTime: r.startTime).isAlive()
    }

    /// Forgets every running guest whose VMM exited: its simulated process exits too (the
    /// kernel destroys what it held), and the record goes. Returns those guests: they are
    /// prepared again by the next apply of their topology.
    public func collectExited(store: StateStore) throws -> [String] {
        var gone: [String] = []
        for (name, r) in store.holdings.running.sorted(by: { $0.key < $1.key }) where !isAlive(r) {
            if let n = r.simulatedProcess, let sim = session.sim { sim.exitProcess(SimProcessID(number: n)) }
            try store.record([.running(name, nil)])
            gone.append(name)
        }
        if !gone.isEmpty {
            try store.checkpoint()
            try session.save()
        }
        return gone
    }

    // MARK: the handover

    /// Checks that `guest` can be launched now; nothing changes.
    public func checkLaunchable(_ guest: String, store: StateStore) throws -> GuestHolding {
        if let r = store.holdings.running[guest] {
            throw LaunchError(message: "guest \(guest) is already running as pid \(r.pid) (\(r.commandLine)); nothing was changed",
                              hint: "stop that VMM first; the guest is prepared again when it exits")
        }
        guard let h = store.holdings.guests[guest] else {
            let known = Set(store.holdings.guests.keys).union(store.holdings.running.keys).sorted()
            throw LaunchError(message: "vsmmu holds no prepared guest '\(guest)'; nothing was changed",
                              hint: known.isEmpty ? "apply a topology that declares it first: vsmmu apply FILE" : "prepared or running guests: \(known.joined(separator: ", ")); apply a topology that declares '\(guest)' first")
        }
        if h.uncertain || (h.holder != nil && h.holder != port.holderIdentity) {
            throw LaunchError(message: "guest \(guest) is not prepared (its iommufd context was lost or an apply was interrupted); nothing was changed",
                              hint: "run vsmmu apply (or wait for the agent's reconcile) to prepare it again")
        }
        if let mock = h.devices.first(where: { $0.value.cdev == nil }) {
            throw LaunchError(message: "guest \(guest) has a selftest mock device (\(mock.key)): no VMM can take it; nothing was changed")
        }
        return h
    }

    /// Opens the VMM's fresh fds (a cdev per device, unbound; one iommufd with per-process
    /// accounting, empty), then destroys the guest's held objects and closes their fds; the
    /// guest-RAM memfds are kept for the VMM. `note` receives what could not be done as
    /// asked (RLIMIT_MODE without CAP_SYS_RESOURCE). On a failure before the release
    /// nothing changed; after it, the guest is prepared again by the next apply.
    public func handOver(_ guest: String, store: StateStore, note: (String) -> Void) throws -> Handover {
        let h = try checkLaunchable(guest, store: store)
        let layout = try VMMGuestLayout(holding: h, port: port)
        var opened: [Int32] = []
        func undo() { for fd in opened { port.closeFile(fd) } }
        var devices: [String: DeviceHandle] = [:]
        let iommufd: IommufdHandle
        do {
            for (name, d) in h.devices.sorted(by: { $0.key < $1.key }) {
                guard let index = d.vfioIndex else { continue }
                let cdev = try port.openVfioDevice(index: index)
                opened.append(cdev.fd)
                devices[name] = cdev
            }
            iommufd = try port.openIommufd()
            opened.append(iommufd.fd)
        } catch {
            undo()
            throw LaunchError(message: "cannot open the fresh fds for guest \(guest): \(error); nothing was changed")
        }
        do {
            try port.iommuOption(iommufd, option: .rlimitMode, objectID: 0, set: 1)
        } catch {
            note("the fresh iommufd keeps per-user memlock accounting: setting RLIMIT_MODE to per-process failed (\(error.errno.name): it needs CAP_SYS_RESOURCE)")
        }
        var memory: [String: KernelFile] = [:]
        var pinned: UInt64 = 0
        for (name, m) in h.memory.sorted(by: { $0.key < $1.key }) {
            pinned &+= m.length
            if let f = m.memory.file { memory[name] = f }
        }
        // The release: the held objects are destroyed and their fds closed, in a destroy's
        // order; the memfds stay open (the very pages the VMM gets).
        let observed = try ObservedState.observe(port: port, holdings: store.holdings, addresses: [])
        let release = Plan(releasing: Planner.release(guest: guest, holding: h, observed: observed), allocations: store.allocations)
        do {
            try Executor(port: port, store: store).run(release)
            try store.checkpoint()
        } catch {
            undo()
            try? store.checkpoint()
            throw LaunchError(.kernel, "releasing guest \(guest)'s held objects failed",
                              hint: "run vsmmu apply to prepare it again, then launch", cause: error)
        }
        var placeholders: [String: Int32] = [FDPlaceholder.name(guest: guest, thing: .iommufd): iommufd.fd]
        for (n, c) in devices { placeholders[FDPlaceholder.name(guest: guest, thing: .device(n))] = c.fd }
        for (n, f) in memory { placeholders[FDPlaceholder.name(guest: guest, thing: .memory(n))] = f.fd }
        return Handover(guest: guest, files: VMMFiles(iommufd: iommufd, devices: devices, memory: memory),
                        layout: layout, placeholders: placeholders, pinnedBytes: pinned)
    }

    /// Records the guest as running in `process` (journaled) and checkpoints.
    public func recordRunning(_ handover: Handover, pid: Int32, startTime: UInt64?, command: [String], vmm: RunningGuest.VMMKind,
                              store: StateStore, remote: String? = nil, simulatedProcess: SimProcessID? = nil) throws {
        let devices = Dictionary(uniqueKeysWithValues: handover.layout.devices.map { ($0.name, $0.address) })
        let r = RunningGuest(pid: pid, startTime: startTime, command: command, vmm: vmm, since: Date().timeIntervalSince1970,
                             devices: devices, remote: remote, simulatedProcess: simulatedProcess?.number)
        try store.record([.running(handover.guest, r)])
        try store.checkpoint()
        try session.save()
    }

    /// On a simulated host: the VMM's kernel side. A simulated process standing for `pid`
    /// takes the fresh fds and issues QEMU's realize sequence (QEMURealize). If that fails
    /// (as QEMU would exit), the process exits and the error is thrown.
    public func simulateVMM(_ handover: Handover, pid: Int32, command: [String]) throws -> SimProcessID {
        guard let sim = session.sim else { throw LaunchError(message: "not a simulated host") }
        let process = sim.spawnProcess(pid: pid, command: command.first.map { ($0 as NSString).lastPathComponent } ?? "vmm")
        // The VMM runs without CAP_IPC_LOCK, with the RLIMIT_MEMLOCK launch raises: what it
        // pins beyond that fails with ENOMEM, as on a real host.
        sim.setMemlockLimit(VMMLockedMemory.limit(guestRAM: handover.pinnedBytes), for: process)
        do {
            try sim.transferFiles(handover.allFDs, to: process)
            _ = try sim.run(as: process) { () throws -> QEMURealize.Result in try QEMURealize.run(handover.layout, files: handover.files, port: sim) }
        } catch {
            sim.exitProcess(process)
            try? sim.save()
            throw LaunchError(.kernel, "the VMM's realize failed on the simulated kernel", cause: error)
        }
        return process
    }
}

/// What a client asks for: hand `guest` to the VMM that `command` starts.
public struct LaunchRequest: Codable, Sendable {
    public var guest: String
    public var vmm: RunningGuest.VMMKind
    public var command: [String]
    public init(guest: String, vmm: RunningGuest.VMMKind, command: [String]) { self.guest = guest; self.vmm = vmm; self.command = command }
}

extension FDPlaceholder {
    /// `substitute`, with its error as a launch error (message and the fds it does pass).
    public static func resolve(_ args: [String], numbers: [String: Int32]) throws -> [String] {
        do { return try substitute(in: args, numbers: numbers) } catch {
            throw LaunchError(message: "\(error)", hint: error.hint)
        }
    }
}
