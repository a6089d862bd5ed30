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

public struct DesiredGuest: Sendable {
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

public struct DesiredDevice: Sendable {
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

public struct DesiredStage2: Sendable {
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

public struct DesiredVSMMU: Sendable {
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
    public static func build(topology: Topology, host: HostDescription, resolved: [String: ResolvedVSMMU],
                             previous: Allocations, users: UserResolver) throws(VsmmuError) -> DesiredState {
        let allocations: Allocations
        do { allocations = try Allocator.allocate(topology, previous: previous) } catch {
            throw error
        }
        // Positions, not copies of the host's devices (10,000 of them on a large host).
        let pci = host.pciDevices
        var index: [PCIAddress: Int] = [:]
        index.reserveCapacity(pci.count)
        for i in pci.indices { index[pci[i].address] = i }
        let selftestIOMMU = host.iommus.first { $0.type == .selftest }?.name
        func vfioDriverOf(_ d: Device) -> String {
            d.host.pciAddress.flatMap { index[$0].map { pci[$0].effectiveVFIODriver } } ?? genericVFIODriver
        }
        func iommuOf(_ d: Device) -> String {
            switch d.host {
            case .pci(let a): return index[a].flatMap { pci[$0].iommu } ?? ""
            case .selftest: return selftestIOMMU ?? "selftest"
            }
        }
        var guests: [DesiredGuest] = []
        for g in topology.guests {
            let alloc = allocations.guests[g.name]!
            var devices: [DesiredDevice] = []
            var vsmmus: [DesiredVSMMU] = []
            for s in g.vsmmus {
                guard let r = resolved["\(g.name)/\(s.name)"] else {
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
            var owner: ResolvedUser?
            if let u = g.user {
                do { owner = try users.resolve(u) } catch {
                    throw VsmmuError(.plan, "guest '\(g.name)'", cause: error)
                }
            }
            guests.append(DesiredGuest(name: g.name, owner: owner, devices: devices, stage2: stage2, memory: g.memory, vsmmus: vsmmus))
        }
        return DesiredState(topologyName: topology.name, guests: guests, allocations: allocations, previous: previous)
    }
}

/// Turns a topology's `user` into a uid and gid.
public protocol UserResolver: Sendable {
    func resolve(_ user: String) throws(VsmmuError) -> ResolvedUser
}
