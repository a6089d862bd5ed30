import ArgumentParser
import Foundation
import VsmmuExecutor
import VsmmuKernel
import VsmmuLinux
import VsmmuModel
import VsmmuPlanner
import VsmmuVMM

/// Shared by qemu-args and libvirt-xml: the guest's layout exactly as the plan allocates
/// it (allocations from the state directory; new ones as apply would make them).
struct LayoutOptions: ParsableArguments {
    @Argument(help: "The topology file.")
    var file: String

    @Option(help: "The guest.")
    var guest: String

    @OptionGroup var kernel: KernelOptions

    func layout(console: Console) throws -> (VMMLayout, Topology) {
        let stateDir = kernel.resolvedStateDir
        var host: HostDescription
        let simHost = stateDir + "/sim/host.yaml"
        if kernel.host != nil, FileManager.default.fileExists(atPath: simHost) {
            do { host = try HostDescription.load(path: simHost) } catch { throw CommandError(message: error.rendered()) }
        } else if let h = kernel.host {
            do { host = try HostDescription.load(path: h) } catch { throw CommandError(message: error.rendered()) }
        } else {
            guard FileManager.default.fileExists(atPath: "/dev/iommu") else {
                throw CommandError(message: "this kernel has no /dev/iommu, so there is no host to resolve the topology against",
                                   hint: "give the simulated host: --host examples/hosts/grace-2smmu-cmdqv.yaml")
            }
            host = try HostDiscovery(kernel: LinuxKernel(sysfsRoot: kernel.sysfsRoot)).describe().host
        }
        let source: SourceText
        do { source = try InputFile.read(file) } catch { throw CommandError(message: error.rendered()) }
        let (topology, validation) = try Runner.loadValid(source, host: host, console: console)
        guard let g = topology.guest(named: guest) else {
            throw CommandError(message: "\(file) has no guest '\(guest)'", hint: "guests: \(topology.guests.map(\.name).joined(separator: ", "))")
        }
        let store = try StateStore(directory: stateDir)
        let users: UserResolver = kernel.host != nil ? SimulatedUserResolver() : SystemUserResolver()
        let desired: DesiredState
        do { desired = try DesiredState.build(topology: topology, host: host, resolved: validation.resolved, previous: store.allocations, users: users) } catch {
            throw error
        }
        if store.allocations.guests[g.name] == nil {
            console.error("note: guest \(g.name) is not applied yet: these are the values apply will allocate")
        }
        let dg = desired.guests.first { $0.name == g.name }!
        return (VMMLayout(guest: dg, allocation: desired.allocations.guests[g.name]!), topology)
    }
}

struct QemuArgs: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "qemu-args",
        abstract: "Print the QEMU command-line fragment for a guest that matches the plan.",
        discussion: """
        -object iommufd, the guest RAM backend (share=on), one pxb-pcie per vSMMU with its \
        allocated bus_nr, arm-smmuv3 with accel=on, its identifier and every feature written \
        out (never auto), pcie-root-ports with unique chassis numbers in slot order, one \
        vfio-pci per root port with iommufd=. The machine options the mode needs come as a \
        comment (or the `machine` field of --format json). --fds names the fds `vsmmu \
        handoff` passes instead of host= paths.

        Example:
          vsmmu qemu-args examples/two-vsmmus-four-gpus.yaml --guest train0 --host examples/hosts/grace-2smmu-cmdqv.yaml
        """)

    enum Format: String, ExpressibleByArgument, CaseIterable { case args, json }

    @OptionGroup var options: LayoutOptions

    @Option(help: "args (shell lines) or json.")
    var format: Format = .args

    @Flag(help: "Use the fds the agent hands over (fd= names) instead of host= and /dev paths.")
    var fds = false

    func run() throws {
        let console = Console.standard()
        let code = try runReporting(console) {
            let (layout, topology) = try options.layout(console: console)
            let out = QEMUArgs.render(layout, fds: fds)
            switch format {
            case .args: console.write(QEMUArgs.text(out, guest: options.guest, topology: topology.name))
            case .json: console.print(QEMUArgs.json(out, guest: options.guest).rendered())
            }
            return 0
        }
        if code != 0 { throw ExitCode(code) }
    }
}

struct LibvirtXml: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "libvirt-xml",
        abstract: "Print the libvirt domain XML <devices> fragment for a guest that matches the plan.",
        discussion: """
        pcie-expander-bus and pcie-root-port controllers, <iommu model='smmuv3'> with \
        <driver pciBus=…> (a controller index, not a bus number), hostdevs with \
        <driver iommufd='yes'/>. Attributes upstream libvirt does not have yet (accel, ats, \
        ril, ssidsize, oas, cmdqv) are listed in a comment.

        Example:
          vsmmu libvirt-xml examples/two-vsmmus-four-gpus.yaml --guest train0 --host examples/hosts/grace-2smmu-cmdqv.yaml
        """)

    @OptionGroup var options: LayoutOptions

    func run() throws {
        let console = Console.standard()
        let code = try runReporting(console) {
            let (layout, topology) = try options.layout(console: console)
            console.write(LibvirtXML.render(layout, topology: topology.name))
            return 0
        }
        if code != 0 { throw ExitCode(code) }
    }
}
