import VsmmuKernel
import VsmmuModel

/// The object graph one topology asks for (docs/contract.md §5), with every `auto` resolved and
/// every allocated value filled in.
public struct DesiredState: Sendable {
    public var topologyName: String
    public var guests: [DesiredGuest]
    public var allocations: Allocations
    /// The allocations recorded before this plan (with what each guest saw then).
    public var previous = Allocations()
}

public struct DesiredGuest: Hashable, Sendable {
    public var name: String
    public var owner: ResolvedUser?
    public var devices: [DesiredDevice]
    public var stage2: [DesiredStage2]
    public var memory: [MemoryRegion]
    public var vsmmus: [DesiredVSMMU]
}

public struct ResolvedUser: Hashable, Sendable, Codable {
    public var name: String
    public var uid: UInt32
    public var gid: UInt32
    /// How it was resolved, shown in plans ("" for a real account).
    public var note: String
}

public struct DesiredDevice: Hashable, Sendable {
    public var name: String
    public var source: DeviceSource
    public var iommu: String
    /// The vSMMU it sits behind; nil for a device attached straight to the stage-2.
    public var vsmmu: String?
    public var guestBus: Int
    /// Virtual StreamID (guest BDF) for devices behind a vSMMU.
    public var vsid: UInt64?
    public var slot: Int
    /// The VFIO driver the device moves to (the host's vfioDriver, else vfio-pci).
    public var vfioDriver: String = genericVFIODriver
    public var isMock: Bool { if case .selftest = source { return true }; return false }
    public var guestAddress: String {
        guestAddressTexts.indices.contains(guestBus) ? guestAddressTexts[guestBus] : "0000:\(hex(UInt64(guestBus), 2)):00.0"
    }
}

/// Every guest address a bus number gives, made once (a plan names one per device).
private let guestAddressTexts: [String] = (0..<256).map { "0000:\(hex(UInt64($0), 2)):00.0" }

public struct DesiredStage2: Hashable, Sendable {
    public var iommu: String
    public var nestParent: Bool
    /// The device whose dev_id allocates it (the first of the guest on that IOMMU).
    public var viaDevice: String
}

/// Kernel type values per IOMMU family (docs/kernel-interface.md §2, §5, §7.3).
public struct VIOMMUFlavor: Hashable, Sendable, Codable {
    public var hwInfoType: HWInfoType
    public var viommuType: VIOMMUType
    public var nestedDataType: HWPTDataType
    public var eventQueueTypes: [VEventQType]
    public var typeName: String { viommuType.name }

    public static let armSMMUv3 = VIOMMUFlavor(hwInfoType: .armSMMUv3, viommuType: .armSMMUv3,
                                               nestedDataType: .armSMMUv3, eventQueueTypes: [.armSMMUv3])
    public static let tegra241CMDQV = VIOMMUFlavor(hwInfoType: .armSMMUv3, viommuType: .tegra241CMDQV,
                                                   nestedDataType: .armSMMUv3, eventQueueTypes: [.armSMMUv3, .tegra241CMDQV])
    public static let selftest = VIOMMUFlavor(hwInfoType: .selftest, viommuType: .selftest,
                                              nestedDataType: .selftest, eventQueueTypes: [.selftest])
}

public struct DesiredVSMMU: Hashable, Sendable {
    public var name: String
    public var resolved: ResolvedVSMMU
    public var flavor: VIOMMUFlavor
    public var busNumber: Int
    public var identifier: Int
    public var devices: [String]
    /// The device whose dev_id allocates the vIOMMU and its HWPTs.
    public var viaDevice: String
}

/// Depth of each vEVENTQ: 128 entries, the event queue size QEMU's vSMMU advertises.
public let eventQueueDepth: UInt32 = 128

func hex(_ v: UInt64, _ width: Int = 0) -> String {
    let s = String(v, radix: 16)
    return String(repeating: "0", count: max(0, width - s.count)) + s
}


extension DesiredState {
    /// Builds the desired graph. The topology must already be valid against `host`.
    /// What an earlier build made of a guest is reused while everything it depends on is
    /// the same (DesiredGuestCache); owners are resolved every time.
    public static func build(topology: Topology, host: HostDescription, resolved: [String: ResolvedVSMMU],
                             previous: Allocations, users: UserResolver) throws(VsmmuError) -> DesiredState {
        let facts = DesiredGuestCache.HostFacts(host)
        let cached = DesiredGuestCache.shared.entries(for: facts)
        // Allocations first, for every guest (the first error as before).
        var allocations = Allocations()
        var known: [DesiredGuestCache.Entry?] = []
        known.reserveCapacity(topology.guests.count)
        for g in topology.guests {
            let before = previous.guests[g.name]
            let entry = cached[g.name].flatMap { $0.guest == g ? $0 : nil }
            var a: GuestAllocation
            if let entry, entry.allocation.keeps(before) {
                // Allocating again what the allocator made is a fixed point (AllocatorTests).
                a = entry.allocation
                assert(a.sameValues((try? Allocator.allocate(g, previous: before ?? GuestAllocation())) ?? GuestAllocation()),
                       "guest \(g.name): a kept allocation differs from allocating again")
            } else {
                a = try Allocator.allocate(g, previous: before ?? GuestAllocation())
            }
            a.topology = topology.name
            allocations.guests[g.name] = a
            known.append(entry)
        }
        var lookup = HostLookup(host)
        var owners: [String: ResolvedUser] = [:]
        var guests: [DesiredGuest] = []
        guests.reserveCapacity(topology.guests.count)
        var made: [String: DesiredGuestCache.Entry] = [:]
        for (g, entry) in zip(topology.guests, known) {
            let alloc = allocations.guests[g.name]!
            let rs = g.vsmmus.map { resolved["\(g.name)/\($0.name)"] }
            var d: DesiredGuest
            if let entry, entry.allocation.sameValues(alloc), entry.resolved == rs {
                d = entry.desired
                assert(d == (try? desiredGuest(g, alloc, rs, host: host, lookup: &lookup)), "guest \(g.name): a kept desired guest differs from building it again")
            } else {
                d = try desiredGuest(g, alloc, rs, host: host, lookup: &lookup)
            }
            made[g.name] = DesiredGuestCache.Entry(guest: g, allocation: alloc, resolved: rs, desired: d)
            if let u = g.user {
                if let o = owners[u] { d.owner = o } else {
                    do { d.owner = try users.resolve(u) } catch {
                        throw VsmmuError(.plan, "guest '\(g.name)'", cause: error)
                    }
                    owners[u] = d.owner
                }
            }
            guests.append(d)
        }
        DesiredGuestCache.shared.store(made, for: facts)
        return DesiredState(topologyName: topology.name, guests: guests, allocations: allocations, previous: previous)
    }

    /// The host's devices by address (positions, not copies: 10,000 of them on a large
    /// host), made only when a guest is built.
    struct HostLookup {
        let host: HostDescription
        var index: [PCIAddress: Int]?
        init(_ host: HostDescription) { self.host = host }

        mutating func position(_ a: PCIAddress) -> Int? {
            if index == nil {
                var made: [PCIAddress: Int] = [:]
                made.reserveCapacity(host.pciDevices.count)
                for i in host.pciDevices.indices { made[host.pciDevices[i].address] = i }
                index = made
            }
            return index![a]
        }
    }

    /// One guest of the graph, without its owner (`rs`: its vSMMUs as resolved, in order).
    static func desiredGuest(_ g: Guest, _ alloc: GuestAllocation, _ rs: [ResolvedVSMMU?], host: HostDescription,
                             lookup: inout HostLookup) throws(VsmmuError) -> DesiredGuest {
        let selftestIOMMU = host.iommus.first { $0.type == .selftest }?.name
        func vfioDriverOf(_ d: Device) -> String {
            d.host.pciAddress.flatMap { lookup.position($0) }.map { host.pciDevices[$0].effectiveVFIODriver } ?? genericVFIODriver
        }
        func iommuOf(_ d: Device) -> String {
            switch d.host {
            case .pci(let a): return lookup.position(a).flatMap { host.pciDevices[$0].iommu } ?? ""
            case .selftest: return selftestIOMMU ?? "selftest"
            }
        }
        var devices: [DesiredDevice] = []
        var vsmmus: [DesiredVSMMU] = []
        for (s, r) in zip(g.vsmmus, rs) {
            guard let r else {
                throw VsmmuError(.plan, "vSMMU '\(s.name)' of guest '\(g.name)' could not be resolved against the host")
            }
            let a = alloc.vsmmus[s.name]!
            let ports = a.ports.ports
            for d in s.devices {
                let slot = a.ports.slots[d.name]!
                let bus = PortAllocation.secondaryBus(of: slot, base: a.busNumber, ports: ports)
                devices.append(DesiredDevice(name: d.name, source: d.host, iommu: iommuOf(d), vsmmu: s.name,
                                             guestBus: bus, vsid: UInt64(bus) << 8, slot: slot, vfioDriver: vfioDriverOf(d)))
            }
            let flavor: VIOMMUFlavor = r.physicalType == .selftest ? .selftest : (r.cmdqv ? .tegra241CMDQV : .armSMMUv3)
            vsmmus.append(DesiredVSMMU(name: s.name, resolved: r, flavor: flavor, busNumber: a.busNumber,
                                       identifier: a.identifier, devices: s.devices.map(\.name), viaDevice: s.devices.first?.name ?? ""))
        }
        let rootPorts = alloc.rootPorts.ports
        for d in g.devices {
            let slot = alloc.rootPorts.slots[d.name]!
            devices.append(DesiredDevice(name: d.name, source: d.host, iommu: iommuOf(d), vsmmu: nil,
                                         guestBus: PortAllocation.secondaryBus(of: slot, base: 0, ports: rootPorts), vsid: nil, slot: slot,
                                         vfioDriver: vfioDriverOf(d)))
        }
        // One stage-2 per physical IOMMU the guest uses, nest parent where the IOMMU nests.
        var stage2: [DesiredStage2] = []
        for d in devices where !stage2.contains(where: { $0.iommu == d.iommu }) {
            let nesting = host.iommus.first { $0.name == d.iommu }?.nesting ?? false
            stage2.append(DesiredStage2(iommu: d.iommu, nestParent: nesting, viaDevice: d.name))
        }
        return DesiredGuest(name: g.name, owner: nil, devices: devices, stage2: stage2, memory: g.memory, vsmmus: vsmmus)
    }
}

/// Turns a topology's `user` into a uid and gid.
public protocol UserResolver: Sendable {
    func resolve(_ user: String) throws(VsmmuError) -> ResolvedUser
}
