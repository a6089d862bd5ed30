import ArgumentParser
import Foundation
import VsmmuExecutor
import VsmmuKernel
import VsmmuModel
import VsmmuPlanner

struct Apply: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Plan and apply a topology (or apply a saved plan).",
        discussion: """
        Prints the plan, asks for confirmation (or takes --auto-approve), then runs the \
        operations one by one, each written to the journal before it runs, with one \
        progress line per step on standard error. Afterwards the kernel is observed again \
        and must match the topology. A second apply of a converged topology changes \
        nothing. One apply at a time per state directory. A saved PLAN (from `plan --out`) \
        is refused when the kernel's state moved since it was made.

        A failed apply stops at the failing step and names it, the object and the kernel's \
        errno; a device that was being moved to vfio-pci is given back to its driver. \
        A killed apply is recovered by the next one.

        Exit status: 0 done (or nothing to do), 1 error.

        Example:
          vsmmu apply examples/one-guest-one-vsmmu.yaml --host examples/hosts/grace-2smmu-cmdqv.yaml --auto-approve
        """)

    @Argument(help: "The topology file, or a plan saved by `vsmmu plan --out`.")
    var file: String

    @OptionGroup var kernel: KernelOptions

    @Flag(help: "Apply without asking.")
    var autoApprove = false

    @Flag(help: "Plan only: show what would be done and change nothing.")
    var dryRun = false

    func run() throws {
        let console = Console.standard()
        let code = try runReporting(console) {
            try ApplyRunner(kernel: kernel, console: console, autoApprove: autoApprove, dryRun: dryRun).run(file: file, destroying: false)
        }
        if code != 0 { throw ExitCode(code) }
    }
}

struct Destroy: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Tear down everything the topology's guests hold, and give each device back to the driver it had.",
        discussion: """
        Reverse dependency order: detach, nested HWPTs, vDevices, vEVENTQs, vIOMMUs, guest \
        RAM mappings, stage-2 HWPTs, IOAS, device fds, iommufd; then each device goes back \
        to its original driver (or stays unbound if it had none). Guests not in FILE are \
        left alone.

        Exit status: 0 done, 1 error.

        Example:
          vsmmu destroy examples/one-guest-one-vsmmu.yaml --host examples/hosts/grace-2smmu-cmdqv.yaml --auto-approve
        """)

    @Argument(help: "The topology file whose guests are torn down.")
    var file: String

    @OptionGroup var kernel: KernelOptions

    @Flag(help: "Destroy without asking.")
    var autoApprove = false

    func run() throws {
        let console = Console.standard()
        let code = try runReporting(console) {
            try ApplyRunner(kernel: kernel, console: console, autoApprove: autoApprove, dryRun: false).run(file: file, destroying: true)
        }
        if code != 0 { throw ExitCode(code) }
    }
}

/// The apply and destroy pipeline: lock, recover, plan, confirm, execute, verify.
struct ApplyRunner {
    var kernel: KernelOptions
    var console: Console
    var autoApprove: Bool
    var dryRun: Bool

    func run(file: String, destroying: Bool) throws -> Int32 {
        let session = try Session.open(kernel)
        let lock: StateLock? = dryRun ? nil : try StateLock(directory: session.stateDir)
        defer { _ = lock }
        let store = try StateStore(directory: session.stateDir)
        if !store.interrupted.isEmpty && !dryRun {
            let steps = store.interrupted.map { "\($0.index) \($0.call) (\($0.resource))" }.joined(separator: ", ")
            console.error("Recovering: an earlier run was interrupted inside step(s) \(steps); what they touched is rebuilt.")
            for closed in Recovery.sweepOrphans(port: session.port, holdings: store.holdings) {
                console.error("Recovering: closed \(closed), which no record names")
            }
            try store.checkpoint()
            try session.save()
        }

        var plan: Plan
        var topology: Topology?
        var validation: ValidationResult?
        if let saved = SavedPlan.read(file) {
            guard !destroying else { throw CommandError(message: "destroy takes a topology file, not a saved plan") }
            let current = try ObservedState.observe(port: session.port, holdings: store.holdings, addresses: Set(saved.layout.flatMap { $0.devices.compactMap { PCIAddress($0.host) } }))
            if current.fingerprint != saved.fingerprint {
                throw CommandError(message: "the kernel's state moved since \(file) was made (fingerprint \(saved.fingerprint), now \(current.fingerprint)); nothing was changed",
                                   hint: "make a new plan: vsmmu plan \(saved.topologyFile) --out \(file)")
            }
            plan = saved
            console.write(PlanText.render(plan, ops: false))
        } else {
            let (t, v) = try loadValid(file, host: session.host, console: console)
            topology = t
            validation = v
            plan = try makePlan(t, validation: v, session: session, store: store,
                                only: destroying ? Set(t.guests.map(\.name)) : nil, destroying: destroying)
            console.write(PlanText.render(plan, ops: false))
        }
        if plan.isEmpty {
            if !dryRun, store.allocations != plan.allocations { try store.saveAllocations(plan.allocations) }
            return 0
        }
        if dryRun {
            console.print("Dry run: nothing was changed.")
            return 0
        }
        if !autoApprove {
            guard isatty(0) == 1 else {
                throw CommandError(message: "refusing to \(destroying ? "destroy" : "apply") without confirmation: standard input is not a terminal",
                                   hint: "review the plan, then run again with --auto-approve")
            }
            console.write("\nDo you want to perform these actions? Only 'yes' will be accepted: ")
            guard readLine()?.trimmingCharacters(in: .whitespaces) == "yes" else {
                console.print("Cancelled: nothing was changed.")
                return 1
            }
        }

        do {
            try Pipeline.apply(plan, port: session.port, store: store, progress: { console.error($0) })
        } catch {
            try? session.save()
            throw error
        }
        try session.save()

        // Verify: observe again; nothing may be left to do.
        if let topology, let validation {
            let again = try makePlan(topology, validation: validation, session: session, store: store,
                                     only: destroying ? Set(topology.guests.map(\.name)) : nil, destroying: destroying)
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
}
