import VsmmuKernel

// Guest RAM: memfd_create for memfd/hugetlbfs (not mapped in this process: it goes into
// the IOAS by IOAS_MAP_FILE and into the VMM by its own mmap), mmap(MAP_ANONYMOUS) for
// anonymous, and munmap/close on release. IOAS mappings keep the memory alive (pinned pages).

/// Where the simulated process's guest-memory mappings start (a typical mmap area).
let guestVABase: UInt64 = 0x7F00_0000_0000
/// The end of a 47-bit user address space.
let userVALast: UInt64 = 0x7FFF_FFFF_FFFF

extension SimulatedKernel {
    func createGuestMemoryImpl(name: String, size: UInt64, backing: GuestMemoryBacking, hugepageSize: UInt64?) throws(Refusal) -> GuestMemory {
        if backing != .anonymous && name.utf8.count > 249 { throw Refusal(.EINVAL, "memfd names are at most 249 bytes") }
        if size == 0 { throw Refusal(.EINVAL, "size 0") }
        var pageSize = simPageSize
        if backing == .hugetlbfs { pageSize = hugepageSize ?? (2 << 20) }
        else if let hugepageSize { pageSize = hugepageSize }   // MFD_HUGETLB / MAP_HUGETLB
        if pageSize != simPageSize {
            // Huge page sizes are encoded as log2 in MFD_HUGE_*; which ones exist depends on
            // the CPU. The simulation accepts powers of two from 64 KiB to 16 GiB.
            guard pageSize >= 64 << 10, pageSize <= 16 << 30, pageSize & (pageSize - 1) == 0 else {
                throw Refusal(.EINVAL, "huge page size \(hex(pageSize)) is not supported")
            }
        }
        // Simplification: the size must be whole pages (the kernel would round an mmap up).
        if size % pageSize != 0 { throw Refusal(.EINVAL, "size \(hex(size)) is not a multiple of the page size \(hex(pageSize))") }
        // Only anonymous memory lives in this process's address space.
        let userVA: UInt64 = backing == .anonymous ? try placeGuestMemory(size: size, alignment: max(pageSize, 2 << 20)) : 0
        let id = state.nextMemory
        state.nextMemory += 1
        var fd: Int32?
        if backing != .anonymous {
            let memfd = allocateFD()
            setFile(memfd, .memfd(memory: id))
            fd = memfd
        }
        setMemory(id, GuestMemoryRecord(id: id, name: name, size: size, backing: backing, pageSize: pageSize,
                                         userVA: userVA, vaMapped: backing == .anonymous, fd: fd))
        return GuestMemory(file: fd.map { KernelFile(fd: $0) }, userVA: userVA, size: size)
    }

    /// First fit above `guestVABase` among the live mappings, keeping a guard page
    /// between regions, aligned to the huge page size (at least 2 MiB).
    private func placeGuestMemory(size: UInt64, alignment: UInt64) throws(Refusal) -> UInt64 {
        guard size <= userVALast - guestVABase else { throw Refusal(.ENOMEM, "no room for \(hex(size)) bytes in the address space") }
        let live = indexes.liveRegions   // the mapped memories, by address
        var candidate = alignUp(guestVABase, alignment).0
        for region in live {
            // The region blocks [start - guard page, last + guard page].
            let blockedStart = region.userVA - min(region.userVA, simPageSize)
            let blockedLast = region.lastVA + simPageSize
            if candidate + (size - 1) < blockedStart { break }
            if candidate <= blockedLast { candidate = alignUp(blockedLast + 1, alignment).0 }
        }
        guard candidate <= userVALast, userVALast - candidate >= size - 1 else {
            throw Refusal(.ENOMEM, "no room for \(hex(size)) bytes in the address space")
        }
        return candidate
    }

    /// munmap of the region and close of its memfd. Pinned pages stay with their mappings.
    func releaseGuestMemoryImpl(_ memory: GuestMemory) -> Errno? {
        if let file = memory.file {
            guard case .memfd(let id)? = ownFile(file.fd) else { return .EBADF }
            _ = closeFD(file.fd)
            updateMemory(id) { $0.vaMapped = false }
            collectGuestMemory()
            return nil
        }
        guard let id = indexes.liveMemory(startingAt: memory.userVA), let record = state.memories[id] else { return .EINVAL }
        updateMemory(record.id) { $0.vaMapped = false }
        if let file = memory.file, state.files[file.fd] == .memfd(memory: record.id) { _ = closeFD(file.fd) }
        collectGuestMemory()
        return nil
    }

    /// Forget memory nothing holds any more: not mapped, memfd closed, no IOAS mapping.
    /// Only the memories that may have been let go since the last collection are looked
    /// at (`SimIndexes.collectable`, a superset of the collectable ones).
    func collectGuestMemory() {
        guard !indexes.collectable.isEmpty else { return }
        let candidates = indexes.collectable
        indexes.collectable = []
        for id in candidates {
            guard let record = state.memories[id] else { continue }
            if !record.vaMapped && record.fd == nil && !indexes.isMemoryReferenced(id) { setMemory(id, nil) }
        }
    }

    /// The calling process exits: its fds close. The holder (process 0) also loses its
    /// anonymous guest memory and starts a new generation; another process is forgotten.
    func processExitImpl() {
        let me = state.currentProcess
        for fd in state.files.keys.sorted() where (state.fileOwners[fd] ?? 0) == me { _ = closeFD(fd) }
        if me == 0 {
            state.processGeneration += 1
            for id in state.memories.keys.sorted() { updateMemory(id) { $0.vaMapped = false } }
        } else {
            state.processes[me] = nil
        }
        collectGuestMemory()
    }
}
