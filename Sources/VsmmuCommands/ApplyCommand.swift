import ArgumentParser
import Foundation
import VsmmuProvisioning
import VsmmuExecutor
import VsmmuKernel
import VsmmuModel
import VsmmuPlanner

struct Apply: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "apply",
        abstract: "Plan and apply a topology (or apply a saved plan).",
        discussion: """
        Prints the plan, asks for confirmation (or takes --auto-approve), then runs the \
        operations one by one, each written to the journal before it runs, with one \
        progress line per resource on standard error as it starts and when it ends (its \
        time and ids; -v adds each kernel call, --quiet shows none). A first Ctrl-C (or \
        SIGTERM) lets the step in flight finish, stops, says how to resume and exits 130; \
        a second one stops at once (the journal covers it). Afterwards the kernel is observed again \
        and must match the topology. A second apply of a converged topology changes \
        nothing. One apply at a time per state directory. A saved PLAN (from `plan --out`) \
        applies without a prompt (it is the approval), on the state directory it was made \
        on only, and is refused when the kernel's state moved since it was made.

        A failed apply stops at the failing step and names it, the object and the kernel's \
        errno; a device that was being moved to vfio-pci is given back to its driver. \
        A killed apply is recovered by the next one.

        Exit status: 0 done (or nothing to do), 1 error.

        Example:
          vsmmu apply examples/one-guest-one-vsmmu.yaml \\
            --host examples/hosts/grace-2smmu-cmdqv.yaml --auto-approve
        """)

    @Argument(help: "The topology file, or a plan saved by `vsmmu plan --out`.")
    var file: String

    @OptionGroup var kernel: KernelOptions

    @Flag(help: "Apply without asking.")
    var autoApprove = false

    @Flag(help: "Plan only: show what would be done and change nothing.")
    var dryRun = false

    @OptionGroup var output: ProgressOptions

    @Flag(help: ArgumentHelp("When holdings.json was lost (vsmmu refuses to plan and says so): close the kernel objects no record names, rebuild the record from the journal and the kernel (an original driver it cannot know is marked unknown), then apply."))
    var rebuildState = false

    func run() throws {
        var request = Request(.apply)
        request.autoApprove = autoApprove
        request.dryRun = dryRun
        request.rebuildState = rebuildState
        output.apply(to: &request)
        let code = try Dispatch.run(request, file: file, kernel: kernel)
        if code != 0 { throw ExitCode(code) }
    }
}

struct Destroy: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "destroy",
        abstract: "Tear down everything the topology's guests hold, and give each device back to the driver it had.",
        discussion: """
        Reverse dependency order: detach, nested HWPTs, vDevices, vEVENTQs, vIOMMUs, guest \
        RAM mappings, stage-2 HWPTs, IOAS, device fds, iommufd; then each device goes back \
        to its original driver (or stays unbound if it had none). Guests not in FILE are \
        left alone.

        Exit status: 0 done, 1 error.

        Example:
          vsmmu destroy examples/one-guest-one-vsmmu.yaml \\
            --host examples/hosts/grace-2smmu-cmdqv.yaml --auto-approve
        """)

    @Argument(help: "The topology file whose guests are torn down.")
    var file: String

    @OptionGroup var kernel: KernelOptions

    @Flag(help: "Destroy without asking.")
    var autoApprove = false

    @OptionGroup var output: ProgressOptions

    func run() throws {
        var request = Request(.destroy)
        request.autoApprove = autoApprove
        output.apply(to: &request)
        let code = try Dispatch.run(request, file: file, kernel: kernel)
        if code != 0 { throw ExitCode(code) }
    }
}

