import VsmmuKernel
import VsmmuPlanner

/// After an interrupted apply: fds opened by a step that never finished are not in the
/// holdings. A VFIO cdev among them may still be bound, which would make the device's
/// next bind fail (one bind per device, docs/kernel-interface.md §3.3); close them all.
public enum Recovery {
    public static func sweepOrphans(port: KernelPort, holdings: Holdings) -> [String] {
        var known = Set<Int32>()
        for g in holdings.guests.values {
            known.insert(g.iommufd.fd)
            for d in g.devices.values { if let c = d.cdev { known.insert(c.fd) } }
            for m in g.memory.values { if let f = m.memory.file { known.insert(f.fd) } }
            for v in g.vsmmus.values { for q in v.eventQueues.values { known.insert(q.fd.fd) } }
        }
        guard let files = try? port.openFiles() else { return [] }
        var closed: [String] = []
        // Devices first, then event queues and memfds, the iommufd contexts last.
        let order: (OpenFileInfo.Kind) -> Int = { k in
            switch k {
            case .vfioDevice: return 0
            case .eventQueue, .memfd: return 1
            case .iommufd: return 2
            case .other: return 3
            }
        }
        for f in files.sorted(by: { order($0.kind) < order($1.kind) }) where !known.contains(f.fd) {
            if case .other = f.kind { continue }
            port.closeFile(f.fd)
            closed.append("fd \(f.fd) (\(describe(f.kind)))")
        }
        return closed
    }

    static func describe(_ k: OpenFileInfo.Kind) -> String {
        switch k {
        case .iommufd: return "an iommufd"
        case .vfioDevice(let a): return "the VFIO cdev of \(a.map(\.description) ?? "a device")"
        case .eventQueue: return "a vEVENTQ"
        case .memfd: return "a memfd"
        case .other: return "other"
        }
    }
}

extension Recovery {
    /// `--rebuild-state`: after holdings.json was lost, rebuilds what can be known safely
    /// from the journal and the kernel. Guests' contexts cannot be read back (no ioctl
    /// lists iommufd objects): every kernel file no record names is closed, so the kernel
    /// destroys their objects and the next apply re-creates them. Original drivers the
    /// journal still names are kept; a device on vfio-pci through a driver_override of
    /// vfio-pci with none is marked unknown (left on vfio-pci at destroy, never guessed).
    /// Returns one line per thing done.
    public static func rebuild(port: KernelPort, store: StateStore) throws -> [String] {
        var h = store.holdings
        var lines: [String] = []
        let dropped = h.guests.keys.sorted()
        h.guests = [:]
        if !dropped.isEmpty { lines.append("dropped the partial record of guest(s) \(dropped.joined(separator: ", ")) (the journal alone cannot say what they hold)") }
        for closed in sweepOrphans(port: port, holdings: h) { lines.append("closed \(closed), which no record names") }
        let devices = (try? port.pciDevices()) ?? []
        for d in devices.sorted(by: { $0.address < $1.address })
        where Executor.vsmmuMovedIt(d) && h.originalDrivers[d.address] == nil && !h.originalUnknown(d.address) {
            h.unknownOriginalDrivers = (h.unknownOriginalDrivers ?? []).union([d.address])
            lines.append("\(d.address) is on vfio-pci through driver_override: its original driver is unknown (destroy leaves it there)")
        }
        for (a, d) in h.originalDrivers.sorted(by: { $0.key < $1.key }) { lines.append("\(a): original driver \(d ?? "none") (from the journal)") }
        try store.replaceHoldings(h)
        lines.append("wrote \(store.holdingsPath)")
        return lines
    }
}
