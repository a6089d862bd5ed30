import ArgumentParser
import CVsmmuUAPI
import Foundation
import VsmmuExecutor
import VsmmuIPC
import VsmmuKernel
import VsmmuLinux
import VsmmuPlanner
import VsmmuProvisioning
import VsmmuVMM
import VsmmuSim

extension RunningGuest.VMMKind: ExpressibleByArgument {}

struct Launch: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "launch",
        abstract: "Hand a prepared guest to its VMM and exec the VMM (the guest is then running).",
        discussion: """
        A stock VMM (QEMU 10.2+, through libvirt, KubeVirt or by hand) binds the VFIO devices \
        and builds the iommufd objects itself, so a launch gives it FRESH fds: per device an \
        unbound VFIO cdev, one empty iommufd (RLIMIT_MODE set to per-process accounting) and \
        the guest-RAM memfds. The agent opens them, then destroys the guest's held objects and \
        closes their fds (the devices stay on vfio-pci), then passes the fds here; this process \
        raises its RLIMIT_MEMLOCK for the guest RAM the VMM pins, replaces every {vsmmu-…} \
        placeholder in COMMAND with the fd number, and execs COMMAND in its own pid. The agent \
        watches that pid: while it runs the guest is `running` (plan and show name the pid); \
        when it exits the guest is prepared again. `destroy` of a running guest is refused.

        Placeholders are what `vsmmu qemu-args FILE --guest NAME --fds` writes: \
        {vsmmu-NAME-iommufd}, {vsmmu-NAME-DEVICE}, {vsmmu-NAME-REGION}.

        On a simulated host (--host, no agent) this process plays the agent, and a simulated \
        process standing for COMMAND's pid issues QEMU's realize sequence on the simulated \
        kernel; the placeholders become the simulated fd numbers. Through an agent on a \
        remote executor, the executor starts the VMM (its --vmm binary) and this command \
        prints its pid.

        Examples:
          vsmmu launch --guest vm1 -- \\
            qemu-system-aarch64 -machine virt,accel=kvm \\
            $(vsmmu qemu-args vm1.yaml --guest vm1 --fds --format argv)
          vsmmu launch --guest vm1 \\
            --host examples/hosts/grace-2smmu-cmdqv.yaml \\
            --state-dir /tmp/vsmmu-demo -- sleep 600
        """)

    @Option(help: "The prepared guest to hand over.")
    var guest: String

    @Option(help: ArgumentHelp("qemu: fresh unbound fds, the VMM builds its graph (stock QEMU). adopt: the prepared context itself (docs/handoff-adopt.md).", valueName: "KIND"))
    var vmm: RunningGuest.VMMKind = .qemu

    @OptionGroup var kernel: KernelOptions

    @Argument(parsing: .postTerminator, help: ArgumentHelp("The VMM's command, after --.", valueName: "COMMAND"))
    var command: [String] = []

    func validate() throws {
        if command.isEmpty { throw ValidationError("give the VMM's command after --, e.g. vsmmu launch --guest \(guest) -- qemu-system-aarch64 ...") }
    }

    func run() throws {
        let console = Console.standard()
        var argv: [String] = []
        let code = try runReporting(console) {
            let request = LaunchRequest(guest: guest, vmm: vmm, command: command)
            if let socket = kernel.agentSocket {
                guard let a = try Self.throughAgent(request, socket: socket, console: console) else { return 0 }
                argv = a
            } else {
                argv = try Self.inProcess(request, kernel: kernel, console: console)
            }
            return -1
        }
        guard code == -1 else { throw ExitCode(code) }
        // Everything this process held of the state directory is closed (close-on-exec).
        let r = Self.exec(argv)
        console.error("error: cannot exec \(argv.first ?? ""): \(Errno(-r).name) (\(Errno(-r).meaning)); the guest is prepared again once this process exits")
        throw ExitCode(127)
    }

    /// Asks the agent; returns the VMM's argv to exec, or nil when the agent's remote
    /// executor started it.
    static func throughAgent(_ request: LaunchRequest, socket: String, console: Console) throws -> [String]? {
        let channel = try AgentClient(path: socket).connect()
        let line = String(decoding: try JSONEncoder().encode(AgentClient.Envelope(launch: request)), as: UTF8.self)
        _ = channel.send(line)
        var answer: LaunchReply?
        var fds: [Int32] = []
        while let l = channel.readLine() {
            guard let r = try? JSONDecoder().decode(AgentClient.Reply.self, from: Data(l.utf8)) else { continue }
            if let e = r.err { console.errorRaw(e) }
            if let o = r.out { console.write(o) }
            if let a = r.launch { answer = a; fds = channel.takeReceivedFDs() }
            if let exit = r.exit {
                guard exit == 0, let answer else { throw ExitCode(exit) }
                if let pid = answer.remotePID {
                    console.print("Guest \(request.guest) handed over: its VMM runs as pid \(pid) on the executor's kernel.")
                    return nil
                }
                var numbers: [String: Int32] = answer.simulatedFD ?? [:]
                for (name, i) in answer.fdIndex ?? [:] where i < fds.count {
                    numbers[name] = fds[i]
                    _ = vsmmu_clear_cloexec(fds[i])
                }
                _ = vsmmu_raise_memlock(0, answer.memlock)
                // The VMM pins the guest RAM at realize: without CAP_IPC_LOCK and below the
                // need it would fail there with ENOMEM (docs/kernel-interface.md §9.15), so refuse now.
                if answer.simulatedFD == nil, let problem = Preflight.memlockProblem(pinning: answer.memlock) {
                    throw CommandError(message: "not starting the VMM: \(problem)",
                                       hint: "guest \(request.guest) is prepared again once this command has exited")
                }
                if let map = answer.adoptMap {
                    // The adopting VMM reads the object ids (and its fd numbers) from here.
                    setenv("VSMMU_ADOPT_MAP", try HandoffMap.localize(map.text, fds: answer.simulatedFD != nil ? nil : fds).json(), 1)
                }
                return try FDPlaceholder.resolve(request.command, numbers: numbers)
            }
        }
        throw CommandError(message: "the agent went away before answering")
    }

    /// A simulated host with no agent: this process plays the agent, then becomes the VMM.
    static func inProcess(_ request: LaunchRequest, kernel: KernelOptions, console: Console) throws -> [String] {
        guard kernel.host != nil else {
            throw CommandError(message: "on a live host, launch is a client of the agent: no agent socket was given",
                               hint: "start the agent (systemctl start vsmmu) or give --socket PATH; --host FILE launches on a simulated host")
        }
        let session = try Session.open(kernel)
        try Provisioner(session: session).settleLifecycle(events: Runner.events(console))
        let store = try StateStore(directory: session.stateDir)
        let lifecycle = GuestLifecycle(session: session)
        if request.vmm == .adopt, let sim = session.sim {
            let a = try lifecycle.adoptable(request.guest, store: store)
            let me = LocalProcess.current
            let process = sim.spawnProcess(pid: me.pid, command: request.command.first.map { ($0 as NSString).lastPathComponent } ?? "vmm")
            try sim.transferFiles(a.placeholders.map(\.fd), to: process)
            setenv("VSMMU_ADOPT_MAP", a.map(simulated: true) { $0 }.json(), 1)
            try lifecycle.finishAdopt(a, pid: me.pid, startTime: me.startTime, command: request.command, store: store, transferredTo: process)
            console.error("Guest \(request.guest) adopted by pid \(me.pid) (simulated host: VSMMU_ADOPT_MAP has its object ids).")
            return try FDPlaceholder.resolve(request.command, numbers: Dictionary(uniqueKeysWithValues: a.placeholders.map { ($0.name, $0.fd) }))
        }
        let handover = try lifecycle.handOver(request.guest, store: store, note: { console.error("note: \($0)") })
        let me = LocalProcess.current
        let process: SimProcessID
        do { process = try lifecycle.simulateVMM(handover, pid: me.pid, command: request.command) } catch {
            try? Provisioner(session: session).reprepare(events: Runner.events(console))
            throw error
        }
        try lifecycle.recordRunning(handover, pid: me.pid, startTime: me.startTime, command: request.command, vmm: request.vmm,
                                    store: store, simulatedProcess: process)
        console.error("Guest \(request.guest) handed over to pid \(me.pid) (simulated host: the fds are the simulated kernel's \(handover.placeholders.count) fds).")
        return try FDPlaceholder.resolve(request.command, numbers: handover.placeholders)
    }

    static func exec(_ argv: [String]) -> Int32 {
        var cargs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) }
        cargs.append(nil)
        fflush(nil)
        return cargs.withUnsafeMutableBufferPointer { vsmmu_exec($0.baseAddress!) }
    }
}
