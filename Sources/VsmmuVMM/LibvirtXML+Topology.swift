/// The NUMA and PCI-hole part of `libvirt-xml` (docs/qemu-interface.md §7): `<cpu><numa>`
/// cells, the pxb-pcie's `<node>`, a hostdev's `<acpi nodeset>` (libvirt makes the
/// acpi-generic-initiator objects of it) and pcie-root's `<pcihole64>`.
extension LibvirtXML {
    static func numaXML(_ layout: VMMLayout) -> String {
        guard let numa = layout.numa, !numa.nodes.isEmpty else { return "  <cpu mode='host-passthrough'/>\n" }
        let ram = layout.guest.memory.first { m in numa.nodes.contains { $0.memory == m.name } }
        var x = "  <cpu mode='host-passthrough'>\n    <numa>\n"
        for n in numa.nodes {
            let kib = n.memory != nil ? (ram?.size ?? 0) / 1024 : 0
            x += "      <cell id='\(n.id)' memory='\(kib)' unit='KiB'/>\n"
        }
        return x + "    </numa>\n  </cpu>\n"
    }

    static func rootControllerXML(_ layout: VMMLayout) -> String {
        guard let hole = layout.pciHole64 else { return "    <controller type='pci' index='0' model='pcie-root'/>\n" }
        return "    <controller type='pci' index='0' model='pcie-root'>\n"
            + "      <pcihole64 unit='KiB'>\(hole.size / 1024)</pcihole64>\n"
            + "    </controller>\n"
    }

    static func expanderTargetXML(_ layout: VMMLayout, _ e: VMMLayout.Expander) -> String {
        guard let node = layout.numa?.expanderNodes[e.vsmmu.name] else { return "      <target busNr='\(e.vsmmu.busNumber)'/>\n" }
        return "      <target busNr='\(e.vsmmu.busNumber)'>\n        <node>\(node)</node>\n      </target>\n"
    }

    static func initiatorXML(_ layout: VMMLayout, device: String) -> String {
        guard let nodes = layout.numa?.initiators(of: device), !nodes.isEmpty else { return "" }
        return "      <acpi nodeset='\(GuestNUMA.nodeSet(nodes))'/>\n"
    }

    static func topologyNotes(_ layout: VMMLayout) -> [String] {
        var notes = layout.topologyNotes
        if layout.numa.map({ !$0.nodes.isEmpty }) ?? false {
            notes.append("<cpu><numa> has the guest's NUMA cells: assign your vCPUs to them (cpus=)")
        }
        if layout.pciHole64 != nil, layout.platform == .armVirt {
            notes.append("<pcihole64> on pcie-root is the virt machine's highmem-mmio-size, which libvirt sets from it on aarch64")
        }
        return notes
    }
}
