import VsmmuKernel

/// The NUMA and PCI-hole part of `qemu-args` (docs/qemu-interface.md §7).
extension QEMUArgs {
    /// With guest NUMA nodes, the machine RAM is node 0's memdev: QEMU refuses
    /// `-machine memory-backend=` together with `-numa node,memdev=`.
    static func ramIsNUMAMemory(_ layout: VMMLayout) -> Bool { !(layout.numa?.nodes.isEmpty ?? true) }

    /// `-numa node,...` per guest node, then the 64-bit PCI hole.
    static func topologyArgs(_ layout: VMMLayout) -> [String] {
        var args: [String] = []
        for n in layout.numa?.nodes ?? [] {
            args += ["-numa", "node,nodeid=\(n.id)" + (n.memory.map { ",memdev=mem.\($0)" } ?? "")]
        }
        if let hole = layout.pciHole64 {
            switch layout.platform {
            case .armVirt: args += ["-machine", "highmem-mmio-size=\(qemuSize(hole.size))"]
            case .x86Q35: args += ["-global", "q35-pcihost.pci-hole64-size=\(qemuSize(hole.size))"]
            }
        }
        return args
    }

    /// The pxb-pcie's `numa_node=` suffix.
    static func expanderNode(_ layout: VMMLayout, vsmmu: String) -> String {
        layout.numa?.expanderNodes[vsmmu].map { ",numa_node=\($0)" } ?? ""
    }

    /// One acpi-generic-initiator per node bound to the device (QEMU's object takes one node).
    static func initiatorArgs(_ layout: VMMLayout, device: String) -> [String] {
        (layout.numa?.initiators(of: device) ?? []).enumerated().flatMap { k, node in
            ["-object", "acpi-generic-initiator,id=gi.\(device).\(k),pci-dev=\(device),node=\(node)"]
        }
    }

    /// What the comment lines say about the layout.
    static func topologyNotes(_ layout: VMMLayout) -> [String] {
        var notes: [String] = []
        if let numa = layout.numa, !numa.nodes.isEmpty {
            let mirrored = numa.nodes.filter { $0.initiatorOf == nil }
            notes.append("NUMA: guest nodes " + GuestNUMA.nodeSet(mirrored.map(\.id)) + " mirror the host nodes of the devices (node 0 holds the RAM; give vCPUs with -numa cpu or -numa node,cpus= of your own)")
            for i in numa.initiators {
                notes.append("NUMA: nodes \(GuestNUMA.nodeSet(i.nodes)) are memory-less Generic Initiator nodes of \(i.device) (ACPI SRAT type 5)")
            }
        }
        if let hole = layout.pciHole64 {
            let parts = hole.contributions.map { "\($0.device) \(qemuSize($0.bytes))" }.joined(separator: " + ")
            notes.append("PCI hole: the 64-bit window is \(qemuSize(hole.size)) (\(parts) + 1G, rounded up to a power of two; default \(qemuSize(PCIHole64.defaultSize(layout.platform))))")
        }
        return notes + layout.topologyNotes
    }
}
