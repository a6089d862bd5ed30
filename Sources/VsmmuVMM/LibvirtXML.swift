import VsmmuKernel
import VsmmuModel
import VsmmuPlanner

/// `vsmmu libvirt-xml`: a libvirt domain for one guest in the hand-over form
/// (docs/formatdomain.rst of libvirt 12.9; docs/qemu-interface.md §3): the
/// domain-level `<iommufd enabled='yes' fdgroup=…>` (since 12.2.0) takes the fresh
/// /dev/iommu fd a launch hands over through `virDomainFDAssociate`, every hostdev has
/// `<driver iommufd='yes'/>` (since 12.1.0), the memory backing matches qemu-args, and each
/// vSMMU is `<iommu model='smmuv3'>` with `accel` and its features written out (since
/// 12.7.0). The operator adds disks, network and CPUs.
public enum LibvirtXML {
    public struct Output: Sendable {
        public var xml: String
        public var notes: [String]   // for stderr: what the XML needs or cannot say
    }

    static func hex2(_ v: Int) -> String { Allocator.hex2(v) }
    static func hex4(_ v: Int) -> String { YAMLText.hex(UInt64(v), width: 4) }
    static func onOff(_ b: Bool) -> String { b ? "on" : "off" }

    /// Oldest libvirt that parses what is emitted: upstream's smmuv3 accel attributes arrived
    /// in 12.7.0, the domain-level `<iommufd fdgroup>` in 12.2.0.
    public static func minimumLibvirt(_ layout: VMMLayout, dialect: LibvirtDialect = .upstream) -> String {
        switch dialect {
        case .upstream: layout.expanders.isEmpty ? "12.2.0" : "12.7.0"
        case .nvidia: "11.9.0+nvidia"
        }
    }

    /// A dialect and release that cannot write this guest (LibvirtDialect.refusal).
    public struct Refusal: Error, Sendable, CustomStringConvertible {
        public var description: String
    }

    public static func render(_ layout: VMMLayout, topology: String, dialect: LibvirtDialect = .upstream,
                              version: LibvirtDialect.Version? = nil) throws(Refusal) -> Output {
        let g = layout.guest
        if let why = dialect.refusal(version ?? dialect.defaultVersion, acceleratedVSMMUs: layout.expanders.map(\.vsmmu.name)) {
            throw Refusal(description: why)
        }
        let fdGroup = FDPlaceholder.name(guest: g.name, thing: .iommufd)
        var notes: [String] = []
        var leftOut: [String] = []

        var x = "<!-- libvirt domain for guest \(g.name) (topology \(topology)), as vsmmu plans it; \(dialect.label) >= \(minimumLibvirt(layout, dialect: dialect)) -->\n"
        x += "<!-- Add disks, network and vCPUs. Start it in the hand-over: the agent releases the guest and passes a fresh /dev/iommu fd\n"
        x += "     (per-process memlock accounting already set); associate it as fd group '\(fdGroup)' with virDomainFDAssociate on the\n"
        x += "     connection that then starts the domain (virsh: domfdassociate, then start, in one virsh session). libvirt opens\n"
        x += "     the VFIO cdevs itself; QEMU allocates the guest RAM (libvirt cannot take the agent's memfd). -->\n"
        x += "<domain type='kvm'>\n"
        x += "  <name>\(g.name)</name>\n"

        let ram = layout.machineRAM
        let size = ram?.size ?? g.memory.reduce(0) { $0 + $1.size }
        x += "  <memory unit='KiB'>\(size / 1024)</memory>\n"
        for m in g.memory where m.name != ram?.name {
            notes.append("memory \(m.name) at 0x\(String(m.guestAddress, radix: 16)) is not the machine's RAM: add it as a NUMA cell or a memory device")
        }
        if let m = ram ?? g.memory.first {
            x += "  <memoryBacking>\n"
            switch m.backing {
            case .memfd:
                if let h = m.hugepageSize { x += "    <hugepages>\n      <page size='\(h / 1024)' unit='KiB'/>\n    </hugepages>\n" }
                x += "    <source type='memfd'/>\n"
            case .hugetlbfs:
                if let h = m.hugepageSize {
                    x += "    <hugepages>\n      <page size='\(h / 1024)' unit='KiB'/>\n    </hugepages>\n"
                } else {
                    x += "    <hugepages/>\n"
                }
                // hugepages alone mean hugetlbfs files; immediate = qemu-args' prealloc=on
                x += "    <allocation mode='immediate'/>\n"
            case .anonymous:
                x += "    <source type='anonymous'/>\n"
                notes.append("memory \(m.name): anonymous RAM is private to QEMU; use memfd or hugetlbfs for guests behind an accelerated vSMMU")
            }
            if m.backing != .anonymous { x += "    <access mode='shared'/>\n" }
            x += "  </memoryBacking>\n"
        }

        switch layout.platform {
        case .armVirt:
            // accel=on refuses a device tree: UEFI and ACPI
            x += "  <os firmware='efi'>\n    <type arch='aarch64' machine='virt'>hvm</type>\n  </os>\n"
            x += "  <features>\n    <acpi/>\n    <gic version='3'/>\n  </features>\n"
        case .x86Q35:
            x += "  <os>\n    <type arch='x86_64' machine='q35'>hvm</type>\n  </os>\n"
            x += "  <features>\n    <acpi/>\n  </features>\n"
        }
        x += numaXML(layout)
        x += "  <iommufd enabled='yes' fdgroup='\(fdGroup)'/>\n"

        x += "  <devices>\n"
        x += rootControllerXML(layout)
        var index = 1
        var hostdevs = ""
        func port(_ p: VMMLayout.RootPort, parent: Int) {
            let mine = index
            index += 1
            x += "    <controller type='pci' index='\(mine)' model='pcie-root-port'>\n"
            x += "      <model name='pcie-root-port'/>\n"
            x += "      <target chassis='\(p.chassis)' port='\(hex2(p.slot))'/>\n"
            x += "      <address type='pci' domain='0x0000' bus='\(hex2(parent))' slot='\(hex2(p.slot))' function='0x0'/>\n"
            x += "    </controller>\n"
            guard let d = p.device else { return }
            guard case .pci(let a) = d.source else {
                notes.append("device \(d.name) is a kernel self-test mock device: it has no libvirt counterpart")
                return
            }
            hostdevs += "    <hostdev mode='subsystem' type='pci' managed='no'>\n"
            hostdevs += "      <driver iommufd='yes'/>\n"
            hostdevs += "      <source>\n"
            hostdevs += "        <address domain='\(hex4(Int(a.domain)))' bus='\(hex2(Int(a.bus)))' slot='\(hex2(Int(a.slot)))' function='0x\(a.function)'/>\n"
            hostdevs += "      </source>\n"
            hostdevs += "      <address type='pci' domain='0x0000' bus='\(hex2(mine))' slot='0x00' function='0x0'/>\n"
            hostdevs += initiatorXML(layout, device: d.name)
            hostdevs += "    </hostdev>\n"
        }
        for e in layout.expanders {
            let pxb = index
            index += 1
            x += "    <controller type='pci' index='\(pxb)' model='pcie-expander-bus'>\n"
            x += "      <model name='pxb-pcie'/>\n"
            x += expanderTargetXML(layout, e)
            x += "    </controller>\n"
            for p in e.ports { port(p, parent: pxb) }
            let r = e.vsmmu.resolved
            // pciBus is the pxb's controller index, not its bus number
            x += "    <iommu model='smmuv3'>\n"
            x += "      <driver pciBus='\(pxb)' accel='on' ats='\(onOff(r.ats))' ril='\(onOff(r.ril))' \(dialect.ssidSizeAttribute)='\(r.ssidSize)' oas='\(r.oas)' cmdqv='\(onOff(r.cmdqv))'/>\n"
            x += "    </iommu>\n"
            leftOut.append("identifier=\(e.vsmmu.identifier) of vSMMU \(e.vsmmu.name) (pciBus \(pxb)): libvirt has no attribute for the SMMUv3 identifier; the IORT node identifiers are whatever libvirt's QEMU command line gives")
        }
        for p in layout.rootPorts { port(p, parent: 0) }
        x += hostdevs
        x += "  </devices>\n"
        x += "</domain>\n"
        x += "<!-- The devices are already on vfio-pci (vsmmu bound them): managed='no'."
        if !leftOut.isEmpty {
            x += "\n     Left out, as libvirt cannot say it:\n" + leftOut.map { "     \($0)" }.joined(separator: "\n")
            notes.append("the SMMUv3 identifier has no libvirt attribute: the guest's IORT identifiers may differ from the plan's")
        }
        x += " -->\n"
        notes += topologyNotes(layout)
        if dialect == .nvidia {
            notes.insert("written for NVIDIA's libvirt (the 11.9.0+nvidia builds KubeVirt's Grace support runs on): <iommu model='smmuv3'> with accel, ats, ril, ssidSize, oas and cmdqv", at: 0)
        } else if !layout.expanders.isEmpty {
            notes.insert("<iommu model='smmuv3'> with accel, ats, ril, ssidsize, oas and cmdqv needs libvirt >= \(minimumLibvirt(layout)); <iommufd fdgroup> needs >= 12.2.0", at: 0)
        } else {
            notes.insert("<iommufd fdgroup> needs libvirt >= 12.2.0", at: 0)
        }
        return Output(xml: x, notes: notes)
    }
}
