import ArgumentParser
import Foundation
import VsmmuProvisioning
import VsmmuKernel
import VsmmuLinux
import VsmmuModel

struct Host: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "host",
        abstract: "Print the host description (kind Host) of this machine, or of the simulated host.",
        discussion: """
        Reads sysfs (PCI devices, drivers, IOMMU groups, reserved regions, /sys/class/iommu) \
        and, for one device per IOMMU that is already bound to vfio-pci, the IOMMU's \
        registers (IOMMU_GET_HW_INFO) and two probes in a private iommufd context: a \
        nest-parent HWPT (nesting) and a vIOMMU (CANWBS or S2FWB). When no device behind an \
        IOMMU is on vfio-pci, a device with no driver is bound to vfio-pci for the probe and \
        given back (--no-probe-driverless: never). Facts it cannot read are listed under \
        `unknown`, never guessed. The output is what `--host FILE` takes. \
        Each PCI bridge gets its secondaryBus and, from the ACS capability in its \
        config space, its acsControl: the path a `peer:` pair's traffic takes \
        (config space past 64 bytes needs root; otherwise acsControl is unknown). \
        With --remote unix:PATH it describes the kernel behind a vsmmu-remote executor \
        (docs/remote-executor.md), e.g. a lab guest, instead of this machine.

        Example:
          vsmmu host > host.yaml && vsmmu validate topology.yaml --host host.yaml
        """)

    enum Format: String, ExpressibleByArgument, CaseIterable { case yaml, json }

    @OptionGroup var kernel: KernelOptions

    @OptionGroup var remote: RemoteOptions

    @OptionGroup var probe: ProbeOptions

    @Option(help: "yaml or json.")
    var format: Format = .yaml

    @Option(help: ArgumentHelp("Where the device nodes are (for tests).", valueName: "DIR", visibility: .hidden))
    var devRoot: String = "/dev"

    func validate() throws {
        try remote.check(against: kernel)
    }

    func run() throws {
        let console = Console.standard()
        let code = try runReporting(console) {
            var host: HostDescription
            var notes: [String] = []
            if kernel.host != nil {
                host = try Session.open(kernel).host
            } else {
                let executor = try remote.connect()
                let linux = executor.map { LinuxKernel(remote: $0) } ?? LinuxKernel(sysfsRoot: kernel.sysfsRoot, devRoot: devRoot)
                let iommufd = linux.hasIommufd
                // A remote that stopped answering is not a kernel without iommufd.
                if let failure = executor?.transportFailure { throw CommandError(message: failure) }
                if !iommufd && kernel.sysfsRoot == "/sys" {
                    throw CommandError(message: "\(executor.map { "the kernel behind the \($0.location)" } ?? "this kernel") has no /dev/iommu (it was built without CONFIG_IOMMUFD): there is no iommufd host to describe",
                                       hint: "describe a simulated host instead: vsmmu host --host examples/hosts/grace-2smmu-cmdqv.yaml")
                }
                do {
                    let r = try HostDiscovery(kernel: linux).describe(probeDriverless: probe.probeDriverless)
                    host = r.host
                    notes = r.notes
                } catch {
                    if let executor {
                        throw CommandError(.kernel, "cannot read the devices of the kernel behind the \(executor.location)", cause: error)
                    }
                    throw CommandError(.kernel, "cannot read this machine's devices", hint: "is sysfs mounted at \(kernel.sysfsRoot)?", cause: error)
                }
                if !linux.hasIommufd { notes.insert("no /dev/iommu under \(linux.devRoot): the kernel has no iommufd", at: 0) }
            }
            for n in notes { console.error("note: \(n)") }
            switch format {
            case .yaml: console.write(host.renderYAML())
            case .json: console.print(HostJSON.render(host).rendered())
            }
            return 0
        }
        if code != 0 { throw ExitCode(code) }
    }
}

enum HostJSON {
    static func render(_ h: HostDescription) -> JSONValue {
        ["apiVersion": "vsmmu/v1", "kind": "Host", "metadata": ["name": .string(h.name)],
         "kernel": kernel(h.kernel),
         "iommus": .array(h.iommus.map { i in
             var o: [String: JSONValue] = ["name": .string(i.name), "type": .string(i.type.rawValue), "nesting": .bool(i.nesting),
                                           "coherent": .bool(i.coherent), "ats": .bool(i.ats), "ril": .bool(i.ril), "pasid": .bool(i.pasid),
                                           "ssidSize": .int(Int64(i.ssidSize)), "oas": .int(Int64(i.oas)),
                                           "reservedRegions": .array(i.reservedRegions.map { ["start": .uint($0.start), "size": .uint($0.size), "type": .string($0.type)] })]
             if let q = i.cmdqvVCMDQs { o["cmdqv"] = ["vcmdqs": .int(Int64(q))] }
             if !i.unknown.isEmpty { o["unknown"] = .array(i.unknown.map { .string($0) }) }
             return .object(o)
         }),
         "pciDevices": .array(h.pciDevices.map(device))]
    }

    // Every fact the YAML form has (HostFile.swift), so that both say the same (the
    // aarch64 lab found the JSON form without the per-device facts and the page size).
    static func kernel(_ k: KernelFacts) -> JSONValue {
        var o: [String: JSONValue] = ["release": .string(k.release), "iommufd": .bool(k.iommufd), "vfioCdev": .bool(k.vfioCdev)]
        if let p = k.pageSize { o["pageSize"] = .uint(p) }
        return .object(o)
    }

    static func device(_ d: HostPCIDevice) -> JSONValue {
        var o: [String: JSONValue] = [
            "address": .string(d.address.description), "vendor": .int(Int64(d.vendor)), "device": .int(Int64(d.device)),
            "class": .int(Int64(d.classCode)), "driver": d.driver.map { .string($0) } ?? .null,
            "iommuGroup": d.iommuGroup.map { .int(Int64($0)) } ?? .null, "iommu": d.iommu.map { .string($0) } ?? .null,
            "numaNode": .int(Int64(d.numaNode))]
        if let v = d.vfioDriver { o["vfioDriver"] = .string(v) }
        if let v = d.ats { o["ats"] = .bool(v) }
        if let v = d.pasidWidth { o["pasidWidth"] = .int(Int64(v)) }
        if let v = d.canwbs { o["canwbs"] = .bool(v) }
        if let bars = d.bars {
            o["bars"] = .array(bars.map { ["index": .int(Int64($0.index)), "size": .uint($0.size), "prefetchable": .bool($0.prefetchable), "bits64": .bool($0.bits64)] })
        }
        if !d.unknown.isEmpty { o["unknown"] = .array(d.unknown.map { .string($0.rawValue) }) }
        return .object(o)
    }
}
