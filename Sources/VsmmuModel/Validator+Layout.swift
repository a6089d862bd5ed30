import VsmmuYAML

/// Rules on a guest's NUMA layout fields (GuestLayoutFields.swift; docs/qemu-interface.md §7).
extension Validator {
    /// QEMU builds at most 128 NUMA nodes, node 0 among them.
    static let maxGuestNUMANodes = 128

    mutating func layoutRules(_ guest: Guest) {
        var total = 0
        var largest: (count: Int, mark: Mark)?
        for d in guest.allDevices {
            guard let n = d.layout.genericInitiators, n > 0 else { continue }
            let mark = d.layout.genericInitiatorsMark ?? d.mark
            if case .selftest = d.host {
                bag.error("device '\(d.name)' is a kernel self-test mock device: it has no guest PCI device for genericInitiators to bind NUMA nodes to", at: mark)
                continue
            }
            total += n
            if n > (largest?.count ?? 0) { largest = (n, mark) }
        }
        if total >= Self.maxGuestNUMANodes, let largest {
            bag.error("guest '\(guest.name)' asks for \(total) Generic Initiator nodes; with node 0 that is more than the \(Self.maxGuestNUMANodes) NUMA nodes QEMU builds", at: largest.mark)
        }
    }
}
