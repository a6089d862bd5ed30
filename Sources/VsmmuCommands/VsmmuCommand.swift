import ArgumentParser

/// The `vsmmu` command line. The executable's main only calls `VsmmuCommand.main()`.
public struct VsmmuCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "vsmmu",
        abstract: "Declarative accelerated-vSMMU provisioning over Linux iommufd.",
        discussion: """
        A YAML topology of guests, passthrough devices and accelerated virtual SMMUv3
        instances is compiled into an ordered plan of iommufd, VFIO and sysfs operations,
        applied idempotently and reconciled against live kernel state.

        Try it without hardware, on a simulated host:
          vsmmu plan examples/one-guest-one-vsmmu.yaml \\
            --host examples/hosts/grace-2smmu-cmdqv.yaml
        """,
        version: "0.1.0",
        subcommands: [Validate.self, PlanCommand.self, Apply.self, Destroy.self, Show.self, Host.self, QemuArgs.self, LibvirtXml.self, Agent.self, Launch.self, Reconcile.self, Handoff.self, Schema.self])

    public init() {}
}
