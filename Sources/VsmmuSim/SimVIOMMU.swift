import VsmmuKernel

// IOMMU_VIOMMU_ALLOC (docs/kernel-interface.md §2.19, §5.2, §5.7, §7.3), IOMMU_VDEVICE_ALLOC (§2.20),
// IOMMU_VEVENTQ_ALLOC (docs/kernel-interface.md §2.21), IOMMU_HW_QUEUE_ALLOC (§2.22, §5.7, §7.3).

extension SimulatedKernel {
    // MARK: mmap offsets of the iommufd fd

    /// The kernel page size that the iommufd mmap offsets are made of. Tegra241 hosts run
    /// 64 KiB-page kernels, which is why docs/kernel-interface.md gives the VINTF page offset and
    /// length as 65536 (docs/kernel-interface.md §5.7): with a CMDQV IOMMU in the host the simulation uses 64 KiB,
    /// else 4 KiB (the selftest's 2-page region is then 0x2000 long, as in the lab).
    var mmapPageSize: UInt64 { state.iommus.contains { $0.cmdqvVCMDQs != nil } ? 65536 : simPageSize }

    /// iommufd_ctx_alloc_mmap: lowest free range from PAGE_SIZE (the first page is skipped).
    func allocateMmap(_ cid: Int, length: UInt64) -> MmapRegion {
        let regions = (state.contexts[cid]?.mmapRegions ?? []).sorted { $0.offset < $1.offset }
        var offset = mmapPageSize
        for region in regions {
            if offset + length <= region.offset { break }
            offset = max(offset, region.offset + region.length)
        }
        let region = MmapRegion(offset: offset, length: length)
        state.contexts[cid]?.mmapRegions.append(region)
        return region
    }

    func releaseMmap(_ cid: Int, of object: SimObject) {
        guard case .viommu(let viommu) = object, let region = viommu.mmap else { return }
        state.contexts[cid]?.mmapRegions.removeAll { $0 == region }
    }

    // MARK: IOMMU_VIOMMU_ALLOC

    func viommuAllocImpl(_ fd: Int32, type: VIOMMUType, devID: ObjectID, hwptID: ObjectID, data: [UInt8]) throws(Refusal) -> (id: ObjectID, dataOut: [UInt8]) {
        let cid = try context(ofIommufd: fd)
        if type == 0 { throw Refusal(.EOPNOTSUPP, "vIOMMU type 0 (DEFAULT) is rejected") }
        guard let device = deviceObject(cid, devID) else { throw Refusal(.ENOENT, missing(cid, devID, "dev_id")) }
        let iommu = try iommu(of: device)
        // The driver's size query comes before the hwpt_id lookup (lab-arm64 finding 3).
        try checkVIOMMUSupport(iommu, type: type, canwbs: deviceCANWBS(device, iommu))
        guard let parent = pagingObject(cid, hwptID) else {
            throw Refusal(.ENOENT, missing(cid, hwptID, "hwpt_id") + " (a HWPT_PAGING is needed)")
        }
        if !parent.nestParent { throw Refusal(.EINVAL, "HWPT \(hwptID) was not allocated with NEST_PARENT") }

        var dataOut: [UInt8] = []
        var mmap: MmapRegion?
        switch iommu.type {
        case .armSMMUv3:
            // docs/kernel-interface.md §5.2 vIOMMU init: the nest parent must belong to this SMMU.
            if parent.iommu != iommu.name {
                throw Refusal(.EINVAL, "nest parent HWPT \(hwptID) belongs to \(parent.iommu), the device to \(iommu.name)")
            }
            if type == .tegra241CMDQV {
                // docs/kernel-interface.md §5.7: iommu_viommu_tegra241_cmdqv, exactly 16 bytes, out: VINTF page 0.
                if data.count != 16 { throw Refusal(.EINVAL, "the Tegra241 vIOMMU data is exactly 16 bytes, got \(data.count)") }
                let region = allocateMmap(cid, length: 65536)
                mmap = region
                dataOut = le64Bytes(region.offset) + le64Bytes(region.length)
            }
            // Type 1: driver data is ignored.
        case .selftest:
            if !data.isEmpty {
                // iommu_viommu_selftest: in_data, out_data (loopback), out_mmap_offset/length.
                var cfg = try copyDriverStruct(data, minimum: 8, size: 24, what: "iommu_viommu_selftest")
                let region = allocateMmap(cid, length: 2 * mmapPageSize)
                mmap = region
                cfg.replaceSubrange(4..<8, with: cfg[0..<4])
                cfg.replaceSubrange(8..<16, with: le64Bytes(region.offset))
                cfg.replaceSubrange(16..<24, with: le64Bytes(region.length))
                dataOut = Array(cfg.prefix(data.count))
            }
        case .amdVi, .intelVTd:
            break
        }
        let id = allocateID(cid)
        setObject(cid, id, .viommu(VIOMMUObject(type: type, parent: hwptID, iommu: iommu.name, mmap: mmap)))
        return (id, dataOut)
    }

    /// The driver's get_viommu_size: 0 (→ EOPNOTSUPP) when it cannot make this type here.
    private func checkVIOMMUSupport(_ iommu: HostIOMMU, type: VIOMMUType, canwbs: Bool) throws(Refusal) {
        switch iommu.type {
        case .armSMMUv3:
            // docs/kernel-interface.md §5.2: nesting, and CANWBS or S2FWB (`coherent`); then the type.
            if !iommu.nesting { throw Refusal(.EOPNOTSUPP, "\(iommu.name) has no nesting feature") }
            // Only dev_id is asked: its root complex's CANWBS (the IOMMU's `coherent` when
            // the host description has no per-device fact).
            if !canwbs { throw Refusal(.EOPNOTSUPP, "\(iommu.name): the device's root complex is not CANWBS and the SMMU has no S2FWB") }
            if type == .armSMMUv3 { return }
            if type == .tegra241CMDQV, iommu.cmdqvVCMDQs != nil { return }
            throw Refusal(.EOPNOTSUPP, "\(iommu.name) does not offer vIOMMU type \(hex(type.rawValue))")
        case .intelVTd:
            throw Refusal(.EOPNOTSUPP, "Intel VT-d has no vIOMMU (nest on the parent HWPT instead)")
        case .amdVi:
            // docs/kernel-interface.md §9.29: AMD accepts any non-zero type. Nesting support is assumed to be a
            // precondition (docs/kernel-interface.md names GT/GIOSup for nest parents).
            if !iommu.nesting { throw Refusal(.EOPNOTSUPP, "\(iommu.name) has no nesting support") }
        case .selftest:
            if type != .selftest { throw Refusal(.EOPNOTSUPP, "the mock offers only vIOMMU type SELFTEST") }
        }
    }

    // MARK: IOMMU_VDEVICE_ALLOC

    func vdeviceAllocImpl(_ fd: Int32, viommuID: ObjectID, devID: ObjectID, virtID: UInt64) throws(Refusal) -> ObjectID {
        let cid = try context(ofIommufd: fd)
        guard let viommu = viommuObject(cid, viommuID) else { throw Refusal(.ENOENT, missing(cid, viommuID, "viommu_id")) }
        guard let device = deviceObject(cid, devID) else { throw Refusal(.ENOENT, missing(cid, devID, "dev_id")) }
        if device.iommu != viommu.iommu {
            throw Refusal(.EINVAL, "the device is behind \(device.iommu), vIOMMU \(viommuID) behind \(viommu.iommu)")
        }
        var onThisVIOMMU = 0
        for entry in objects(cid) {
            guard case .vdevice(let vdev) = entry.object else { continue }
            // docs/kernel-interface.md §2.20/§4.5: one vDevice per device across all vIOMMUs.
            if vdev.device == devID { throw Refusal(.EEXIST, "device \(devID) already has vDevice \(entry.id)") }
        }
        for entry in objects(cid) {
            guard case .vdevice(let vdev) = entry.object, vdev.viommu == viommuID else { continue }
            onThisVIOMMU += 1
            // docs/kernel-interface.md §4.5: virt_id unique per vIOMMU.
            if vdev.virtID == virtID { throw Refusal(.EEXIST, "virt_id \(hex(virtID)) is already vDevice \(entry.id) on vIOMMU \(viommuID)") }
        }
        if viommu.type == .tegra241CMDQV {
            // docs/kernel-interface.md §5.7: 20-bit vSIDs; one SID-replacement slot per vDevice.
            if virtID > 0xFFFFF { throw Refusal(.EINVAL, "Tegra241 virt_id \(hex(virtID)) exceeds 0xFFFFF") }
            if onThisVIOMMU >= 1 << Int(tegraLog2VSIDs) {
                throw Refusal(.ENOSPC, "all \(1 << Int(tegraLog2VSIDs)) SID slots of the VINTF are in use")
            }
        }
        let id = allocateID(cid)
        setObject(cid, id, .vdevice(VDeviceObject(viommu: viommuID, device: devID, virtID: virtID)))
        return id
    }

    // MARK: IOMMU_VEVENTQ_ALLOC

    func veventqAllocImpl(_ fd: Int32, viommuID: ObjectID, type: VEventQType, depth: UInt32) throws(Refusal) -> (id: ObjectID, eventFD: KernelFile) {
        let cid = try context(ofIommufd: fd)
        if type == 0 { throw Refusal(.EOPNOTSUPP, "vEVENTQ type 0 is rejected") }
        if depth == 0 || depth > VEventQType.maxDepth { throw Refusal(.EINVAL, "depth \(depth) is not in 1...\(VEventQType.maxDepth)") }
        guard viommuObject(cid, viommuID) != nil else { throw Refusal(.ENOENT, missing(cid, viommuID, "viommu_id")) }
        // docs/kernel-interface.md §2.21: the type is not checked against the vIOMMU's; one per type per vIOMMU.
        for entry in objects(cid) {
            if case .veventq(let q) = entry.object, q.viommu == viommuID, q.type == type {
                throw Refusal(.EEXIST, "vIOMMU \(viommuID) already has vEVENTQ \(entry.id) of type \(hex(type.rawValue))")
            }
        }
        let id = allocateID(cid)
        let eventFD = allocateFD()
        setFile(eventFD, .veventq(context: cid, object: id))
        setObject(cid, id, .veventq(VEventQObject(viommu: viommuID, type: type, depth: depth, fd: eventFD)))
        return (id, KernelFile(fd: eventFD))
    }

    // MARK: IOMMU_HW_QUEUE_ALLOC

    func hwQueueAllocImpl(_ fd: Int32, viommuID: ObjectID, type: HWQueueType, index: UInt32, iova: UInt64, length: UInt64) throws(Refusal) -> ObjectID {
        let cid = try context(ofIommufd: fd)
        if type == 0 { throw Refusal(.EOPNOTSUPP, "HW queue type 0 is rejected") }
        if length == 0 { throw Refusal(.EINVAL, "length 0") }
        if iova.addingReportingOverflow(length - 1).overflow { throw Refusal(.EOVERFLOW, "iova + length - 1 overflows") }
        guard let viommu = viommuObject(cid, viommuID) else { throw Refusal(.ENOENT, missing(cid, viommuID, "viommu_id")) }
        let iommu = hostIOMMU(viommu.iommu)
        let maxIndex: UInt32
        switch (viommu.type, iommu?.type) {
        case (.tegra241CMDQV, .armSMMUv3?) where type == .tegra241CMDQV:
            maxIndex = UInt32(1) << UInt32(iommu.map(log2VCMDQs) ?? 0)
        case (.selftest, .selftest?) where type == .selftest:
            maxIndex = 2
        default:
            throw Refusal(.EOPNOTSUPP, "vIOMMU \(viommuID) (type \(hex(viommu.type.rawValue))) has no HW queues of type \(hex(type.rawValue))")
        }
        let last = iova + (length - 1)
        // The page count, (offset in the page + length) rounded up, must not overflow
        // (iommufd_hw_queue_alloc_phys): a size, not an address, so a queue in the last
        // page of the IOVA space passes.
        let (sum, overflow) = (iova % simPageSize).addingReportingOverflow(length)
        if overflow || sum > UInt64.max - (simPageSize - 1) { throw Refusal(.ERANGE, "the queue's page count overflows") }
        guard let parent = pagingObject(cid, viommu.parent), let ioas = ioasObject(cid, parent.ioas) else {
            throw Refusal(.ENOENT, "the vIOMMU's parent HWPT has no IOAS")
        }
        // docs/kernel-interface.md §2.22: the whole range must be mapped in the parent's IOAS, readable.
        // device.c iommufd_access_pin_pages walks the contiguous areas from the start and
        // checks each one's protection as it reaches it (EPERM), so an unreadable area before
        // a hole is EPERM; ENOENT only when the walk stops short of the range's end.
        let covering = ioas.mappings.filter { overlaps(IovaRange(start: $0.iova, last: $0.last), IovaRange(start: iova, last: last)) }
            .sorted { $0.iova < $1.iova }
        var next = iova
        var reachedEnd = false
        for mapping in covering {
            if mapping.iova > next { break }
            if !mapping.readable { throw Refusal(.EPERM, "the queue memory at \(hex(mapping.iova)) is mapped without READABLE") }
            if mapping.last >= last { reachedEnd = true; break }
            next = mapping.last + 1
        }
        guard reachedEnd else { throw Refusal(.ENOENT, "[\(hex(iova)), \(hex(last))] is not fully mapped in IOAS \(parent.ioas)") }
        // … and physically contiguous: the simulation calls a range contiguous when it lies
        // in one mapping and inside one backing page (4 KiB, or one huge page).
        guard covering.count == 1, let mapping = covering.first, let placement = backingOffset(of: mapping, iova: iova) else {
            throw Refusal(.EFAULT, "the queue memory spans more than one mapping: not physically contiguous")
        }
        if placement.offset / placement.pageSize != (placement.offset + (length - 1)) / placement.pageSize {
            throw Refusal(.EFAULT, "the queue memory crosses a \(hex(placement.pageSize))-byte backing page: not physically contiguous")
        }

        // Driver checks: index order (queue i needs i-1), uniqueness, Tegra size/alignment.
        let queues = objects(cid).compactMap { entry -> HWQueueObject? in
            if case .hwQueue(let q) = entry.object, q.viommu == viommuID, q.type == type { return q }
            return nil
        }
        if index >= maxIndex { throw Refusal(.EINVAL, "index \(index) is beyond the \(maxIndex) queues of this vIOMMU") }
        if queues.contains(where: { $0.index == index }) { throw Refusal(.EEXIST, "queue index \(index) is already allocated") }
        if index > 0, !queues.contains(where: { $0.index == index - 1 }) {
            throw Refusal(.EIO, "queue index \(index - 1) must be allocated before \(index)")
        }
        if type == .tegra241CMDQV {
            let maxLength: UInt64 = 1 << (19 + 4)   // 2^(IDR1.CMDQS + 4), CMDQS as reported by GET_HW_INFO
            if length & (length - 1) != 0 || length < 32 || length > maxLength {
                throw Refusal(.EINVAL, "a vCMDQ length must be a power of two in 32...\(hex(maxLength)), got \(hex(length))")
            }
            // The host physical address is aligned like the offset inside the backing page.
            if placement.offset % length != 0 { throw Refusal(.EINVAL, "the queue's physical address is not aligned to its length") }
        }
        let id = allocateID(cid)
        var queue = HWQueueObject(viommu: viommuID, type: type, index: index, iova: iova, length: length, ioas: parent.ioas)
        setObject(cid, id, .hwQueue(queue))
        // The core pins the queue's pages through an internal access object, which takes
        // the next ID (invisible: DESTROY of it is ENOENT) until the queue goes; the x86
        // lab's 7.2 gives the next object after queue 7 the ID 9.
        let access = allocateID(cid)
        state.contexts[cid]?.tombstones.insert(access)
        queue.accessID = access
        setObject(cid, id, .hwQueue(queue))
        return id
    }

    /// Where an IOVA of a mapping lands in its backing memory, and that memory's page size.
    private func backingOffset(of mapping: Mapping, iova: UInt64) -> (offset: UInt64, pageSize: UInt64)? {
        let delta = iova - mapping.iova
        switch mapping.source {
        case .userVA(let va, let memoryID):
            let memory = memoryID.flatMap { state.memories[$0] }
                ?? state.memories.values.first { va >= $0.userVA && va <= $0.lastVA }
            guard let memory else { return nil }
            return (va - memory.userVA + delta, memory.pageSize)
        case .file(let memoryID, let offset):
            guard let memory = memoryID.flatMap({ state.memories[$0] }) else { return nil }
            return (offset + delta, memory.pageSize)
        }
    }
}
