import VsmmuKernel
import VsmmuModel
import VsmmuPlanner

/// The guest's PCI layout as a VMM must build it, from the same desired state the plan
/// uses: one pxb-pcie and one arm-smmuv3 per vSMMU, root ports in slot order (empty ones
/// where a removed device left a hole, so later bus numbers do not move), one device per
/// root port. Every value is explicit: no `auto` reaches QEMU.
public struct VMMLayout: Sendable {
    public struct RootPort: Sendable {
        public var id: String
        public var bus: String          // the QEMU bus id it sits on
        public var chassis: Int
        public var slot: Int
        /// The guest bus behind it (firmware numbering).
        public var secondaryBus: Int
        public var device: DesiredDevice?
    }

    public struct Expander: Sendable {
        public var vsmmu: DesiredVSMMU
        public var busID: String        // pcie.N
        public var controllerIndex: Int // libvirt controller index of the pxb
        public var smmuID: String
        public var ports: [RootPort]
    }

    /// The guest machine a VMM builds for this host: accelerated vSMMUs exist only on the
    /// aarch64 virt machine; plain passthrough on an x86 IOMMU goes to a q35 machine.
    public enum Platform: String, Sendable {
        case armVirt = "aarch64-virt"
        case x86Q35 = "x86_64-q35"

        /// From the guest's vSMMUs and the host IOMMUs its devices sit behind; a guest with
        /// neither follows the host's IOMMUs (the self-test mock runs on x86).
        public static func of(_ g: DesiredGuest, host: HostDescription) -> Platform {
            if !g.vsmmus.isEmpty { return .armVirt }
            let types = g.devices.compactMap { host.iommu(named: $0.iommu)?.type }
            for t in types.isEmpty ? host.iommus.map(\.type) : types {
                switch t {
                case .armSMMUv3: return .armVirt
                case .intelVTd, .amdVi: return .x86Q35
                case .selftest: continue
                }
            }
            return .x86Q35
        }

        /// Where the machine's own RAM starts in the guest.
        public var ramBase: UInt64 { self == .armVirt ? 0x4000_0000 : 0 }
    }

    public var guest: DesiredGuest
    public var platform: Platform
    public var expanders: [Expander]
    public var rootPorts: [RootPort]    // on pcie.0, for devices with no vSMMU
    /// NUMA nodes, Generic Initiators and the 64-bit PCI hole (GuestNUMA.swift); nil and
    /// empty until `addGuestTopology`.
    public var numa: GuestNUMA?
    public var pciHole64: PCIHole64?
    public var topologyNotes: [String] = []

    /// The region that becomes the machine's RAM (`-machine memory-backend=`, libvirt's
    /// `<memory>`). On virt that is the region at 0x40000000, where virt's RAM starts; q35
    /// lays its RAM out itself (below 4 GiB up to 2 GiB or more, the rest from 4 GiB), so
    /// there the lowest region is the machine's RAM wherever the topology put it.
    public var machineRAM: MemoryRegion? {
        switch platform {
        case .armVirt: guest.memory.first { $0.guestAddress == platform.ramBase }
        case .x86Q35: guest.memory.min { $0.guestAddress < $1.guestAddress }
        }
    }

    /// Root ports on pcie.0 start at this slot: slot 0 is the host bridge, low slots are
    /// where a VM's emulated devices usually go.
    public static let rootPortSlotBase = 0x10

    public init(guest g: DesiredGuest, allocation: GuestAllocation, platform: Platform = .armVirt) {
        guest = g
        self.platform = platform
        var chassis = 0
        func nextChassis() -> Int { chassis += 1; return chassis }
        let byName = Dictionary(uniqueKeysWithValues: g.devices.map { ($0.name, $0) })
        var expanders: [Expander] = []
        // Created in identifier order: QEMU numbers the SMMUs' IORT nodes in creation order.
        for (i, v) in g.vsmmus.sorted(by: { ($0.identifier, $0.busNumber) < ($1.identifier, $1.busNumber) }).enumerated() {
            let a = allocation.vsmmus[v.name]?.ports ?? PortAllocation()
            let busID = "pcie.\(i + 1)"
            let bySlot = Dictionary(uniqueKeysWithValues: a.slots.map { ($0.value, $0.key) })
            let ports = a.ports.map { slot in
                RootPort(id: "rp.\(v.name).\(slot)", bus: busID, chassis: nextChassis(), slot: slot,
                         secondaryBus: a.secondaryBus(of: slot, base: v.busNumber), device: bySlot[slot].flatMap { byName[$0] })
            }
            expanders.append(Expander(vsmmu: v, busID: busID, controllerIndex: 0, smmuID: "smmuv3.\(i)", ports: ports))
        }
        self.expanders = expanders
        let bySlot = Dictionary(uniqueKeysWithValues: allocation.rootPorts.slots.map { ($0.value, $0.key) })
        rootPorts = allocation.rootPorts.ports.map { slot in
            RootPort(id: "rp.root.\(slot)", bus: "pcie.0", chassis: nextChassis(), slot: Self.rootPortSlotBase + slot,
                     secondaryBus: allocation.rootPorts.secondaryBus(of: slot, base: 0), device: bySlot[slot].flatMap { byName[$0] })
        }
    }
}
