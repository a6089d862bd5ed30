import VsmmuKernel
import VsmmuYAML

extension ValidationResult {
    /// `topology` with each guest as placement left it (the same guest when it has no
    /// `vsmmu:` placements), for callers that hold the topology they validated.
    public func placing(_ topology: Topology) -> Topology {
        var byName: [String: Guest] = [:]
        for g in placed.guests where byName[g.name] == nil { byName[g.name] = g }
        var t = topology
        t.guests = t.guests.map { byName[$0.name] ?? $0 }
        return t
    }
}

/// The placement rules (docs/contract.md §2 "Placement"): `vsmmu:` names a vSMMU of the guest,
/// `peer:` names another device of it, and a peer pair shares a physical SMMU, a vSMMU and a pxb.
extension Validator {
    mutating func placementShapeRules(_ guest: Guest) {
        let names = guest.allDevices.map(\.name)
        for d in guest.allDevices {
            guard let p = d.peer else { continue }
            let m = d.peerMark ?? d.mark
            if p == d.name {
                bag.error("device '\(d.name)' names itself as its peer", at: m, hint: "peer: names another device of guest '\(guest.name)', e.g. a GPU's NIC")
            } else if !names.contains(p) {
                let near = names.first { editDistance($0, p) <= 2 }
                bag.error("peer '\(p)' of device '\(d.name)' is not a device of guest '\(guest.name)'", at: m,
                          hint: near.map { "did you mean '\($0)'?" } ?? "devices of '\(guest.name)': \(names.joined(separator: ", "))")
            }
        }
        // A named placement that found its vSMMU was moved under it; what is left names none.
        for d in guest.devices {
            guard case .vsmmu(let n) = d.placement else { continue }
            let known = guest.vsmmus.map(\.name)
            bag.error("vsmmu: \(n) of device '\(d.name)' names no vSMMU of guest '\(guest.name)'", at: d.placementMark ?? d.mark,
                      hint: known.isEmpty ? "write vsmmu: auto (the vSMMU of its physical SMMU) or none" : "write vsmmu: auto, none, or one of: \(known.joined(separator: ", "))")
        }
    }

    /// Each `peer:` pair: one physical SMMU, then one vSMMU; the path's ACS goes into the report.
    mutating func peerRules(_ guest: Guest, host: HostDescription) {
        guard guest.allDevices.contains(where: { $0.peer != nil }) else { return }
        var attachment: [String: String] = [:]   // device -> vSMMU ("" for none)
        for s in guest.vsmmus { for d in s.devices { attachment[d.name] = s.name } }
        for d in guest.devices { attachment[d.name] = "" }
        var byName: [String: Device] = [:]
        for d in guest.allDevices where byName[d.name] == nil { byName[d.name] = d }
        var seen = Set<String>()
        for d in guest.allDevices {
            guard let pn = d.peer, pn != d.name, let p = byName[pn] else { continue }
            guard seen.insert([d.name, pn].sorted().joined(separator: "/")).inserted else { continue }
            guard let a = d.host.pciAddress, let b = p.host.pciAddress, let ha = index!.devices[a], let hb = index!.devices[b],
                  let ia = ha.iommu, let ib = hb.iommu else { continue }   // a missing device has its own error
            let m = d.peerMark ?? d.mark
            if ia != ib {
                // Devices like the other one, behind each one's own SMMU, that no guest uses.
                let used = usedAddresses()
                func spare(like x: HostPCIDevice, behind i: String) -> String {
                    let s = host.pciDevices.filter { $0.iommu == i && $0.classCode >> 8 == x.classCode >> 8 && !used.contains($0.address) }.prefix(4)
                    return s.isEmpty ? "" : " (free there: \(s.map(\.address.description).joined(separator: ", ")))"
                }
                bag.error("device '\(d.name)' (\(a)) and its peer '\(pn)' (\(b)) sit behind different physical SMMUs (\(ia) and \(ib)): an accelerated vSMMU serves one physical SMMU, so they cannot share a vSMMU and a pxb, and the guest would not see them as peers (NCCL then turns GPUDirect RDMA off)",
                          at: m, hint: "pair '\(d.name)' with a device behind \(ia)\(spare(like: hb, behind: ia)), or '\(pn)' with one behind \(ib)\(spare(like: ha, behind: ib)); or drop the peer:")
                continue
            }
            let va = attachment[d.name] ?? "", vb = attachment[pn] ?? ""
            if va != vb {
                func say(_ v: String) -> String { v.isEmpty ? "no vSMMU" : "vSMMU '\(v)'" }
                bag.error("device '\(d.name)' and its peer '\(pn)' share physical SMMU \(ia) but not a vSMMU ('\(d.name)': \(say(va)), '\(pn)': \(say(vb))); peers go under one vSMMU and pxb",
                          at: m, hint: "put both under the same vSMMU, e.g. vsmmu: auto for each")
                continue
            }
            let found = PeerPath.analyze(ha, hb, host: host)
            placements[guest.name, default: GuestPlacement(guest: guest.name)].peers.append(
                PeerReport(device: d.name, peer: pn, vsmmu: va.isEmpty ? nil : va, route: found.route, bridges: found.bridges,
                           text: found.text, kernelParameter: found.kernelParameter))
        }
    }

    /// Every host device the topology uses (only an error's hint needs it).
    func usedAddresses() -> Set<PCIAddress> {
        var used = Set<PCIAddress>()
        for g in topology.guests { for d in g.allDevices { if let a = d.host.pciAddress { used.insert(a) } } }
        return used
    }

    /// The placement reports with every `auto` that was resolved.
    func finishedPlacements() -> [String: GuestPlacement] {
        var out = placements
        for g in topology.guests {
            var p = out[g.name] ?? GuestPlacement(guest: g.name)
            var autos: [AutoResolution] = []
            for s in g.vsmmus {
                if let physical = p.createdVSMMUs[s.name] {
                    autos.append(AutoResolution(subject: "vsmmu \(s.name) physical", value: physical,
                                                reason: "made for its devices' vsmmu: auto, named after its physical SMMU so that every plan finds the same name"))
                }
                autos += autoReasons["\(g.name)/\(s.name)"] ?? []
            }
            p.autos = autos
            out[g.name] = p
        }
        return out
    }
}

/// Why each `auto` feature of a vSMMU resolved as it did.
enum AutoReasons {
    static func of(_ s: VSMMU, iommu: HostIOMMU, ats: Bool, ril: Bool, ssid: Int, oas: Int, cmdqv: Bool,
                   noATS: [String], narrowest: String?) -> [AutoResolution] {
        func onOff(_ b: Bool) -> String { b ? "on" : "off" }
        let p = "physical SMMU \(iommu.name)"
        var out: [AutoResolution] = []
        func add(_ field: String, _ value: String, _ reason: String) {
            out.append(AutoResolution(subject: "vsmmu \(s.name) \(field)", value: value, reason: reason))
        }
        if s.physical == nil { add("physical", iommu.name, "the IOMMU its devices sit behind") }
        if s.ats == .auto {
            add("ats", onOff(ats), !iommu.ats ? "\(p) has no ATS"
                : noATS.isEmpty ? "\(p) and every device behind the vSMMU have ATS"
                : "capped per device: \(noATS.joined(separator: ", ")) \(noATS.count == 1 ? "has" : "have") no ATS")
        }
        if s.ril == .auto { add("ril", onOff(ril), "\(p) \(iommu.ril ? "has" : "has no") range invalidation") }
        if s.ssidSize == .auto {
            add("ssidSize", String(ssid), narrowest.map { "capped per device: the narrowest PASID width behind the vSMMU is \($0)" }
                ?? "\(p)'s PASID bits (every device has as many)")
        }
        if s.oas == .auto { add("oas", String(oas), "\(p)'s \(iommu.oas)-bit output address size") }
        if s.cmdqv == .auto {
            add("cmdqv", onOff(cmdqv), iommu.cmdqvVCMDQs.map { "\(p) has NVIDIA Tegra241 CMDQV (\($0) vCMDQs)" } ?? "\(p) has no CMDQV")
        }
        return out
    }
}
