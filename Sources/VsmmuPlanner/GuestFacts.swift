import VsmmuKernel
import VsmmuModel

/// What an operator should know about a guest beyond its resources (docs/contract.md §4 "Guest
/// facts"): where placement put each device and why, every `auto` and what it became, each
/// peer pair's path on the host, and the lifecycle limits its VMM will have. `plan` prints
/// them, the allocations keep them for `show`, `qemu-args` writes the lifecycle as comments.
public struct GuestFacts: Codable, Hashable, Sendable {
    public var guest: String
    public var placement: [PlacementDecision]
    public var autos: [AutoResolution]
    public var peers: [PeerReport]
    public var lifecycle: [LifecycleFact]

    public var isEmpty: Bool { placement.isEmpty && autos.isEmpty && peers.isEmpty && lifecycle.isEmpty }
}

/// A limit of the running guest that follows from its layout.
public struct LifecycleFact: Codable, Hashable, Sendable {
    public enum Kind: String, Codable, Sendable {
        /// QEMU's accelerated vSMMU registers a migration blocker (docs/qemu-interface.md §5).
        case migrationBlocked = "migration-blocked"
        /// With CMDQV, the device that created the vIOMMU cannot be hot-unplugged.
        case noHotUnplug = "no-hot-unplug"
    }
    public var kind: Kind
    /// The vSMMU it concerns (all of them for migration).
    public var vsmmus: [String]
    /// The device it concerns, for `no-hot-unplug`.
    public var device: String?
    public var text: String
}

extension GuestFacts {
    /// From the desired guest, its allocation (slots decide which device QEMU realizes first)
    /// and what placement and the validator said.
    public static func of(_ g: DesiredGuest, allocation: GuestAllocation?, placement: GuestPlacement?) -> GuestFacts {
        var lifecycle: [LifecycleFact] = []
        let accelerated = g.vsmmus.filter { $0.resolved.physicalType != .selftest }
        if !accelerated.isEmpty {
            let names = accelerated.map(\.name)
            lifecycle.append(LifecycleFact(kind: .migrationBlocked, vsmmus: names, device: nil,
                text: "migration is blocked while accel is on: QEMU's accelerated vSMMU (\(names.joined(separator: ", "))) adds a migration blocker"))
        }
        for v in accelerated where v.resolved.cmdqv {
            // QEMU realizes the devices in root-port slot order: the lowest slot creates the vIOMMU.
            let slots = allocation?.vsmmus[v.name]?.ports.slots ?? [:]
            guard let first = v.devices.map({ (slots[$0] ?? Int.max, $0) }).min(by: <)?.1 else { continue }
            lifecycle.append(LifecycleFact(kind: .noHotUnplug, vsmmus: [v.name], device: first,
                text: "device \(first) cannot be hot-unplugged: it is the first device of CMDQV vSMMU \(v.name), whose vIOMMU it created (QEMU blocks that unplug)"))
        }
        return GuestFacts(guest: g.name, placement: placement?.decisions ?? [], autos: placement?.autos ?? [],
                          peers: placement?.peers ?? [], lifecycle: lifecycle)
    }

    /// The facts as indented lines (plan text, show, qemu-args comments use the same words).
    public var lines: [String] {
        var out: [String] = []
        for d in placement {
            out.append("device \(d.device) (vsmmu: \(d.requested)) → \(d.vsmmu.map { "vSMMU \($0)" } ?? "no vSMMU"): \(d.reason)")
        }
        for a in autos {
            out.append("\(a.subject): auto → \(a.value): \(a.reason)")
        }
        for p in peers {
            let under = p.vsmmu.map { "under vSMMU \($0) and its pxb" } ?? "with no vSMMU"
            out.append("peers \(p.device) ↔ \(p.peer) \(under): \(p.route.rawValue): \(p.text)")
            if let k = p.kernelParameter {
                out.append("  to let it cross the switch: \(k) on the host's kernel command line (takes effect at reboot; removes isolation between those devices and may merge IOMMU groups; vsmmu never changes it)")
            }
        }
        for l in lifecycle { out.append(l.text) }
        return out
    }

    /// Only the lifecycle (what `qemu-args` comments on), and which values were `auto`.
    public var lifecycleLines: [String] {
        lifecycle.map(\.text)
            + placement.filter { $0.requested == "auto" }.map { "device \($0.device) vsmmu was auto: \($0.vsmmu ?? "none")" }
            + autos.map { "\($0.subject) was auto: \($0.value)" }
    }
}
