import ArgumentParser
import Foundation
import VsmmuProvisioning
import VsmmuExecutor
import VsmmuFiles
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

    /// With --socket (or VSMMU_SOCKET) and no --host, the agent resolves the layout against
    /// the host it runs on and the allocations it keeps. nil: in-process.
    func throughAgent(_ kind: RequestKind, format: String?, fds: Bool, edit: (inout Request) -> Void = { _ in }) throws -> Int32? {
        let explicit = kernel.socket != nil || Environment.nonEmpty("VSMMU_SOCKET") != nil
        guard kernel.host == nil, explicit, let socket = kernel.agentSocket else { return nil }
        var request = Request(kind)
        request.guest = guest
        request.format = format
        request.fds = fds
        edit(&request)
        return try Dispatch.run(request, file: file, kernel: kernel, socket: socket)
    }

    func layout(console: Console) throws -> (VMMLayout, Topology, GuestFacts) {
        let stateDir = kernel.resolvedStateDir
        var host: HostDescription
        let simHost = stateDir + "/sim/host.yaml"
        // Read through the checked state directory, never through a link (VsmmuFiles).
        let simHostBytes = kernel.host == nil ? nil
            : (try? StateDirectory(stateDir, create: false).subdirectory("sim", create: false).read("host.yaml")).flatMap { $0 }
        if let simHostBytes {
            do { host = try HostDescription.parse(SourceText(path: simHost, bytes: simHostBytes)) } catch { throw CommandError(message: error.rendered()) }
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
        return try Self.layout(source, guest: guest, host: host, stateDir: stateDir, simulated: kernel.host != nil, console: console)
    }

    /// The guest's layout from `source` against `host`, with the allocations kept in
    /// `stateDir` (in-process, or in the agent for `--socket`).
    static func layout(_ source: SourceText, guest: String, host: HostDescription, stateDir: String, simulated: Bool,
                       console: Console) throws -> (VMMLayout, Topology, GuestFacts) {
        let file = source.path
        let (parsed, validation) = try Provisioner.validate(source, host: host)
        let topology = validation.placing(parsed)
        guard let g = topology.guest(named: guest) else {
            throw CommandError(message: "\(file) has no guest '\(guest)'", hint: "guests: \(topology.guests.map(\.name).joined(separator: ", "))")
        }
        let store = try StateStore(directory: stateDir)
        let users: UserResolver = simulated ? SimulatedUserResolver() : SystemUserResolver()
        let desired: DesiredState
        do { desired = try DesiredState.build(topology: topology, host: host, resolved: validation.resolved, previous: store.allocations, users: users) } catch {
            throw error
        }
        if store.allocations.guests[g.name] == nil {
            console.error("note: guest \(g.name) is not applied yet: these are the values apply will allocate")
        }
        let dg = desired.guests.first { $0.name == g.name }!
        let allocation = desired.allocations.guests[g.name]!
        let facts = GuestFacts.of(dg, allocation: allocation, placement: validation.placements[g.name])
        var layout = VMMLayout(guest: dg, allocation: allocation, platform: .of(dg, host: host))
        let requested = Dictionary(g.allDevices.compactMap { d in d.layout.genericInitiators.map { (d.name, $0) } }, uniquingKeysWith: { a, _ in a })
        do { try layout.addGuestTopology(host: host, requested: requested) } catch { throw CommandError(message: "guest \(g.name): \(error)") }
        return (layout, topology, facts)
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
        vfio-pci per root port with iommufd=. With devices on several host NUMA nodes or \
        a Grace GPU: -numa nodes mirroring the devices' host nodes (the RAM on node 0, \
        each pxb-pcie in its node), per GPU eight acpi-generic-initiator nodes (or its \
        genericInitiators:), and a 64-bit PCI hole sized from the BARs \
        (highmem-mmio-size on virt).

        --fds writes every fd as a placeholder {vsmmu-GUEST-NAME} for the fresh fds of a \
        hand-over: an empty iommufd, unbound VFIO cdevs (QEMU binds them itself) and the \
        guest-RAM memfds (mem-path=/proc/self/fd/{...}). `vsmmu launch` replaces each with \
        the number of the fd QEMU inherits; QEMU takes only numbers on its command line.

        --format args prints one option per line, the machine options as a comment. \
        --format argv prints the arguments on one line for $(...): no comments, no \
        continuations, and only the object, memory and device arguments, because the \
        machine type differs per host (aarch64 virt for vSMMUs, x86_64 q35 for plain \
        passthrough on Intel or AMD; the `machine` field of --format json has it). Its \
        -machine memory-backend= merges with your own -machine; do not also give -m.

        Examples:
          vsmmu qemu-args examples/two-vsmmus-four-gpus.yaml \\
              --guest train0 \\
              --host examples/hosts/grace-2smmu-cmdqv.yaml

          vsmmu launch --guest vm1 -- \\
              qemu-system-x86_64 \\
              -machine q35,accel=kvm \\
              -cpu host \\
              $(vsmmu qemu-args examples/devices-without-vsmmu.yaml \\
                  --guest vm1 \\
                  --fds \\
                  --format argv)
        """)

    enum Format: String, ExpressibleByArgument, CaseIterable { case args, argv, json }

    @OptionGroup var options: LayoutOptions

    @Option(help: "args (one option per line), argv (one line for $(...)) or json.")
    var format: Format = .args

    @Flag(help: "Write each fd as a {vsmmu-GUEST-NAME} placeholder for the fresh fds of a hand-over, instead of host= and /dev paths.")
    var fds = false

    func run() throws {
        let console = Console.standard()
        if let code = try options.throughAgent(.qemuArgs, format: format.rawValue, fds: fds) {
            if code != 0 { throw ExitCode(code) }
            return
        }
        let code = try runReporting(console) {
            try Self.write(try options.layout(console: console), guest: options.guest, format: format, fds: fds, console: console)
        }
        if code != 0 { throw ExitCode(code) }
    }

    static func write(_ l: (VMMLayout, Topology, GuestFacts), guest: String, format: Format, fds: Bool, console: Console) throws -> Int32 {
        let (layout, topology, facts) = l
        var out: QEMUArgs.Output
        do { out = try QEMUArgs.render(layout, fds: fds) } catch { throw CommandError(message: "\(error)") }
        // The guest's lifecycle limits and its auto values, as comments (and JSON notes).
        out.notes += facts.lifecycleLines.map { "lifecycle: \($0)" }
        switch format {
        case .args: console.write(QEMUArgs.text(out, guest: guest, topology: topology.name))
        case .argv:
            do { console.write(try QEMUArgs.argv(out)) } catch { throw CommandError(message: "\(error)") }
        case .json: console.print(QEMUArgs.json(out, guest: guest).rendered())
        }
        return 0
    }
}

struct LibvirtXml: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "libvirt-xml",
        abstract: "Print a libvirt domain for a guest that matches the plan, in the hand-over form.",
        discussion: """
        For upstream libvirt >= 12.7 (>= 12.2 for a guest without vSMMUs), or with \
        --dialect nvidia for NVIDIA's libvirt builds (11.9.0+nvidia, what KubeVirt's Grace \
        support runs on), which spell the SubstreamID width ssidSize. A release that \
        cannot say accel=on (--libvirt-version below 12.7) is refused: its <iommu \
        model='smmuv3'> would be QEMU's emulated SMMUv3. The domain-level \
        <iommufd enabled='yes' fdgroup='vsmmu-GUEST-iommufd'/> takes the fresh /dev/iommu \
        fd the agent hands over (per-process memlock accounting already set), associated \
        with virDomainFDAssociate on the connection that then starts the domain. libvirt \
        opens the VFIO cdevs itself: hostdevs with <driver iommufd='yes'/> and \
        managed='no' (vsmmu bound them to vfio-pci). The memory backing matches qemu-args \
        (memfd or hugepages, shared), but QEMU allocates that memory: libvirt cannot take \
        the agent's memfd.

        pcie-expander-bus and pcie-root-port controllers, <iommu model='smmuv3'> with \
        <driver pciBus=…> (a controller index, not a bus number) and accel, ats, ril, \
        ssidsize, oas and cmdqv written out. libvirt has no attribute for the SMMUv3 \
        identifier: a comment and a note on stderr say so. With guest NUMA nodes (devices \
        on several host nodes, or Generic Initiator nodes of a Grace GPU) <cpu><numa> \
        has the cells, each pxb its <node>, a GPU hostdev its <acpi nodeset>; a 64-bit \
        PCI hole larger than the default is pcie-root's <pcihole64>. Add disks, network \
        and vCPUs.

        Example:
          vsmmu libvirt-xml examples/two-vsmmus-four-gpus.yaml \\
              --guest train0 \\
              --host examples/hosts/grace-2smmu-cmdqv.yaml \\
              > train0.xml
        """)

    @OptionGroup var options: LayoutOptions

    @Option(help: "upstream (libvirt's own attribute names) or nvidia (NVIDIA's libvirt builds).")
    var dialect: String = LibvirtDialect.upstream.rawValue

    @Option(help: "The libvirt release to write for, e.g. 12.7 (default: 12.9 upstream, 11.9 nvidia).")
    var libvirtVersion: String?

    func run() throws {
        let console = Console.standard()
        if let code = try options.throughAgent(.libvirtXML, format: nil, fds: false, edit: { r in
            r.libvirtDialect = dialect
            r.libvirtVersion = libvirtVersion
        }) {
            if code != 0 { throw ExitCode(code) }
            return
        }
        let code = try runReporting(console) {
            try Self.write(try options.layout(console: console), dialect: try Self.dialect(dialect), version: try Self.version(libvirtVersion), console: console)
        }
        if code != 0 { throw ExitCode(code) }
    }

    static func dialect(_ text: String?) throws -> LibvirtDialect {
        guard let text else { return .upstream }
        guard let d = LibvirtDialect(rawValue: text) else {
            throw CommandError(message: "--dialect \(text) is no libvirt dialect", hint: "dialects: " + LibvirtDialect.allCases.map(\.rawValue).joined(separator: ", "))
        }
        return d
    }

    static func version(_ text: String?) throws -> LibvirtDialect.Version? {
        guard let text else { return nil }
        guard let v = LibvirtDialect.Version(text) else {
            throw CommandError(message: "--libvirt-version \(text) is not a libvirt release", hint: "write it as major.minor, e.g. 12.7")
        }
        return v
    }

    static func write(_ l: (VMMLayout, Topology, GuestFacts), dialect: LibvirtDialect, version: LibvirtDialect.Version?, console: Console) throws -> Int32 {
        let (layout, topology, _) = l
        let out: LibvirtXML.Output
        do { out = try LibvirtXML.render(layout, topology: topology.name, dialect: dialect, version: version) } catch {
            throw CommandError(message: "guest \(layout.guest.name): \(error)")
        }
        for n in out.notes { console.error("note: \(n)") }
        console.write(out.xml)
        return 0
    }
}
