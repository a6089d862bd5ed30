import VsmmuKernel
import VsmmuModel
import VsmmuPlanner

/// The guest's NUMA layout and 64-bit PCI hole (docs/qemu-interface.md §7): guest nodes
/// that mirror the host nodes of the guest's devices (same numbers, so a device's node in
/// the guest is its node on the host), then per device its ACPI Generic Initiator nodes:
/// memory-less, CPU-less nodes that the guest's SRAT binds to the device (the NVIDIA
/// driver onlines a Grace GPU's memory into them). Built from the same desired state and
/// host facts as the plan; every VMM output renders it.
public struct GuestNUMA: Sendable {
    public struct Node: Sendable, Equatable {
        public var id: Int
        /// The host node this guest node mirrors; nil for a filler that only keeps the ids
        /// contiguous (QEMU refuses a missing node id).
        public var hostNode: Int?
        /// The memory region whose RAM this node holds (the machine RAM, on the first node).
        public var memory: String?
        /// The device this node is a Generic Initiator node of.
        public var initiatorOf: String?
    }

    /// A device and the guest nodes bound to it.
    public struct Initiators: Sendable, Equatable {
        public var device: String
        public var nodes: [Int]
    }

    public var nodes: [Node]
    public var initiators: [Initiators]
    /// vSMMU name -> the guest node its pxb-pcie sits in (`numa_node=`, libvirt `<node>`).
    public var expanderNodes: [String: Int]
    public var notes: [String]

    /// QEMU's MAX_NODES.
    public static let maxNodes = 128
    /// What KubeVirt gives a Grace GPU, and vsmmu's default for one.
    public static let defaultGraceInitiators = 8
    /// The VFIO variant driver of a Grace GPU (whose device memory the guest onlines into
    /// the Generic Initiator nodes).
    public static let graceGPUDriver = "nvgrace_gpu_vfio_pci"

    public func initiators(of device: String) -> [Int]? { initiators.first { $0.device == device }?.nodes }

    /// The node ids as a cpuset-style list: 2-9 for a contiguous run, else comma separated.
    public static func nodeSet(_ ids: [Int]) -> String {
        guard let first = ids.first, let last = ids.last else { return "" }
        if ids == Array(first...last), ids.count > 1 { return "\(first)-\(last)" }
        return ids.map(String.init).joined(separator: ",")
    }

    public struct TooManyNodes: Error, Sendable, CustomStringConvertible {
        public var count: Int
        public var description: String {
            "the guest would have \(count) NUMA nodes (mirrored host nodes and Generic Initiator nodes); QEMU builds at most \(GuestNUMA.maxNodes): lower genericInitiators"
        }
    }

    /// nil when the guest needs no NUMA layout: no Generic Initiator nodes, and every
    /// device on host node 0 (or unknown).
    static func build(devices: [(device: DesiredDevice, vsmmu: String?)], machineRAM: MemoryRegion?, host: HostDescription,
                      requested: [String: Int]) throws(TooManyNodes) -> GuestNUMA? {
        var notes: [String] = []
        var hostNodeOf: [String: Int] = [:]
        var count: [String: Int] = [:]
        var unplaced: [String] = []
        for (d, vsmmu) in devices {
            guard case .pci(let a) = d.source else { continue }
            let h = host.device(at: a)
            // Only a pxb-pcie carries a NUMA node (its _PXM); pcie.0 has none to mirror into.
            if let n = h?.numaNode, n >= 0 {
                if vsmmu != nil { hostNodeOf[d.name] = n } else if n > 0 { unplaced.append("\(d.name) (host node \(n))") }
            }
            let byDefault = h?.effectiveVFIODriver == graceGPUDriver ? defaultGraceInitiators : 0
            count[d.name] = requested[d.name] ?? byDefault
        }
        let mirrored = Set(hostNodeOf.values)
        let withInitiators = devices.filter { (count[$0.device.name] ?? 0) > 0 }
        guard !withInitiators.isEmpty || (mirrored.max() ?? 0) > 0 else { return nil }
        guard let ram = machineRAM else {
            // QEMU's NUMA nodes take their memory from a backend each; the guest has none
            // at the machine's RAM address to give the first node.
            return GuestNUMA(nodes: [], initiators: [], expanderNodes: [:],
                             notes: ["NUMA: no memory region at the machine's RAM address, so no guest NUMA nodes (and no Generic Initiator nodes) are written"])
        }
        if !unplaced.isEmpty {
            notes.append("NUMA: " + unplaced.joined(separator: ", ") + " sits on pcie.0, which has no NUMA node of its own")
        }
        var nodes = (0...(mirrored.max() ?? 0)).map { id in
            Node(id: id, hostNode: mirrored.contains(id) ? id : nil, memory: id == 0 ? ram.name : nil, initiatorOf: nil)
        }
        var initiators: [Initiators] = []
        for (d, _) in withInitiators {
            let first = nodes.count
            let ids = Array(first..<(first + count[d.name]!))
            nodes += ids.map { Node(id: $0, hostNode: nil, memory: nil, initiatorOf: d.name) }
            initiators.append(Initiators(device: d.name, nodes: ids))
        }
        if nodes.count > maxNodes { throw TooManyNodes(count: nodes.count) }
        var expanderNodes: [String: Int] = [:]
        for v in Set(devices.compactMap(\.vsmmu)).sorted() {
            let ns = devices.filter { $0.vsmmu == v }.compactMap { hostNodeOf[$0.device.name] }
            guard let n = ns.first else { continue }
            expanderNodes[v] = n
            if Set(ns).count > 1 {
                notes.append("NUMA: the devices of vSMMU \(v) sit on host nodes \(Set(ns).sorted().map(String.init).joined(separator: ", ")); its pxb-pcie is put in node \(n)")
            }
        }
        return GuestNUMA(nodes: nodes, initiators: initiators, expanderNodes: expanderNodes, notes: notes)
    }
}

/// The guest's 64-bit PCI MMIO window sized from the devices' BARs, as KubeVirt sizes a
/// Grace guest's pcihole64: the 64-bit prefetchable BARs of every device, at least 512 GiB
/// for a device with Generic Initiator nodes (a Grace GPU), plus 1 GiB, rounded up to a
/// power of two. Written only when it exceeds the machine's default window.
public struct PCIHole64: Sendable, Equatable {
    public var size: UInt64
    /// Per device, what it adds, for the comment that explains the size.
    public var contributions: [(device: String, bytes: UInt64)]

    public static let gpuFloor: UInt64 = 512 << 30
    public static let margin: UInt64 = 1 << 30

    public static func == (a: PCIHole64, b: PCIHole64) -> Bool { a.size == b.size && a.contributions.map(\.device) == b.contributions.map(\.device) }

    /// The default 64-bit window of each machine: virt's high PCIe MMIO region (512 GiB,
    /// also the least highmem-mmio-size takes) and q35's pci-hole64-size (32 GiB).
    public static func defaultSize(_ p: VMMLayout.Platform) -> UInt64 { p == .armVirt ? 512 << 30 : 32 << 30 }

    static func build(devices: [DesiredDevice], host: HostDescription, numa: GuestNUMA?, platform: VMMLayout.Platform) -> (hole: PCIHole64?, notes: [String]) {
        var total: UInt64 = 0
        var contributions: [(device: String, bytes: UInt64)] = []
        var unknown: [String] = []
        for d in devices {
            guard case .pci(let a) = d.source, let h = host.device(at: a) else { continue }
            guard let bars = h.bars, !h.isUnknown(.bars) else {
                unknown.append(d.name)
                continue
            }
            var bytes = bars.filter { $0.bits64 && $0.prefetchable }.reduce(UInt64(0)) { $0 + $1.size }
            if !(numa?.initiators(of: d.name) ?? []).isEmpty { bytes = max(bytes, gpuFloor) }
            guard bytes > 0 else { continue }
            total += bytes
            contributions.append((d.name, bytes))
        }
        // Said when the hole is sized at all: then it is sized from a partial picture.
        let sized = total > 0 || !(numa?.initiators.isEmpty ?? true)
        let notes = unknown.isEmpty || !sized ? [] : ["PCI hole: the host description has no BARs of " + unknown.joined(separator: ", ") + ", so the 64-bit hole does not count them"]
        guard total > 0 else { return (nil, notes) }
        var size: UInt64 = 1
        while size < total + margin { size <<= 1 }
        guard size > defaultSize(platform) else { return (nil, notes) }
        return (PCIHole64(size: size, contributions: contributions), notes)
    }
}

extension VMMLayout {
    /// The guest's devices in layout order (vSMMUs by identifier, then pcie.0's root ports).
    var orderedDevices: [(device: DesiredDevice, vsmmu: String?)] {
        expanders.flatMap { e in e.ports.compactMap(\.device).map { ($0, Optional(e.vsmmu.name)) } }
            + rootPorts.compactMap(\.device).map { ($0, nil) }
    }

    /// Adds the NUMA layout and the 64-bit PCI hole from the host's facts about the devices
    /// (numaNode, bars, vfioDriver); `requested` is each device's `genericInitiators` as the
    /// topology gives it.
    public mutating func addGuestTopology(host: HostDescription, requested: [String: Int]) throws(GuestNUMA.TooManyNodes) {
        numa = try GuestNUMA.build(devices: orderedDevices, machineRAM: machineRAM, host: host, requested: requested)
        let (hole, notes) = PCIHole64.build(devices: orderedDevices.map(\.device), host: host, numa: numa, platform: platform)
        pciHole64 = hole
        topologyNotes = (numa?.notes ?? []) + notes
    }
}
