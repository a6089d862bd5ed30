import ArgumentParser
import CVsmmuUAPI
import Dispatch
import Foundation
import VsmmuProvisioning
import VsmmuVMM
import VsmmuExecutor
import VsmmuIPC
import VsmmuKernel
import VsmmuModel
import VsmmuPlanner
import VsmmuSim
import VsmmuYAML

struct Agent: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agent",
        abstract: "Run the long-lived holder of every guest's iommufd objects, serving plan/apply/destroy/show on a Unix socket.",
        discussion: """
        iommufd objects live only as long as the fd that made them; on a live host the \
        agent holds them (one iommufd context per guest) and is the executor of record: \
        `vsmmu plan|apply|destroy|show` talk to it over its socket (JSON lines, version 1), \
        one request at a time. Clients are checked with SO_PEERCRED: root, the agent's own \
        uid, or members of --socket-group. A VMM receives a guest's prepared context with \
        `vsmmu handoff --guest NAME` (fds over SCM_RIGHTS, with a map of every object id).

        It re-observes the kernel every --reconcile-interval seconds and on request: \
        --reconcile=report logs drift, --reconcile=fix re-applies the last applied topology \
        (after a restart this re-creates what the kernel destroyed). SIGTERM finishes the \
        running step, then exits. With --host FILE it runs over the simulated kernel; with \
        --remote unix:PATH over the kernel behind a vsmmu-remote executor (handoff is then \
        refused: the fds live in the executor's process).

        Example:
          vsmmu agent --host examples/hosts/grace-2smmu-cmdqv.yaml \\
            --socket /tmp/vsmmu.sock --state-dir /tmp/vsmmu
        """)

    enum ReconcileMode: String, ExpressibleByArgument, CaseIterable { case report, fix }

    @OptionGroup var kernel: KernelOptions

    @OptionGroup var remote: RemoteOptions

    @OptionGroup var probe: ProbeOptions

    @Option(help: "What a reconcile does with drift: report (log it) or fix (re-apply the last applied topology).")
    var reconcile: ReconcileMode = .report

    @Option(help: ArgumentHelp("Seconds between reconciles (0: only on request and at start).", valueName: "SECONDS"))
    var reconcileInterval: Double = 60

    @Option(help: ArgumentHelp("A group whose members may use the socket (mode 0660 then).", valueName: "GROUP"))
    var socketGroup: String?

    @Option(help: ArgumentHelp("Socket mode, octal (for tests).", valueName: "MODE", visibility: .hidden))
    var socketMode: String?

    func validate() throws {
        try remote.check(against: kernel)
    }

    func run() throws {
        let console = Console.standard()
        let code = try runReporting(console) {
            try AgentServer(options: self, console: console).serve()
        }
        if code != 0 { throw ExitCode(code) }
    }
}

final class AgentServer: @unchecked Sendable {
    let options: Agent
    let console: Console
    let requestLock = NSLock()          // one request at a time: the single writer
    var stopping = false
    /// VMMs being watched ("guest/pid"): one watcher each.
    var watched = Set<String>()
    let watchLock = NSLock()
    var session: Session!
    var allowedGID: UInt32?

    init(options: Agent, console: Console) {
        self.options = options
        self.console = console
    }

    var socketPath: String { AgentProtocol.socket(options.kernel.socket) }

    func log(_ s: String) { console.error("vsmmu-agent: \(s)") }

    func serve() throws -> Int32 {
        var opts = options.kernel
        opts.socket = nil
        let s = try Session.open(opts, remote: try options.remote.connect())
        session = s
        if s.lock == nil { s.lock = try StateLock(directory: s.stateDir) }
        s.holdsLock = true
        if let sim = s.sim {
            // A new agent process: whatever an earlier one held died with it (docs/kernel-interface.md §4.4).
            sim.simulateProcessExit()
            try sim.save()
        }

        log(s.watchChanges())
        if let g = options.socketGroup {
            guard let gr = getgrnam(g) else { throw CommandError(message: "no group '\(g)'") }
            allowedGID = gr.pointee.gr_gid
        }
        let mode = options.socketMode.flatMap { UInt32($0, radix: 8) } ?? (options.socketGroup != nil ? 0o660 : 0o600)
        let listener = try Listener(path: socketPath, mode: mode)
        if let gid = allowedGID { _ = chown(socketPath, getuid(), gid) }
        signal(SIGPIPE, SIG_IGN)
        let stop: @Sendable () -> Void = { [self] in
            stopping = true
            listener.shutdown()
        }
        for sig in [SIGTERM, SIGINT] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler(handler: stop)
            source.resume()
            Self.keep.append(source)
        }
        let kernelName = session.simulated ? "the simulated kernel in \(session.stateDir)/sim"
            : session.remote.map { "the kernel behind the \($0.location)" } ?? "the live kernel"
        log("holding \(kernelName), state in \(session.stateDir), listening on \(socketPath)")
        // Learn the IOMMUs' features now, before any plan: plans only read.
        for note in session.probeIOMMUs(driverless: options.probe.probeDriverless) { log(note) }
        // Running VMMs outlive the agent (docs/contract.md §6): watch those still alive
        // (nothing changes for them); a guest whose VMM exited meanwhile is prepared again.
        settleAndWatch(reason: "start")
        reconcileNow(reason: "start")
        SystemdNotify.send("READY=1\nSTATUS=serving on \(socketPath)")
        log("ready")
        if options.reconcileInterval > 0 {
            let interval = options.reconcileInterval
            Thread.detachNewThread { [self] in
                while !stopping {
                    Thread.sleep(forTimeInterval: interval)
                    if !stopping { reconcileNow(reason: "timer") }
                }
            }
        }
        serveConnections(listener)
        SystemdNotify.send("STOPPING=1")
        // Wait for the request in flight: it stops after its running step.
        requestLock.lock()
        requestLock.unlock()
        log("stopped")
        return 0
    }

    nonisolated(unsafe) static var keep: [DispatchSourceSignal] = []

    func allowed(_ peer: (pid: Int32, uid: UInt32, gid: UInt32)) -> Bool {
        if peer.uid == 0 || peer.uid == getuid() { return true }
        guard let g = allowedGID else { return false }
        if peer.gid == g { return true }
        // supplementary groups of the peer's user
        guard let pw = getpwuid(peer.uid) else { return false }
        var count: Int32 = 64
        var groups = [gid_t](repeating: 0, count: 64)
        _ = getgrouplist(pw.pointee.pw_name, pw.pointee.pw_gid, &groups, &count)
        return groups.prefix(Int(max(0, count))).contains(g)
    }

    func reply(_ channel: Channel, _ r: AgentClient.Reply, fds: [Int32] = []) {
        let line = String(decoding: (try? JSONEncoder().encode(r)) ?? Data(), as: UTF8.self)
        channel.send(line, fds: fds)
    }

    func handle(_ channel: Channel) {
        guard let peer = channel.peer(), allowed(peer) else {
            let who = channel.peer().map { "uid \($0.uid) (pid \($0.pid))" } ?? "an unknown peer"
            log("refused \(who)")
            reply(channel, AgentClient.Reply(err: "error: \(who) may not use this agent (root, uid \(getuid())\(allowedGID.map { " or group \($0)" } ?? "") only)\n", exit: 1))
            channel.finish()
            return
        }
        guard let line = channel.readLine(),
              let envelope = try? JSONDecoder().decode(AgentClient.Envelope.self, from: Data(line.utf8)) else {
            reply(channel, AgentClient.Reply(err: "error: not a vsmmu request\n", exit: 1))
            return
        }
        guard envelope.version == AgentProtocol.version else {
            reply(channel, AgentClient.Reply(err: "error: this agent speaks protocol version \(AgentProtocol.version), the client \(envelope.version): upgrade the older one\n", exit: 1))
            return
        }
        requestLock.lock()
        defer { requestLock.unlock() }
        // One log line per request, with who asked.
        let what = envelope.handoff.map { "handoff --guest \($0)" } ?? envelope.launch.map { _ in "launch" }
            ?? envelope.request.map { r in ([r.command.rawValue] + (r.file.map { [$0] } ?? []) + (r.dryRun ? ["--dry-run"] : [])).joined(separator: " ") } ?? "?"
        log("request by uid \(peer.uid) (pid \(peer.pid)): \(what)")
        reloadSimulatedHost()
        if let guest = envelope.handoff {
            handoff(guest, channel)
            return
        }
        if let launch = envelope.launch {
            self.launch(launch, channel, peer: peer)
            return
        }
        guard let request = envelope.request else {
            reply(channel, AgentClient.Reply(err: "error: empty request\n", exit: 1))
            return
        }
        if request.command == .reconcile {
            let found = reconcileNow(reason: "request by uid \(peer.uid)", to: channel)
            reply(channel, AgentClient.Reply(exit: found ? 2 : 0))
            return
        }
        // The client may go away mid-apply: writes to it then fail quietly and the
        // request runs to its end (the apply is not stopped, the journal stays consistent).
        let remote = Console(out: { s in self.reply(channel, AgentClient.Reply(out: s)) },
                             err: { s in self.reply(channel, AgentClient.Reply(err: s)) })
        let outcome = RequestOutcome()
        let code = Runner.execute(request, session: session, console: remote, outcome: outcome, confirm: nil, shouldStop: { [self] in stopping })
        if request.command == .apply || request.command == .destroy {
            log("\(request.command.rawValue) \(request.file ?? "") by uid \(peer.uid): \(code == 0 ? "done" : "failed (exit \(code))")")
        }
        var final = AgentClient.Reply(exit: code, fingerprint: outcome.fingerprint)
        if let plan = outcome.savedPlan {
            final.savedPlan = (try? SavedPlan.encode(plan))?.base64EncodedString()
        }
        reply(channel, final)
    }

    /// Edits of sim/host.yaml made while the agent runs take effect at the next request.
    func reloadSimulatedHost() {
        guard let sim = session.sim else { return }
        do {
            if try sim.reloadHostFile() { log("\(session.stateDir)/sim/host.yaml changed: the simulated host now follows it") }
        } catch {
            log("\(session.stateDir)/sim/host.yaml changed but cannot be read: \(error); the simulated host is unchanged")
        }
    }

    // MARK: reconcile

    /// Re-observes; logs drift (report) or re-applies the last applied topology (fix).
    /// Returns whether there was drift.
    @discardableResult
    func reconcileNow(reason: String, to channel: Channel? = nil) -> Bool {
        let locked = channel == nil
        if locked { requestLock.lock() }
        defer { if locked { requestLock.unlock() } }
        if locked { reloadSimulatedHost() }
        let out: @Sendable (String) -> Void = { [self] s in
            if let channel { reply(channel, AgentClient.Reply(err: s)) } else { console.errorRaw(s) }
        }
        let text = Console(out: out, err: out)
        let api = Provisioner(session: session)
        var drift = false
        _ = try? runReporting(text) { () throws -> Int32 in
            // One topology at a time: each owns its guests (docs/contract.md §7).
            for found in try api.reconcile(fix: false, events: ProvisioningEvents(note: { text.error($0) })) {
                guard found.hasDrift, let plan = found.drift, let path = found.file, let source = found.source else { continue }
                drift = true
                if options.reconcile == .report {
                    out("vsmmu-agent: reconcile (\(reason)): drift found; run `vsmmu plan \(path)` to see it, or start the agent with --reconcile=fix\n")
                    text.write(PlanText.render(plan, ops: false))
                    continue
                }
                out("vsmmu-agent: reconcile (\(reason)): drift found, re-applying \(path)\n")
                do {
                    var options = ApplyOptions()
                    options.autoApprove = true
                    options.shouldStop = { [self] in stopping }
                    _ = try api.apply(.topology(source), options: options,
                                      events: Runner.events(text, plan: { text.write(PlanText.render($0, ops: false)) }), settled: true)
                    out("vsmmu-agent: reconcile (\(reason)): converged\n")
                } catch {
                    out("vsmmu-agent: reconcile (\(reason)): failed, see below\n")
                    throw error
                }
            }
            return 0
        }
        return drift
    }

    // MARK: handoff

    /// Sends guest G's fds (iommufd, device cdevs, vEVENTQs, memfds) with a JSON map of
    /// every object id. Over the simulated kernel the fds are stand-in memfds that name
    /// the simulated fd they stand for.
    func handoff(_ guest: String, _ channel: Channel) {
        if let remote = session.remote {
            // Its fd numbers are handles in the executor's process: sending them from here
            // would pass whatever this process has under those numbers.
            reply(channel, AgentClient.Reply(err: "error: guest '\(guest)' is held through the \(remote.location): its fds live in that process and cannot be handed off from here\n", exit: 1))
            return
        }
        let adoptable: AdoptHandover
        do {
            adoptable = try GuestLifecycle(session: session).adoptable(guest, store: try StateStore(directory: session.stateDir))
        } catch {
            reply(channel, AgentClient.Reply(err: "error: \(error)\n", exit: 1))
            return
        }
        var fds: [Int32] = []
        var standIns: [Int32] = []
        let names = Dictionary(adoptable.placeholders.map { ($0.fd, $0.name) }, uniquingKeysWith: { a, _ in a })
        func pass(_ fd: Int32) -> Int32 {
            if session.simulated {
                let what = names[fd] ?? "fd \(fd)"
                let s = vsmmu_memfd_create("vsmmu-standin:\(what)", vsmmu_memfd_flags(0, 0))
                guard s >= 0 else { return -1 }
                let text = "{\"standsFor\":\"\(what)\",\"simulatedFd\":\(fd)}"
                _ = text.withCString { write(s, $0, strlen($0)) }
                standIns.append(s)
                fds.append(s)
            } else {
                fds.append(fd)
            }
            return Int32(fds.count - 1)
        }
        let map = adoptable.map(simulated: session.simulated, fd: pass)
        reply(channel, AgentClient.Reply(handoff: JSONText(map.json())), fds: fds)
        for s in standIns { close(s) }
        reply(channel, AgentClient.Reply(exit: 0))
    }
}

// MARK: the guest lifecycle (docs/contract.md §6)

/// The agent's answer to a launch: how the client names the fds it receives.
struct LaunchReply: Codable {
    /// Placeholder → index into the fds of this reply (a live host).
    var fdIndex: [String: Int]?
    /// Placeholder → the simulated kernel's fd number (a simulated host: no real fds).
    var simulatedFD: [String: Int32]?
    /// The VMM was started by the remote executor: its pid there.
    var remotePID: Int32?
    /// What `adopt` hands over besides the fds: the map of every object id.
    var adoptMap: JSONText?
    /// Bytes of guest RAM the VMM pins (its RLIMIT_MEMLOCK was raised to at least this).
    var memlock: UInt64
}

extension AgentServer {
    /// Hands a prepared guest to the client that asked (it execs the VMM in its own pid), or
    /// through a remote executor to a VMM that executor starts. Runs under `requestLock`.
    func launch(_ request: LaunchRequest, _ channel: Channel, peer: (pid: Int32, uid: UInt32, gid: UInt32)) {
        let console = Console(out: { s in self.reply(channel, AgentClient.Reply(out: s)) },
                              err: { s in self.reply(channel, AgentClient.Reply(err: s)) })
        let code = (try? runReporting(console) { () throws -> Int32 in
            try Provisioner(session: session).settleLifecycle(events: Runner.events(console))
            let store = try StateStore(directory: session.stateDir)
            let lifecycle = GuestLifecycle(session: session)
            if request.vmm == .adopt { return try adopt(request, channel, peer: peer, store: store, console: console) }
            let handover: Handover
            handover = try lifecycle.handOver(request.guest, store: store, note: { console.error("note: \($0)") })
            log("launch of guest \(request.guest) for pid \(peer.pid) (uid \(peer.uid)): \(request.command.joined(separator: " "))")
            var answer = LaunchReply(memlock: VMMLockedMemory.limit(guestRAM: handover.pinnedBytes))
            var fds: [Int32] = []
            if session.sim != nil {
                let process: SimProcessID
                do { process = try lifecycle.simulateVMM(handover, pid: peer.pid, command: request.command) } catch {
                    try? Provisioner(session: session).reprepare(events: Runner.events(console))
                    throw CommandError(message: "\(error)", hint: "the guest is prepared again")
                }
                try lifecycle.recordRunning(handover, pid: peer.pid, startTime: LocalProcess.find(peer.pid)?.startTime, command: request.command,
                                            vmm: request.vmm, store: store, simulatedProcess: process)
                answer.simulatedFD = handover.placeholders
            } else if let remote = session.remote {
                let argv = try FDPlaceholder.resolve(request.command, numbers: handover.placeholders)
                let pid = try remote.spawnVMM(argv: argv, fds: handover.allFDs)
                for fd in handover.allFDs { session.port.closeFile(fd) }
                try lifecycle.recordRunning(handover, pid: pid, startTime: nil, command: argv, vmm: request.vmm, store: store, remote: remote.location)
                answer.remotePID = pid
            } else {
                // The client execs the VMM in its own process: let it pin the guest's RAM.
                if vsmmu_raise_memlock(peer.pid, answer.memlock) != 0 {
                    console.error("note: could not raise RLIMIT_MEMLOCK of pid \(peer.pid) to \(answer.memlock) bytes")
                }
                try lifecycle.recordRunning(handover, pid: peer.pid, startTime: LocalProcess.find(peer.pid)?.startTime, command: request.command,
                                            vmm: request.vmm, store: store)
                var index: [String: Int] = [:]
                for (name, fd) in handover.placeholders.sorted(by: { $0.value < $1.value }) { index[name] = fds.count; fds.append(fd) }
                answer.fdIndex = index
            }
            let line = String(decoding: (try? JSONEncoder().encode(AgentClient.Reply(launch: answer))) ?? Data(), as: UTF8.self)
            _ = channel.send(line, fds: fds)
            // The VMM has its copies now (SCM_RIGHTS duplicated them): close ours, so the
            // devices are free the moment the VMM exits.
            for fd in fds { session.port.closeFile(fd) }
            if let r = (try? StateStore(directory: session.stateDir))?.holdings.running[request.guest] { watch(request.guest, r) }
            return 0
        }) ?? 1
        reply(channel, AgentClient.Reply(exit: code))
    }

    /// `--vmm adopt`: the prepared context itself (docs/handoff-adopt.md).
    func adopt(_ request: LaunchRequest, _ channel: Channel, peer: (pid: Int32, uid: UInt32, gid: UInt32), store: StateStore, console: Console) throws -> Int32 {
        if let remote = session.remote {
            throw CommandError(message: "guest \(request.guest) is held through the \(remote.location): its fds live in that process and cannot be adopted from here",
                               hint: "use --vmm qemu: the executor then starts the VMM with fresh fds")
        }
        let lifecycle = GuestLifecycle(session: session)
        let a = try lifecycle.adoptable(request.guest, store: store)
        log("adopt of guest \(request.guest) by pid \(peer.pid) (uid \(peer.uid)): \(request.command.joined(separator: " "))")
        var answer = LaunchReply(memlock: VMMLockedMemory.limit(guestRAM: a.holding.memory.values.reduce(0) { $0 &+ $1.length }))
        let start = LocalProcess.find(peer.pid)?.startTime
        if let sim = session.sim {
            let process = sim.spawnProcess(pid: peer.pid, command: request.command.first.map { ($0 as NSString).lastPathComponent } ?? "vmm")
            try sim.transferFiles(a.placeholders.map(\.fd), to: process)
            answer.simulatedFD = Dictionary(uniqueKeysWithValues: a.placeholders.map { ($0.name, $0.fd) })
            answer.adoptMap = JSONText(a.map(simulated: true) { $0 }.json())
            try lifecycle.finishAdopt(a, pid: peer.pid, startTime: start, command: request.command, store: store, transferredTo: process)
            _ = channel.send(String(decoding: (try? JSONEncoder().encode(AgentClient.Reply(launch: answer))) ?? Data(), as: UTF8.self))
        } else {
            if vsmmu_raise_memlock(peer.pid, answer.memlock) != 0 { console.error("note: could not raise RLIMIT_MEMLOCK of pid \(peer.pid)") }
            let fds = a.placeholders.map(\.fd)
            answer.fdIndex = Dictionary(uniqueKeysWithValues: a.placeholders.enumerated().map { ($0.element.name, $0.offset) })
            answer.adoptMap = JSONText(a.map(simulated: false) { fd in fds.firstIndex(of: fd).map { Int32($0) } ?? -1 }.json())
            _ = channel.send(String(decoding: (try? JSONEncoder().encode(AgentClient.Reply(launch: answer))) ?? Data(), as: UTF8.self), fds: fds)
            try lifecycle.finishAdopt(a, pid: peer.pid, startTime: start, command: request.command, store: store)
        }
        if let r = (try? StateStore(directory: session.stateDir))?.holdings.running[request.guest] { watch(request.guest, r) }
        return 0
    }

    /// Prepares again the guests whose VMM exited, and watches every VMM still running.
    func settleAndWatch(reason: String) {
        let quiet = Console(out: { _ in }, err: { [self] s in console.errorRaw("vsmmu-agent: " + s) })
        do { try Provisioner(session: session).settleLifecycle(events: Runner.events(quiet)) } catch {
            log("preparing guests whose VMM exited failed (\(reason)): \(error)")
        }
        guard let store = try? StateStore(directory: session.stateDir) else { return }
        for (g, r) in store.holdings.running.sorted(by: { $0.key < $1.key }) {
            log("guest \(g) is running: pid \(r.pid) (\(r.commandLine)); watching it")
            watch(g, r)
        }
    }

    /// Waits for the VMM of `guest` to exit (a pidfd, or the remote executor's answer),
    /// then prepares the guest again.
    func watch(_ guest: String, _ r: RunningGuest) {
        let key = "\(guest)/\(r.pid)"
        watchLock.lock()
        let fresh = watched.insert(key).inserted
        watchLock.unlock()
        guard fresh else { return }
        Thread.detachNewThread { [self] in
            if r.remote != nil {
                let lifecycle = GuestLifecycle(session: session)
                while !stopping && lifecycle.isAlive(r) { Thread.sleep(forTimeInterval: 1) }
            } else if let w = ProcessExitWatch(pid: r.pid) {
                while !stopping && !w.wait(timeout: 1) {}
            }
            watchLock.lock(); watched.remove(key); watchLock.unlock()
            guard !stopping else { return }
            requestLock.lock()
            defer { requestLock.unlock() }
            log("guest \(guest): its VMM (pid \(r.pid)) exited; preparing it again")
            settleAndWatch(reason: "VMM exit")
        }
    }
}
