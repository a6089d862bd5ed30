import VsmmuKernel
import VsmmuModel
import VsmmuPlanner

/// `vsmmu libvirt-xml`: the domain XML devices fragment for one guest
/// (reference/qemu-accel-smmuv3.md §3.1). Attributes upstream libvirt does not have yet
/// are left out and listed in a comment.
public enum LibvirtXML {
    static func hex2(_ v: Int) -> String { Allocator.hex2(v) }
    static func hex4(_ v: Int) -> String { YAMLText.hex(UInt64(v), width: 4) }

    public static func render(_ layout: VMMLayout, topology: String) -> String {
        var x = "<!-- libvirt devices for guest \(layout.guest.name) (topology \(topology)), as vsmmu plans it -->\n"
        x += "<!-- at domain level, outside <devices>: <iommufd enabled='yes'/> -->\n"
        x += "<devices>\n"
        x += "  <controller type='pci' index='0' model='pcie-root'/>\n"
        var index = 1
        var left: [String] = []
        var hostdevs = ""
        func port(_ p: VMMLayout.RootPort, parent: Int) {
            let mine = index
            index += 1
            let slot = p.bus == "pcie.0" ? p.slot : p.slot
            x += "  <controller type='pci' index='\(mine)' model='pcie-root-port'>\n"
            x += "    <model name='pcie-root-port'/>\n"
            x += "    <target chassis='\(p.chassis)' port='\(hex2(p.slot))'/>\n"
            x += "    <address type='pci' domain='0x0000' bus='\(hex2(parent))' slot='\(hex2(slot))' function='0x0'/>\n"
            x += "  </controller>\n"
            guard let d = p.device, case .pci(let a) = d.source else { return }
            hostdevs += "  <hostdev mode='subsystem' type='pci' managed='no'>\n"
            hostdevs += "    <driver iommufd='yes'/>\n"
            hostdevs += "    <source><address domain='\(hex4(Int(a.domain)))' bus='\(hex2(Int(a.bus)))' slot='\(hex2(Int(a.slot)))' function='0x\(a.function)'/></source>\n"
            hostdevs += "    <address type='pci' domain='0x0000' bus='\(hex2(mine))' slot='0x00' function='0x0'/>\n"
            hostdevs += "  </hostdev>\n"
        }
        for e in layout.expanders {
            let pxb = index
            index += 1
            x += "  <controller type='pci' index='\(pxb)' model='pcie-expander-bus'>\n"
            x += "    <model name='pxb-pcie'/>\n"
            x += "    <target busNr='\(e.vsmmu.busNumber)'/>\n"
            x += "  </controller>\n"
            for p in e.ports { port(p, parent: pxb) }
            x += "  <iommu model='smmuv3'>\n"
            x += "    <driver pciBus='\(pxb)'/>\n"
            x += "  </iommu>\n"
            let r = e.vsmmu.resolved
            left.append("smmuv3 on pciBus \(pxb): <driver pciBus='\(pxb)' accel='on' ats='\(r.ats ? "on" : "off")' ril='\(r.ril ? "on" : "off")' ssidsize='\(r.ssidSize)' oas='\(r.oas)' cmdqv='\(r.cmdqv ? "on" : "off")'/> (identifier \(e.vsmmu.identifier))")
        }
        for p in layout.rootPorts { port(p, parent: 0) }
        x += hostdevs
        x += "</devices>\n"
        x += "<!-- Left out: attributes upstream libvirt does not have yet (RFC series), to add when it does:\n"
        for l in left { x += "     \(l)\n" }
        x += "     The devices are already on vfio-pci (vsmmu bound them): managed='no'. -->\n"
        return x
    }
}
