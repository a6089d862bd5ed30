import VsmmuKernel

// The reads an observation makes on every reconcile (sysfs devices, driver_override, cdev
// owners, each context's IOVA ranges as its liveness probe), kept cheap: at 10,000 devices
// they are 20,000 calls per observation.

extension SimulatedKernel {
    /// IOMMU_IOAS_IOVA_RANGES in one pass over the context's objects, with no lookups
    /// (no ordered copy of them, no object fetched twice): the reserved ranges (outside each
    /// domain's aperture, each attached device's reserved regions) and the alignment, as
    /// `reservedRanges` and `ioasAlignment` give them.
    func iovaRanges(_ cid: Int, ioas: ObjectID, largePagesDisabled: Bool) -> (ranges: [IovaRange], alignment: UInt64) {
        guard let objects = state.contexts[cid]?.objects else { return (complement(of: []), 1) }
        var reserved: [IovaRange] = []
        var alignment: UInt64 = largePagesDisabled ? simPageSize : 1
        var paging: [ObjectID] = []                                    // paging HWPTs on `ioas`
        var nested: [(id: ObjectID, parent: NestedParent)] = []
        var viommus: [(id: ObjectID, parent: ObjectID)] = []
        var attached: [(hwpt: ObjectID, iommu: String)] = []
        for (id, object) in objects {
            switch object {
            case .hwptPaging(let hwpt):
                guard hwpt.ioas == ioas else { continue }
                paging.append(id)
                reserved += outside(hwpt.aperture)
                alignment = max(alignment, hostIOMMU(hwpt.iommu).map(domainPageSize) ?? simPageSize)
            case .hwQueue(let q) where q.ioas == ioas:
                alignment = max(alignment, simPageSize)
            case .hwptNested(let n):
                nested.append((id, n.parent))
            case .viommu(let v):
                viommus.append((id, v.parent))
            case .device(let device):
                if let hwpt = device.attached { attached.append((hwpt, device.iommu)) }
            default:
                continue
            }
        }
        // A device's domain is on `ioas` when its HWPT is a paging one there, or a nested one
        // whose parent (directly or through its vIOMMU) is (pagingParent's rule).
        func onIOAS(_ hwpt: ObjectID) -> Bool {
            if paging.contains(hwpt) { return true }
            guard let n = nested.first(where: { $0.id == hwpt }) else { return false }
            switch n.parent {
            case .paging(let p): return paging.contains(p)
            case .viommu(let v): return viommus.first { $0.id == v }.map { paging.contains($0.parent) } ?? false
            }
        }
        var iommus: [String] = []   // each IOMMU's regions once
        for a in attached where !iommus.contains(a.iommu) && onIOAS(a.hwpt) {
            iommus.append(a.iommu)
            // deviceReservedRanges' regions, appended in place (no filtered copies).
            guard let hostIOMMU = hostIOMMU(a.iommu) else { continue }
            for r in hostIOMMU.reservedRegions where r.type != "direct-relaxable" && r.size > 0 && r.start <= UInt64.max - (r.size - 1) {
                reserved.append(IovaRange(start: r.start, last: r.last))
            }
        }
        return (complement(of: reserved), alignment)
    }
}
