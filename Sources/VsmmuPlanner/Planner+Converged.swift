import VsmmuKernel
import VsmmuModel

/// The short way through a converged guest: a re-plan of a converged host (the agent's
/// reconcile, every interval) asks this for each guest before the full diff, which builds
/// scopes, names and summaries per resource to find that nothing changes.
extension Planner {
    /// True only where `guestDiff(g, held: h)` plans nothing for the guest: no line, no
    /// step. Every rule of Planner+Guest/Devices/VSMMU that can plan something for a held
    /// guest is one `guard` here; a false answer only costs the full diff. Debug builds
    /// check every true answer against the full diff (`desiredGuest`).
    func isConverged(_ g: DesiredGuest, _ h: GuestHolding) -> Bool {
        // Same resources by name (names are unique per guest, so equal counts and every
        // desired one held mean the same sets): nothing to create or destroy.
        guard h.ioas != nil, !h.uncertain, h.devices.count == g.devices.count, h.memory.count == g.memory.count,
              h.vsmmus.count == g.vsmmus.count, h.stage2.count == g.stage2.count else { return false }
        for s in g.stage2 {
            guard let held = h.stage2[s.iommu], held.nestParent == s.nestParent else { return false }
        }
        for m in g.memory {
            guard let held = h.memory[m.name], held.iova == m.guestAddress, held.length == m.size, held.backing == m.backing,
                  held.mapped else { return false }
        }
        // vSMMUs kept (same physical SMMU and vIOMMU type) with their nested HWPTs and vEVENTQs.
        var vdevices = 0
        for v in g.vsmmus {
            guard let held = h.vsmmus[v.name], held.physical == v.resolved.physical, held.viommuType == v.flavor.viommuType,
                  held.abortHWPT != nil, held.bypassHWPT != nil, held.vdevices.count == v.devices.count else { return false }
            for t in v.flavor.eventQueueTypes where held.eventQueues[t] == nil { return false }
            vdevices += held.vdevices.count
        }
        // Devices kept, bound, owned and attached where the topology puts them. Each device
        // behind a vSMMU has its vDevice there with its vSID; with the count above, no held
        // vDevice is anywhere else.
        var behindVSMMU = 0
        let lost = observed.lostDevices
        for d in g.devices {
            guard let held = h.devices[d.name], held.source == d.source, !(held.devID == 0 && held.cdev != nil) else { return false }
            if !lost.isEmpty, lost.contains("\(g.name)/\(d.name)") { return false }
            if let o = g.owner, let i = held.vfioIndex, observed.owners[i] != o.uid { return false }
            if let v = d.vsmmu {
                guard let hv = h.vsmmus[v], let vd = hv.vdevices[d.name], vd.virtID == d.vsid, held.attached == hv.bypassHWPT else { return false }
                behindVSMMU += 1
            } else {
                guard let s2 = h.stage2[d.iommu]?.hwpt, held.attached == s2 else { return false }
            }
        }
        return behindVSMMU == vdevices
    }

    /// What the full diff plans for one held guest alone: nothing, where `isConverged` says so.
    func fullDiffPlansNothing(_ g: DesiredGuest, _ h: GuestHolding, wanted: Set<PCIAddress>) -> Bool {
        var scratch = Planner(desired: desired, observed: observed)
        scratch.guestDiff(g, held: h, wanted: wanted)
        return scratch.changes.isEmpty && scratch.phases.allSatisfy(\.isEmpty)
    }
}
