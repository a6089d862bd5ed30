import VsmmuKernel

// The iommufd core: fd table, contexts and the object-ID space (docs/kernel-interface.md §4.1), DESTROY and the
// reference rules (docs/kernel-interface.md §4.2), IOAS, MAP/MAP_FILE/UNMAP and IOVA_RANGES (§2.2–§2.9).

extension SimulatedKernel {
    // MARK: fd table (one per process, shared by every handle kind)

    /// Lowest free fd number from 3, as open(2) would give (0–2 are stdio).
    func allocateFD() -> Int32 {
        indexes.lowestFreeFD { state.files[$0] != nil }
    }

    /// What `fd` refers to in the calling process (another process's fd number is not
    /// open here).
    func ownFile(_ fd: Int32) -> OpenFile? {
        guard (state.fileOwners[fd] ?? 0) == state.currentProcess else { return nil }
        return state.files[fd]
    }

    /// The context behind an fd used for an iommufd ioctl.
    func context(ofIommufd fd: Int32) throws(Refusal) -> Int {
        guard let file = ownFile(fd) else { throw Refusal(.EBADF, "fd \(fd) is not open") }
        switch file {
        case .iommufd(let cid):
            guard state.contexts[cid] != nil else { throw Refusal(.EBADF, "fd \(fd) is not open") }
            return cid
        case .vfioDevice(let vfio) where vfio.context == nil:
            // docs/kernel-interface.md §3.3: before BIND every ioctl on a cdev returns EINVAL.
            throw Refusal(.EINVAL, "fd \(fd) is an unbound VFIO cdev, not /dev/iommu")
        default:
            throw Refusal(.ENOTTY, "fd \(fd) is not /dev/iommu")
        }
    }

    /// Is anything still holding the context: its /dev/iommu fd, a bound cdev, an
    /// open vEVENTQ fd (docs/kernel-interface.md §4.4)?
    func contextReferenced(_ cid: Int) -> Bool {
        indexes.isContextReferenced(cid)
    }

    /// When the last reference goes the kernel destroys every object of the context
    /// (docs/kernel-interface.md §4.4); its mappings release their pinned memory.
    func releaseContextIfUnreferenced(_ cid: Int) {
        guard state.contexts[cid] != nil, !contextReferenced(cid) else { return }
        removeContext(cid)
        collectGuestMemory()
    }

    /// close(2) of any fd with the semantics of what it refers to. Returns EBADF for an
    /// fd that is not open (close(2) would too; the port's close calls cannot throw).
    func closeFD(_ fd: Int32) -> Errno? {
        guard let file = ownFile(fd) else { return .EBADF }
        setFile(fd, nil)
        switch file {
        case .iommufd(let cid):
            // docs/kernel-interface.md §4.4: closing the iommufd while cdevs or event fds hold it changes nothing.
            releaseContextIfUnreferenced(cid)
        case .vfioDevice(let vfio):
            // docs/kernel-interface.md §3.3: last close of a bound cdev detaches, destroys the device object
            // (tombstoning its vDevice), releases DMA ownership and the iommufd reference.
            if let cid = vfio.context, let devID = vfio.device {
                destroyDeviceObject(cid, devID)
                releaseContextIfUnreferenced(cid)
            }
        case .veventq(let cid, let id):
            // docs/kernel-interface.md §4.4: releases the object's extra reference; the object stays.
            if case .veventq(var queue)? = object(cid, id) {
                queue.fd = nil
                setObject(cid, id, .veventq(queue))
            }
            releaseContextIfUnreferenced(cid)
        case .memfd(let memory):
            updateMemory(memory) { $0.fd = nil }
            collectGuestMemory()
        }
        return nil
    }

    func openIommufdImpl() throws(Refusal) -> Int32 {
        guard hasIommufd else { throw Refusal(.ENOENT, "/dev/iommu does not exist (kernel without IOMMUFD)") }
        let cid = state.nextContext
        state.nextContext += 1
        removeContext(cid)   // (never there: context numbers are not reused)
        state.contexts[cid] = IommufdContext()
        let fd = allocateFD()
        setFile(fd, .iommufd(context: cid))
        return fd
    }

    // MARK: objects

    func object(_ cid: Int, _ id: ObjectID) -> SimObject? { indexes.object(cid, id) }

    func setObject(_ cid: Int, _ id: ObjectID, _ value: SimObject) {
        guard state.contexts[cid] != nil else { return }   // no such context
        let old = state.contexts[cid]?.objects.updateValue(value, forKey: id)
        indexes.objectStored(cid, id, value)
        indexes.objectChanged(from: old, to: value)
    }

    func removeObject(_ cid: Int, _ id: ObjectID) {
        guard let old = state.contexts[cid]?.objects.removeValue(forKey: id) else { return }
        indexes.objectRemoved(cid, id)
        indexes.objectChanged(from: old, to: nil)
    }

    /// The context's objects in ascending ID order (kept in that order by the indexes).
    func objects(_ cid: Int) -> [(id: ObjectID, object: SimObject)] {
        indexes.objects(of: cid)
    }

    /// docs/kernel-interface.md §4.1: one ID space per context, from 1, lowest free first, tombstones never reused.
    func allocateID(_ cid: Int) -> ObjectID {
        indexes.lowestFreeObjectID(cid, tombstones: state.contexts[cid]?.tombstones ?? [])
    }

    func isTombstone(_ cid: Int, _ id: ObjectID) -> Bool { state.contexts[cid]?.tombstones.contains(id) ?? false }

    func deviceObject(_ cid: Int, _ id: ObjectID) -> DeviceObject? {
        if case .device(let d)? = object(cid, id) { return d }
        return nil
    }
    func ioasObject(_ cid: Int, _ id: ObjectID) -> IOASObject? {
        if case .ioas(let o)? = object(cid, id) { return o }
        return nil
    }
    func pagingObject(_ cid: Int, _ id: ObjectID) -> PagingHWPT? {
        if case .hwptPaging(let h)? = object(cid, id) { return h }
        return nil
    }
    func viommuObject(_ cid: Int, _ id: ObjectID) -> VIOMMUObject? {
        if case .viommu(let v)? = object(cid, id) { return v }
        return nil
    }

    /// "No such object" in the words the kernel's behaviour implies (docs/kernel-interface.md §4.5 tombstones
    /// answer ENOENT like unknown IDs).
    func missing(_ cid: Int, _ id: ObjectID, _ what: String) -> String {
        if id == 0 { return "\(what) 0 is never a valid ID" }
        if isTombstone(cid, id) { return "\(what) \(id) is a tombstone (its vDevice was destroyed with its device)" }
        if let other = object(cid, id) { return "\(what) \(id) is a \(other.typeName)" }
        return "\(what) \(id): no such object"
    }

    /// The paging HWPT whose IOAS a HWPT translates through: itself, a nested HWPT's
    /// parent, or the parent of a nested HWPT's vIOMMU.
    func pagingParent(_ cid: Int, of hwptID: ObjectID) -> (id: ObjectID, hwpt: PagingHWPT)? {
        switch object(cid, hwptID) {
        case .hwptPaging(let p)?:
            return (hwptID, p)
        case .hwptNested(let n)?:
            switch n.parent {
            case .paging(let parent):
                return pagingObject(cid, parent).map { (parent, $0) }
            case .viommu(let v):
                guard let viommu = viommuObject(cid, v) else { return nil }
                return pagingObject(cid, viommu.parent).map { (viommu.parent, $0) }
            }
        default:
            return nil
        }
    }

    /// Devices of the context attached to `hwptID`.
    func devicesAttached(_ cid: Int, to hwptID: ObjectID) -> [ObjectID] {
        objects(cid).compactMap { entry in
            if case .device(let d) = entry.object, d.attached == hwptID { return entry.id }
            return nil
        }
    }

    // MARK: IOMMU_DESTROY (docs/kernel-interface.md §2.1, §4.2)

    func destroyImpl(_ fd: Int32, id: ObjectID) throws(Refusal) {
        let cid = try context(ofIommufd: fd)
        // A HW queue's internal access holds its ID: the x86 lab's 7.2 answers EBUSY.
        if id != 0, object(cid, id) == nil, objects(cid).contains(where: { if case .hwQueue(let q) = $0.object { return q.accessID == id }; return false }) {
            throw Refusal(.EBUSY, "ID \(id) is the internal access of a HW queue")
        }
        guard id != 0, let target = object(cid, id) else { throw Refusal(.ENOENT, missing(cid, id, "id")) }
        let all = objects(cid)
        func holders(_ match: (SimObject) -> Bool) -> [ObjectID] { all.filter { match($0.object) }.map(\.id) }
        func busy(_ ids: [ObjectID], _ what: String) throws(Refusal) {
            if !ids.isEmpty {
                throw Refusal(.EBUSY, "\(target.typeName) \(id) is held by \(what) \(ids.map(String.init).joined(separator: ", "))")
            }
        }
        switch target {
        case .device(let device):
            // docs/kernel-interface.md §2.1/§9.13: the VFIO driver (or the selftest object) always holds the device.
            if case .mock(_, let stdev) = device.origin {
                throw Refusal(.EBUSY, "DEVICE \(id) belongs to the selftest object \(stdev): destroy that instead")
            }
            throw Refusal(.EBUSY, "DEVICE \(id) is held by VFIO: close its cdev to unbind it")
        case .ioas:
            try busy(holders { if case .hwptPaging(let h) = $0 { return h.ioas == id }; return false }, "HWPT_PAGING")
            try busy(holders { if case .hwQueue(let q) = $0 { return q.ioas == id }; return false }, "the pinning access of HW_QUEUE")
            removeObject(cid, id)
            collectGuestMemory()
        case .hwptPaging:
            try busy(devicesAttached(cid, to: id), "attached DEVICE")
            try busy(holders { if case .hwptNested(let n) = $0 { return n.parent == .paging(id) }; return false }, "HWPT_NESTED")
            try busy(holders { if case .viommu(let v) = $0 { return v.parent == id }; return false }, "VIOMMU")
            removeObject(cid, id)
        case .hwptNested:
            try busy(devicesAttached(cid, to: id), "attached DEVICE")
            removeObject(cid, id)
        case .viommu:
            try busy(holders { if case .hwptNested(let n) = $0 { return n.parent == .viommu(id) }; return false }, "HWPT_NESTED")
            try busy(holders { if case .vdevice(let v) = $0 { return v.viommu == id }; return false }, "VDEVICE")
            try busy(holders { if case .veventq(let q) = $0 { return q.viommu == id }; return false }, "VEVENTQ")
            try busy(holders { if case .hwQueue(let q) = $0 { return q.viommu == id }; return false }, "HW_QUEUE")
            removeObject(cid, id)
            releaseMmap(cid, of: target)
        case .vdevice:
            removeObject(cid, id)
        case .veventq(let queue):
            // docs/kernel-interface.md §9.8: an open vEVENTQ fd blocks its own DESTROY.
            if let fd = queue.fd { throw Refusal(.EBUSY, "VEVENTQ \(id) is held by its open event fd \(fd): close it first") }
            removeObject(cid, id)
        case .hwQueue(let queue):
            // docs/kernel-interface.md §4.2/§9.14: queue i is held by queue i+1 of the same vIOMMU (destroy descending).
            try busy(holders {
                if case .hwQueue(let q) = $0 { return q.viommu == queue.viommu && q.type == queue.type && q.index == queue.index &+ 1 }
                return false
            }, "the next-index HW_QUEUE")
            removeObject(cid, id)
            if let access = queue.accessID { state.contexts[cid]?.tombstones.remove(access) }
        case .selftest(let selftest):
            // docs/kernel-interface.md §7.2: DESTROY(stdev) detaches, unbinds and deletes the mock device.
            destroyDeviceObject(cid, selftest.device)
            removeObject(cid, id)
        }
    }

    /// The device object goes away (cdev closed, stdev destroyed): detach, tombstone its
    /// vDevice (docs/kernel-interface.md §4.5), free its ID.
    func destroyDeviceObject(_ cid: Int, _ devID: ObjectID) {
        detachDevice(cid, devID)
        for entry in objects(cid) {
            if case .vdevice(let vdev) = entry.object, vdev.device == devID {
                removeObject(cid, entry.id)
                state.contexts[cid]?.tombstones.insert(entry.id)
            }
        }
        removeObject(cid, devID)
    }

    func detachDevice(_ cid: Int, _ devID: ObjectID) {
        guard var device = deviceObject(cid, devID), let old = device.attached else { return }
        device.attached = nil
        setObject(cid, devID, .device(device))
        releaseAutomaticHWPTIfUnused(cid, old)
    }

    /// docs/kernel-interface.md §3.3: automatic HWPTs are destroyed when their last device leaves.
    func releaseAutomaticHWPTIfUnused(_ cid: Int, _ hwptID: ObjectID) {
        guard let hwpt = pagingObject(cid, hwptID), hwpt.automatic, devicesAttached(cid, to: hwptID).isEmpty else { return }
        removeObject(cid, hwptID)
    }

    // MARK: IOMMU_IOAS_ALLOC (docs/kernel-interface.md §2.2)

    func ioasAllocImpl(_ fd: Int32) throws(Refusal) -> ObjectID {
        let cid = try context(ofIommufd: fd)
        let id = allocateID(cid)
        setObject(cid, id, .ioas(IOASObject()))
        return id
    }

    // MARK: reserved IOVA and alignment

    /// The reserved IOVA of an IOAS: outside each member paging HWPT's aperture, plus
    /// the reserved regions (all but direct-relaxable) of every device attached through
    /// a HWPT of this IOAS (docs/kernel-interface.md §2.4, §3.3, §9.17).
    func reservedRanges(_ cid: Int, ioas: ObjectID) -> [IovaRange] {
        var reserved: [IovaRange] = []
        for entry in objects(cid) {
            switch entry.object {
            case .hwptPaging(let hwpt) where hwpt.ioas == ioas:
                reserved += outside(hwpt.aperture)
            case .device(let device):
                if let attached = device.attached, pagingParent(cid, of: attached)?.hwpt.ioas == ioas {
                    reserved += deviceReservedRanges(iommu: device.iommu)
                }
            default:
                break
            }
        }
        return reserved
    }

    func deviceReservedRanges(iommu: String) -> [IovaRange] {
        guard let hostIOMMU = hostIOMMU(iommu) else { return [] }
        return hostIOMMU.reservedRegions
            .filter { $0.type != "direct-relaxable" && $0.size > 0 && $0.start <= UInt64.max - ($0.size - 1) }
            .map { IovaRange(start: $0.start, last: $0.last) }
    }

    func outside(_ aperture: IovaRange) -> [IovaRange] {
        var result: [IovaRange] = []
        if aperture.start > 0 { result.append(IovaRange(start: 0, last: aperture.start - 1)) }
        if aperture.last < UInt64.max { result.append(IovaRange(start: aperture.last + 1, last: UInt64.max)) }
        return result
    }

    func ioasHasHWPT(_ cid: Int, ioas: ObjectID) -> Bool {
        objects(cid).contains { if case .hwptPaging(let h) = $0.object { return h.ioas == ioas }; return false }
    }

    /// IOVA alignment of an IOAS: the largest smallest-page-size of its domains (selftest
    /// mock: 2 KiB, ARM/VT-d: PAGE_SIZE), 1 with none; the x86 lab's 7.2 reports 0x800 for
    /// an IOAS holding only mock domains.
    func ioasAlignment(_ cid: Int, ioas: ObjectID) -> UInt64 {
        // io_pagetable.c iopt_calculate_iova_alignment: PAGE_SIZE with large pages disabled
        var alignment: UInt64 = ioasObject(cid, ioas)?.largePagesDisabled == true ? simPageSize : 1
        for entry in objects(cid) {
            switch entry.object {
            case .hwptPaging(let h) where h.ioas == ioas:
                alignment = max(alignment, hostIOMMU(h.iommu).map(domainPageSize) ?? simPageSize)
            case .hwQueue(let q) where q.ioas == ioas:
                // its internal access (iommufd_access_create_internal) has iova_alignment
                // PAGE_SIZE, which iopt_add_access adds to the IOAS while the queue lives
                alignment = max(alignment, simPageSize)
            default:
                continue
            }
        }
        return alignment
    }

    /// A paging domain's smallest page: the selftest mock's is half a page (MOCK_IO_PAGE_SIZE).
    func domainPageSize(_ iommu: HostIOMMU) -> UInt64 {
        iommu.type == .selftest ? mockPageSize : simPageSize
    }

    // MARK: IOMMU_IOAS_IOVA_RANGES (docs/kernel-interface.md §2.4)

    func ioasIovaRangesImpl(_ fd: Int32, ioas: ObjectID) throws(Refusal) -> (ranges: [IovaRange], alignment: UInt64) {
        let cid = try context(ofIommufd: fd)
        guard let object = ioasObject(cid, ioas) else { throw Refusal(.ENOENT, missing(cid, ioas, "ioas_id")) }
        return iovaRanges(cid, ioas: ioas, largePagesDisabled: object.largePagesDisabled == true)
    }

    /// The holes between `used` over [0, 2^64-1].
    func complement(of used: [IovaRange]) -> [IovaRange] {
        var holes: [IovaRange] = []
        var next: UInt64 = 0
        var exhausted = false
        for range in used.sorted(by: { $0.start < $1.start }) {
            if exhausted { break }
            if range.start > next { holes.append(IovaRange(start: next, last: range.start - 1)) }
            if range.last >= next {
                if range.last == UInt64.max { exhausted = true } else { next = range.last + 1 }
            }
        }
        if !exhausted { holes.append(IovaRange(start: next, last: UInt64.max)) }
        return holes
    }

    // MARK: IOMMU_IOAS_MAP / IOMMU_IOAS_MAP_FILE (docs/kernel-interface.md §2.6, §2.7)

    func ioasMapImpl(_ fd: Int32, ioas ioasID: ObjectID, flags: IOASMapFlags, source: MapSource, length: UInt64, iova: UInt64) throws(Refusal) -> UInt64 {
        let cid = try context(ofIommufd: fd)
        let unknown = flags.subtracting([.fixedIOVA, .writeable, .readable])
        if !unknown.isEmpty { throw Refusal(.EOPNOTSUPP, "unknown flag bits \(hex(unknown.rawValue))") }
        if iova == UInt64.max || length == UInt64.max { throw Refusal(.EOVERFLOW, "iova or length is 2^64-1") }
        if flags.isDisjoint(with: [.writeable, .readable]) { throw Refusal(.EINVAL, "neither READABLE nor WRITEABLE") }
        guard var ioas = ioasObject(cid, ioasID) else { throw Refusal(.ENOENT, missing(cid, ioasID, "ioas_id")) }

        let mappingSource: MappingSource
        let sourceAddress: UInt64   // user VA, or file offset: its page offset must be aligned too
        switch source {
        case .userVA(let va):
            // pages.c iopt_alloc_user_pages: user_va + length must not overflow.
            if va.addingReportingOverflow(length).overflow { throw Refusal(.EOVERFLOW, "user_va + length overflows") }
            try checkPagesLength(length)
            mappingSource = .userVA(va, memory: nil)
            sourceAddress = va
        case .file(let file, let offset):
            // io_pagetable.c iopt_map_file_pages: length 0, then start + length - 1 (a range
            // ending at the last byte of the offset space is fine), then the fd.
            if length == 0 { throw Refusal(.EINVAL, "length 0") }
            if offset.addingReportingOverflow(length - 1).overflow { throw Refusal(.EOVERFLOW, "start + length - 1 overflows") }
            guard let open = ownFile(file.fd) else { throw Refusal(.EBADF, "fd \(file.fd) is not open") }
            try checkPagesLength(length)
            // A file that is not a memfd is referenced like any file; it fails when pinned.
            if case .memfd(let memory) = open { mappingSource = .file(memory: memory, offset: offset) }
            else { mappingSource = .file(memory: nil, offset: offset) }
            sourceAddress = offset
        }

        // io_pagetable.c iopt_alloc_area_pages: the length's alignment, then the IOVA
        // (iopt_check_iova or iopt_alloc_iova), and only then iopt_insert_area checks the
        // source's page offset: EEXIST and EOVERFLOW win over a misaligned offset.
        let alignment = ioasAlignment(cid, ioas: ioasID)
        let fixed = flags.contains(.fixedIOVA)
        if length % alignment != 0 { throw Refusal(.EINVAL, "length is not a multiple of the IOAS alignment \(hex(alignment))") }

        let start: UInt64
        if fixed {
            if iova % alignment != 0 { throw Refusal(.EINVAL, "iova is not a multiple of the IOAS alignment \(hex(alignment))") }
            guard !iova.addingReportingOverflow(length - 1).overflow else { throw Refusal(.EOVERFLOW, "iova + length - 1 overflows") }
            let wanted = IovaRange(start: iova, last: iova + (length - 1))
            if let hit = reservedRanges(cid, ioas: ioasID).first(where: { overlaps($0, wanted) }) {
                throw Refusal(.EINVAL, "[\(hex(wanted.start)), \(hex(wanted.last))] intersects reserved IOVA [\(hex(hit.start)), \(hex(hit.last))]")
            }
            if let hit = ioas.mappings.first(where: { overlaps(IovaRange(start: $0.iova, last: $0.last), wanted) }) {
                throw Refusal(.EEXIST, "[\(hex(wanted.start)), \(hex(wanted.last))] intersects the mapping at \(hex(hit.iova)) (length \(hex(hit.length)))")
            }
            start = iova
        } else {
            start = try allocateIOVA(cid, ioas: ioasID, mappings: ioas.mappings, length: length, address: sourceAddress, alignment: alignment)
        }
        if (sourceAddress % simPageSize) % alignment != 0 {
            throw Refusal(.EINVAL, "the source's page offset \(hex(sourceAddress % simPageSize)) is not a multiple of the IOAS alignment \(hex(alignment))")
        }

        var mapping = Mapping(iova: start, length: length, readable: flags.contains(.readable),
                              writable: flags.contains(.writeable), source: mappingSource, pinned: false,
                              mappedBy: state.currentProcess == 0 ? nil : state.currentProcess,
                              uncharged: memlockLimit(of: state.currentProcess) == nil ? true : nil)
        // docs/kernel-interface.md §2.6: pages are pinned now only when the IOAS already holds a HWPT.
        if ioasHasHWPT(cid, ioas: ioasID) {
            try checkMemlock(cid: cid, process: state.currentProcess, adding: pinnedLength(mapping))
            mapping = try pin(mapping, cid: cid)
        }
        ioas.mappings.append(mapping)
        ioas.mappings.sort { $0.iova < $1.iova }
        setObject(cid, ioasID, .ioas(ioas))
        return start
    }

    /// pages.c iopt_alloc_pages: the length must leave room for rounding up to a page.
    func checkPagesLength(_ length: UInt64) throws(Refusal) {
        if length == 0 || length > UInt64.max - simPageSize { throw Refusal(.EINVAL, "length \(hex(length)) is 0 or above SIZE_MAX - PAGE_SIZE") }
    }

    /// Automatic IOVA placement (io_pagetable.c iopt_alloc_iova): keep the source's
    /// alignment up to 2 MiB, never IOVA 0 (the search runs over [PAGE_SIZE, 2^64-1-PAGE_SIZE]).
    func allocateIOVA(_ cid: Int, ioas: ObjectID, mappings: [Mapping], length: UInt64, address: UInt64, alignment: UInt64) throws(Refusal) -> UInt64 {
        if length >= UInt64.max / 2 { throw Refusal(.EOVERFLOW, "length too large for automatic IOVA") }
        let roundedLength = roundUpPowerOfTwo(length)
        var align = address == 0 ? roundedLength : min(roundedLength, UInt64(1) << UInt64(address.trailingZeroBitCount))
        align = min(align, 2 << 20)
        if align < alignment { throw Refusal(.EINVAL, "the source address alignment is below the IOAS alignment") }
        let pageOffset = address % simPageSize
        let used = reservedRanges(cid, ioas: ioas) + mappings.map { IovaRange(start: $0.iova, last: $0.last) }
        let window = IovaRange(start: simPageSize, last: UInt64.max - simPageSize)
        for hole in complement(of: used) {
            let holeStart = max(hole.start, window.start)
            let holeLast = min(hole.last, window.last)
            guard holeStart <= holeLast else { continue }
            let (aligned, overflow) = alignUp(holeStart, align)
            guard !overflow else { continue }
            let candidate = aligned | pageOffset
            if candidate <= holeLast, holeLast - candidate >= length - 1 { return candidate }
        }
        throw Refusal(.ENOSPC, "no free IOVA hole of \(hex(length)) bytes")
    }

    /// Pin a mapping's pages (docs/kernel-interface.md §2.6): the user VA must be mapped in the process (else
    /// EFAULT); a MAP_FILE source must be a memfd (memfd_pin_folios refuses other files
    /// with EINVAL) and cover the range (beyond the end: EINVAL, memfd_pin_folios in mm/gup.c,
    /// seen on the aarch64 lab's 7.2).
    func pin(_ mapping: Mapping, cid: Int) throws(Refusal) -> Mapping {
        if mapping.pinned { return mapping }
        var pinned = mapping
        pinned.pinned = true
        pinned.charged = mapping.uncharged == true ? nil : memlockAccount(cid: cid, process: mapping.mappedBy ?? 0)
        switch mapping.source {
        case .userVA(let va, _):
            let last = va + (mapping.length - 1)
            // pin_user_pages_fast (mm/gup.c gup_fast_fallback) checks that the page-rounded
            // range does not wrap past 2^64 (EOVERFLOW) before it looks at the mappings; the
            // simulation applies it to the whole range (the kernel pins in batches)
            let pageStart = va - va % simPageSize
            let pages = (va % simPageSize + mapping.length - 1) / simPageSize + 1
            if pageStart.addingReportingOverflow(pages.multipliedReportingOverflow(by: simPageSize).partialValue).overflow
                || pages.multipliedReportingOverflow(by: simPageSize).overflow {
                throw Refusal(.EOVERFLOW, "user VA [\(hex(va)), \(hex(last))] rounded to pages wraps past 2^64")
            }
            guard let memoryID = indexes.liveMemory(covering: va, through: last), let memory = state.memories[memoryID] else {
                throw Refusal(.EFAULT, "user VA [\(hex(va)), \(hex(last))] is not mapped in the process")
            }
            pinned.source = .userVA(va, memory: memory.id)
        case .file(let memoryID, let offset):
            guard let memoryID, let memory = state.memories[memoryID] else {
                throw Refusal(.EINVAL, "the file of this MAP_FILE mapping is not a memfd")
            }
            guard offset <= memory.size, mapping.length <= memory.size - offset else {
                throw Refusal(.EINVAL, "file range [\(hex(offset)), +\(hex(mapping.length))) goes beyond the memfd's size \(hex(memory.size)) (memfd_pin_folios)")
            }
        }
        return pinned
    }

    /// Pin every mapping of an IOAS a HWPT is joining; all or nothing.
    func pinAll(_ cid: Int, ioas ioasID: ObjectID) throws(Refusal) {
        guard var ioas = ioasObject(cid, ioasID) else { return }
        var pinned: [Mapping] = []
        for mapping in ioas.mappings { pinned.append(try pin(mapping, cid: cid)) }
        ioas.mappings = pinned
        setObject(cid, ioasID, .ioas(ioas))
    }

    /// A paging domain joins an IOAS (io_pagetable.c iopt_table_add_domain): existing
    /// mappings must be aligned to its page size and lie inside its aperture
    /// (EADDRINUSE), then they get pinned (EFAULT).
    /// The alignment becomes the larger of the IOAS's and the joining domain's smallest page
    /// (iopt_table_add_domain, iopt_check_iova_alignment): a mock domain joining needs 2 KiB only.
    func checkDomainJoin(_ cid: Int, ioas ioasID: ObjectID, aperture: IovaRange, pageSize: UInt64) throws(Refusal) {
        guard let ioas = ioasObject(cid, ioasID) else { return }
        let alignment = max(ioasAlignment(cid, ioas: ioasID), pageSize)
        if let bad = ioas.mappings.first(where: { $0.iova % alignment != 0 || $0.length % alignment != 0 || pageOffset(of: $0) % alignment != 0 }) {
            throw Refusal(.EADDRINUSE, "the mapping at \(hex(bad.iova)) is not aligned to the domain's page size \(hex(alignment))")
        }
        for range in outside(aperture) {
            if let bad = ioas.mappings.first(where: { overlaps(IovaRange(start: $0.iova, last: $0.last), range) }) {
                throw Refusal(.EADDRINUSE, "the mapping at \(hex(bad.iova)) (length \(hex(bad.length))) lies outside the domain aperture [\(hex(aperture.start)), \(hex(aperture.last))]")
            }
        }
        for mapping in ioas.mappings { _ = try pin(mapping, cid: cid) }
        // RLIMIT_MEMLOCK, per mapping process: what joining would pin that is not pinned yet.
        var adding: [Int: UInt64] = [:]
        for m in ioas.mappings where !m.pinned && m.uncharged != true { adding[m.mappedBy ?? 0, default: 0] &+= pinnedLength(m) }
        for (process, bytes) in adding.sorted(by: { $0.key < $1.key }) { try checkMemlock(cid: cid, process: process, adding: bytes) }
    }

    func pageOffset(of mapping: Mapping) -> UInt64 {
        switch mapping.source {
        case .userVA(let va, _): return va % simPageSize
        case .file(_, let offset): return offset % simPageSize
        }
    }

    // MARK: IOMMU_IOAS_UNMAP (docs/kernel-interface.md §2.9)

    func ioasUnmapImpl(_ fd: Int32, ioas ioasID: ObjectID, iova: UInt64, length: UInt64) throws(Refusal) -> UInt64 {
        let cid = try context(ofIommufd: fd)
        guard ioasObject(cid, ioasID) != nil else { throw Refusal(.ENOENT, missing(cid, ioasID, "ioas_id")) }
        if iova == 0 && length == UInt64.max {
            // "Unmap all" succeeds on an empty IOAS (0 bytes).
            return try unmapRange(cid, ioas: ioasID, range: IovaRange(start: 0, last: UInt64.max), requireSome: false)
        }
        if iova == UInt64.max || length == UInt64.max { throw Refusal(.EOVERFLOW, "iova or length is 2^64-1") }
        if length == 0 { throw Refusal(.EINVAL, "length 0") }
        guard !iova.addingReportingOverflow(length - 1).overflow else { throw Refusal(.EOVERFLOW, "iova + length - 1 overflows") }
        return try unmapRange(cid, ioas: ioasID, range: IovaRange(start: iova, last: iova + (length - 1)), requireSome: true)
    }

    /// io_pagetable.c iopt_unmap_iova_range: mappings are removed in IOVA order; the first
    /// one locked by a HW queue (EBUSY) or cut by the range (ENOENT) stops the walk, and
    /// the mappings removed before it stay removed, as in the kernel.
    func unmapRange(_ cid: Int, ioas ioasID: ObjectID, range: IovaRange, requireSome: Bool) throws(Refusal) -> UInt64 {
        guard var ioas = ioasObject(cid, ioasID) else { return 0 }
        let locks = objects(cid).compactMap { entry -> HWQueueObject? in
            if case .hwQueue(let q) = entry.object, q.ioas == ioasID { return q }
            return nil
        }
        var unmapped: UInt64 = 0
        var failure: Refusal?
        for mapping in ioas.mappings where overlaps(IovaRange(start: mapping.iova, last: mapping.last), range) {
            let span = IovaRange(start: mapping.iova, last: mapping.last)
            if let queue = locks.first(where: { overlaps(IovaRange(start: $0.iova, last: $0.last), span) }) {
                failure = Refusal(.EBUSY, "the mapping at \(hex(mapping.iova)) is locked by the HW queue at \(hex(queue.iova))")
                break
            }
            if mapping.iova < range.start || mapping.last > range.last {
                failure = Refusal(.ENOENT, "the range would split the mapping [\(hex(mapping.iova)), \(hex(mapping.last))]")
                break
            }
            ioas.mappings.removeAll { $0.iova == mapping.iova }
            unmapped += mapping.length
        }
        setObject(cid, ioasID, .ioas(ioas))
        collectGuestMemory()
        if let failure { throw failure }
        if requireSome && unmapped == 0 { throw Refusal(.ENOENT, "nothing is mapped in [\(hex(range.start)), \(hex(range.last))]") }
        return unmapped
    }
}

// MARK: interval helpers

func overlaps(_ a: IovaRange, _ b: IovaRange) -> Bool { a.start <= b.last && b.start <= a.last }

func roundUpPowerOfTwo(_ value: UInt64) -> UInt64 {
    if value <= 1 { return 1 }
    let shift = 64 - (value - 1).leadingZeroBitCount
    return shift >= 64 ? UInt64.max : UInt64(1) << UInt64(shift)
}

/// Rounds up to a power-of-two alignment; reports overflow.
func alignUp(_ value: UInt64, _ alignment: UInt64) -> (UInt64, Bool) {
    guard alignment > 1 else { return (value, false) }
    let (sum, overflow) = value.addingReportingOverflow(alignment - 1)
    return (sum & ~(alignment - 1), overflow)
}

// MARK: IOMMU_OPTION (docs/kernel-interface.md §2.11), in iommufd_option's order

extension SimulatedKernel {
    func iommuOptionImpl(_ fd: Int32, option: UInt32, objectID: ObjectID, set value: UInt64?) throws(Refusal) -> UInt64 {
        let cid = try context(ofIommufd: fd)
        switch option {
        case IommuOption.rlimitMode.rawValue:
            if objectID != 0 { throw Refusal(.EOPNOTSUPP, "RLIMIT_MODE takes object_id 0") }
            guard let value else { return state.contexts[cid]?.accountPerProcess == true ? 1 : 0 }
            guard callerHasCapSysResource else { throw Refusal(.EPERM, "setting RLIMIT_MODE needs CAP_SYS_RESOURCE") }
            guard state.contexts[cid]?.objects.isEmpty ?? true else { throw Refusal(.EBUSY, "the context already holds objects") }
            guard value <= 1 else { throw Refusal(.EINVAL, "RLIMIT_MODE is 0 or 1, not \(value)") }
            state.contexts[cid]?.accountPerProcess = value == 1
            return value
        case IommuOption.hugePages.rawValue:
            // ioas.c iommufd_ioas_option_huge_pages
            guard var ioas = ioasObject(cid, objectID) else { throw Refusal(.ENOENT, "no IOAS \(objectID)") }
            let disabled = ioas.largePagesDisabled == true
            guard let value else { return disabled ? 0 : 1 }
            guard value <= 1 else { throw Refusal(.EINVAL, "HUGE_PAGES is 0 or 1, not \(value)") }
            if value == 0 && !disabled {
                // io_pagetable.c iopt_disable_large_pages: not once a domain has pages mapped,
                // and every area must already be PAGE_SIZE aligned (iopt_check_iova_alignment)
                if ioasHasHWPT(cid, ioas: objectID) && !ioas.mappings.isEmpty {
                    throw Refusal(.EINVAL, "IOAS \(objectID) has a domain with pages mapped")
                }
                let alignment = max(ioasAlignment(cid, ioas: objectID), simPageSize)
                if let bad = ioas.mappings.first(where: { $0.iova % alignment != 0 || $0.length % alignment != 0 || pageOffset(of: $0) % alignment != 0 }) {
                    throw Refusal(.EADDRINUSE, "the mapping at \(hex(bad.iova)) is not aligned to \(hex(alignment))")
                }
            }
            ioas.largePagesDisabled = value == 0 ? true : nil
            setObject(cid, objectID, .ioas(ioas))
            return value
        default:
            throw Refusal(.EOPNOTSUPP, "unknown option_id \(option)")
        }
    }
}
