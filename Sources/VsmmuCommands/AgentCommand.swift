import ArgumentParser
import CVsmmuUAPI
import Dispatch
import Foundation
import VsmmuExecutor
import VsmmuIPC
import VsmmuKernel
import VsmmuModel
import VsmmuPlanner
import VsmmuYAML

struct Agent: ParsableCommand {
    static let configuration = CommandConfiguration(
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
          vsmmu agent --host examples/hosts/grace-2smmu-cmdqv.yaml --socket /tmp/vsmmu.sock --state-dir /tmp/vsmmu
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
            // A new agent process: whatever an earlier one held died with it (reference §4.4).
            sim.simulateProcessExit()
            try sim.save()
        }
        s.onApplied = { [weak self] t, bytes in self?.rememberApplied(t, bytes) }

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
        if let guest = envelope.handoff {
            handoff(guest, channel)
            return
        }
        guard let request = envelope.request else {
            reply(channel, AgentClient.Reply(err: "error: empty request\n", exit: 1))
            return
        }
        if request.command == "reconcile" {
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
        var final = AgentClient.Reply(exit: code, fingerprint: outcome.fingerprint)
        if let plan = outcome.savedPlan {
            final.savedPlan = (try? SavedPlan.encode(plan))?.base64EncodedString()
        }
        reply(channel, final)
    }

    // MARK: reconcile

    func rememberApplied(_ t: Topology, _ bytes: [UInt8]?) {
        guard let bytes else { return }
        saveApplied(bytes, path: t.file)
    }

    /// Re-observes; logs drift (report) or re-applies the last applied topology (fix).
    /// Returns whether there was drift.
    @discardableResult
    func reconcileNow(reason: String, to channel: Channel? = nil) -> Bool {
        let locked = channel == nil
        if locked { requestLock.lock() }
        defer { if locked { requestLock.unlock() } }
        guard let (bytes, path) = loadApplied() else { return false }
        var request = Request(command: "plan")
        request.file = path
        request.contentBase64 = bytes.base64EncodedString()
        request.detailedExitcode = true
        let out: (String) -> Void = { [self] s in
            if let channel { reply(channel, AgentClient.Reply(err: s)) } else { console.errorRaw(s) }
        }
        let quiet = Console(out: { _ in }, err: out)
        let planned = Runner.execute(request, session: session, console: quiet, outcome: RequestOutcome())
        guard planned == 2 else { return false }
        if options.reconcile == .report {
            let text = Console(out: out, err: out)
            out("vsmmu-agent: reconcile (\(reason)): drift found; run `vsmmu plan \(path)` to see it, or start the agent with --reconcile=fix\n")
            _ = Runner.execute(request, session: session, console: text, outcome: RequestOutcome())
            return true
        }
        out("vsmmu-agent: reconcile (\(reason)): drift found, re-applying \(path)\n")
        request.command = "apply"
        request.autoApprove = true
        request.detailedExitcode = false
        let code = Runner.execute(request, session: session, console: Console(out: out, err: out), outcome: RequestOutcome(), shouldStop: { [self] in stopping })
        out("vsmmu-agent: reconcile (\(reason)): \(code == 0 ? "converged" : "failed, see above")\n")
        return true
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
        guard let store = try? StateStore(directory: session.stateDir), let g = store.holdings.guests[guest] else {
            reply(channel, AgentClient.Reply(err: "error: the agent holds no guest '\(guest)'\n", exit: 1))
            return
        }
        var fds: [Int32] = []
        var standIns: [Int32] = []
        func pass(_ fd: Int32, _ what: String) -> JSONValue {
            if session.simulated {
                let s = vsmmu_memfd_create("vsmmu-standin:\(what)", vsmmu_memfd_flags(0, 0))
                guard s >= 0 else { return .null }
                let text = "{\"standsFor\":\"\(what)\",\"simulatedFd\":\(fd)}"
                _ = text.withCString { write(s, $0, strlen($0)) }
                standIns.append(s)
                fds.append(s)
            } else {
                fds.append(fd)
            }
            return .int(Int64(fds.count - 1))
        }
        var devices: [String: JSONValue] = [:]
        for (name, d) in g.devices.sorted(by: { $0.key < $1.key }) {
            var o: [String: JSONValue] = ["host": .string(d.source), "devId": .int(Int64(d.devID))]
            if let c = d.cdev { o["fdIndex"] = pass(c.fd, "\(guest)/\(name).cdev") }
            if let a = d.attached { o["attachedHwpt"] = .int(Int64(a)) }
            devices[name] = .object(o)
        }
        var vsmmus: [String: JSONValue] = [:]
        for (name, v) in g.vsmmus.sorted(by: { $0.key < $1.key }) {
            var queues: [String: JSONValue] = [:]
            for (t, q) in v.eventQueues.sorted(by: { $0.key < $1.key }) {
                queues[String(t)] = ["id": .int(Int64(q.id)), "fdIndex": pass(q.fd.fd, "\(guest)/\(name).veventq[\(t)]")]
            }
            var vdevs: [String: JSONValue] = [:]
            for (d, vd) in v.vdevices { vdevs[d] = ["id": .int(Int64(vd.id)), "vsid": .uint(vd.virtID)] }
            vsmmus[name] = ["physical": .string(v.physical), "viommu": .int(Int64(v.viommu)), "viommuType": .int(Int64(v.viommuType)),
                            "abortHwpt": v.abortHWPT.map { .int(Int64($0)) } ?? .null, "bypassHwpt": v.bypassHWPT.map { .int(Int64($0)) } ?? .null,
                            "veventqs": .object(queues), "vdevices": .object(vdevs)]
        }
        var memory: [String: JSONValue] = [:]
        for (name, m) in g.memory.sorted(by: { $0.key < $1.key }) {
            var o: [String: JSONValue] = ["iova": .uint(m.iova), "size": .uint(m.length), "backing": .string(m.backing.rawValue)]
            if let f = m.memory.file { o["fdIndex"] = pass(f.fd, "\(guest)/\(name).memfd") }
            memory[name] = .object(o)
        }
        var stage2: [String: JSONValue] = [:]
        for (i, s) in g.stage2 { stage2[i] = .int(Int64(s.hwpt)) }
        let iommufdIndex = pass(g.iommufd.fd, "\(guest).iommufd")
        let map: JSONValue = ["guest": .string(guest), "simulated": .bool(session.simulated), "iommufdFdIndex": iommufdIndex,
                              "ioas": g.ioas.map { .int(Int64($0)) } ?? .null, "stage2": .object(stage2),
                              "devices": .object(devices), "vsmmus": .object(vsmmus), "memory": .object(memory)]
        reply(channel, AgentClient.Reply(handoff: JSONText(map.rendered(pretty: false))), fds: fds)
        for s in standIns { close(s) }
        reply(channel, AgentClient.Reply(exit: 0))
    }
}
