import VsmmuKernel
import VsmmuYAML

/// `vsmmu:` of a device in a guest's `devices:` list (docs/contract.md §2 "Placement").
public enum DevicePlacement: Hashable, Sendable {
    /// No vSMMU: attached straight to the stage-2 (the default).
    case none
    /// Behind the guest's vSMMU on the device's own physical SMMU, made if the guest has none.
    case auto
    /// Behind this vSMMU of the guest's `vsmmus:`.
    case vsmmu(String)

    init(_ text: String?) {
        switch text {
        case nil, "none": self = .none
        case "auto": self = .auto
        case let name?: self = .vsmmu(name)
        }
    }

    public var text: String {
        switch self {
        case .none: return "none"
        case .auto: return "auto"
        case .vsmmu(let n): return n
        }
    }
}

enum PlacementSchema {
    static let vsmmu = SchemaField("vsmmu", .scalar(.name, description:
        "auto: behind the vSMMU of the device's own physical SMMU (one accelerated vSMMU per physical SMMU, made when the guest declares none there); none (the default): no vSMMU; or the name of one of this guest's vSMMUs"))
    static let peer = SchemaField("peer", .scalar(.name, description:
        "another device of this guest it talks to peer-to-peer (a GPU's NIC for GPUDirect RDMA): placed under the same vSMMU and pxb, which needs the same physical SMMU; the plan reports the host's ACS on the path"))
}

/// Why a device went where it went.
public struct PlacementDecision: Hashable, Sendable, Codable {
    public var device: String
    public var host: String
    /// What the topology asked: `auto` or a vSMMU's name.
    public var requested: String
    /// The vSMMU it went behind; nil: no vSMMU (the stage-2).
    public var vsmmu: String?
    public var physical: String?
    public var reason: String
}

/// A value the topology left to vsmmu (`auto`, or a vSMMU placement made) and what it became.
public struct AutoResolution: Hashable, Sendable, Codable {
    /// e.g. `vsmmu smmu0 ats`, `device gpu0 vsmmu`.
    public var subject: String
    public var value: String
    public var reason: String
}

/// What placement did for one guest, and what the plan says about it.
public struct GuestPlacement: Hashable, Sendable, Codable {
    public var guest: String
    public var decisions: [PlacementDecision] = []
    /// vSMMUs placement made (not in the topology), by name: their physical SMMU.
    public var createdVSMMUs: [String: String] = [:]
    public var peers: [PeerReport] = []
    /// Every `auto` resolved, with its reason (filled in by the validator).
    public var autos: [AutoResolution] = []
}

/// Places the devices of `devices:` lists that ask for a vSMMU (`vsmmu: auto` or a name):
/// one accelerated vSMMU per physical SMMU the guest uses, each device behind the vSMMU of
/// its own physical SMMU, peers next to each other. The result is an ordinary topology
/// (every device under a vSMMU or on the stage-2), which the validator and the planner take
/// as if written so. Its vSMMU names follow the physical SMMU, so a re-plan finds the same
/// names, and the allocations (by name) keep every bus, slot and vSID.
enum Placement {
    /// Without a host only named placements are made (`auto` needs the host's SMMUs).
    static func place(_ guest: Guest, host: HostDescription?, index: Validator.HostIndex?) -> (Guest, GuestPlacement) {
        var report = GuestPlacement(guest: guest.name)
        let asked = guest.devices.filter { $0.placement != .none }
        guard !asked.isEmpty else { return (guest, report) }
        var g = guest
        let selftest = host?.iommus.first { $0.type == .selftest }
        func iommu(of d: Device) -> HostIOMMU? {
            switch d.host {
            case .pci(let a): return index?.devices[a]?.iommu.flatMap { index?.iommus[$0] }
            case .selftest: return selftest
            }
        }
        // The physical SMMU of each declared vSMMU: as named, else its first device's.
        var vsmmuOn: [String: Int] = [:]
        for (i, s) in g.vsmmus.enumerated() {
            let p = s.physical ?? s.devices.lazy.compactMap { iommu(of: $0)?.name }.first
            if let p, vsmmuOn[p] == nil { vsmmuOn[p] = i }
        }
        // Peers next to each other: each device, then the peers it names or that name it.
        var peersOf: [String: [Device]] = [:]      // both directions, in file order
        var byName: [String: Device] = [:]
        for d in asked where byName[d.name] == nil { byName[d.name] = d }
        for d in asked {
            guard let p = d.peer, let e = byName[p] else { continue }
            peersOf[d.name, default: []].append(e)
            peersOf[p, default: []].append(d)
        }
        var order: [Device] = []
        var seen = Set<String>()
        for d in asked where seen.insert(d.name).inserted {
            order.append(d)
            for e in peersOf[d.name] ?? [] where seen.insert(e.name).inserted { order.append(e) }
        }
        var moved = Set<String>()
        for d in order {
            switch d.placement {
            case .none:
                continue
            case .vsmmu(let name):
                // An unknown name stays where it is; the validator's shape rule says so.
                guard let i = g.vsmmus.firstIndex(where: { $0.name == name }) else { continue }
                g.vsmmus[i].devices.append(d)
                moved.insert(d.name)
                report.decisions.append(PlacementDecision(device: d.name, host: d.host.description, requested: name, vsmmu: name,
                                                          physical: iommu(of: d)?.name, reason: "vsmmu: \(name) names it"))
            case .auto:
                // A device the host lacks stays put: the host rules name the problem.
                guard let i = iommu(of: d) else { continue }
                if let why = cannotAccelerate(i) {
                    report.decisions.append(PlacementDecision(device: d.name, host: d.host.description, requested: "auto", vsmmu: nil, physical: i.name,
                                                              reason: "\(why): passed through on the stage-2, with no vSMMU"))
                    continue
                }
                let reason: String
                if let at = vsmmuOn[i.name] {
                    g.vsmmus[at].devices.append(d)
                    let made = report.createdVSMMUs[g.vsmmus[at].name] != nil
                    reason = made ? "the vSMMU made for \(i.name), the physical SMMU it sits behind"
                                  : "the guest's vSMMU on \(i.name), the physical SMMU it sits behind"
                } else {
                    let name = vsmmuName(for: i.name, taken: Set(g.vsmmus.map(\.name)))
                    let mark = d.placementMark ?? d.mark
                    g.vsmmus.append(VSMMU(name: name, physical: i.name, busNumber: nil, identifier: nil, ats: .auto, ril: .auto,
                                          ssidSize: .auto, oas: .auto, cmdqv: .auto, devices: [d], mark: mark, fieldMarks: ["name": mark]))
                    vsmmuOn[i.name] = g.vsmmus.count - 1
                    report.createdVSMMUs[name] = i.name
                    reason = "no vSMMU of the guest was on \(i.name), the physical SMMU it sits behind: made one (one accelerated vSMMU per physical SMMU)"
                }
                moved.insert(d.name)
                let at = vsmmuOn[i.name]!
                report.decisions.append(PlacementDecision(device: d.name, host: d.host.description, requested: "auto", vsmmu: g.vsmmus[at].name,
                                                          physical: i.name, reason: reason))
            }
        }
        g.devices.removeAll { moved.contains($0.name) }
        // Say so where a device went next to its peer (same vSMMU, so the same pxb).
        var vsmmuOf: [String: String] = [:]
        for s in g.vsmmus { for d in s.devices { vsmmuOf[d.name] = s.name } }
        var partnersOf: [String: [String]] = [:]
        for d in guest.allDevices {
            guard let p = d.peer else { continue }
            partnersOf[d.name, default: []].append(p)
            partnersOf[p, default: []].append(d.name)
        }
        for (i, d) in report.decisions.enumerated() {
            guard let v = d.vsmmu else { continue }
            let partners = partnersOf[d.device] ?? []
            if let p = partners.first(where: { vsmmuOf[$0] == v }) {
                report.decisions[i].reason += "; next to its peer \(p), under the same vSMMU and pxb"
            }
        }
        return (g, report)
    }

    /// Why an IOMMU cannot back an accelerated vSMMU, from facts the host states (an
    /// unknown fact is left to the validator, which refuses to rely on it).
    static func cannotAccelerate(_ i: HostIOMMU) -> String? {
        switch i.type {
        case .armSMMUv3, .selftest:
            if !i.nesting && !i.unknown.contains("nesting") { return "IOMMU \(i.name) has no nesting, which an accelerated vSMMU needs" }
            if !i.coherent && !i.unknown.contains("coherent") { return "IOMMU \(i.name) is not coherent (neither CANWBS nor S2FWB), so the kernel refuses a vIOMMU on it" }
            return nil
        case .intelVTd, .amdVi:
            return "IOMMU \(i.name) is \(i.type.rawValue): an accelerated vSMMU needs an ARM SMMUv3"
        }
    }

    /// A vSMMU name from its physical SMMU: `smmu3.0x0000000016000000` → `smmu-16000000`.
    /// The same physical SMMU gives the same name in every plan.
    static func vsmmuName(for physical: String, taken: Set<String>) -> String {
        var base: String
        if physical.hasPrefix("smmu3.0x") {
            let hex = physical.dropFirst("smmu3.0x".count).drop { $0 == "0" }.lowercased()
            base = "smmu-" + (hex.isEmpty ? "0" : hex)
        } else {
            base = String(physical.lowercased().map { ($0.isLetter || $0.isNumber) && $0.isASCII ? $0 : "-" })
        }
        base = String(base.drop { $0 == "-" }.prefix(56))
        if base.isEmpty { base = "vsmmu" }
        var name = base
        var n = 2
        while taken.contains(name) { name = "\(base)-\(n)"; n += 1 }
        return name
    }
}
