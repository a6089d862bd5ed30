import Testing
import VsmmuKernel
@testable import VsmmuSim

// IOAS mappings, reserved IOVA and IOVA ranges (docs/kernel-interface.md §2.4–§2.9, §9.15–§9.18).

@Suite struct IOASTests {
    @Test func msiWindowAfterAttachMakesMapEINVAL() throws {
        let k = makeKernel()
        let a = try Bound(k, Fixture.gpuVfio)
        let s2 = try a.s2()
        let memory = try k.createGuestMemory(name: "ram", size: 0x20_0000, backing: .memfd, hugepageSize: nil)
        let file = try #require(memory.file)   // memfd memory goes into the IOAS by MAP_FILE
        // The S2 alone: everything below 2^48, PAGE_SIZE alignment.
        var ranges = try k.ioasIovaRanges(a.fd, ioas: a.ioas)
        #expect(ranges.alignment == 4096)
        #expect(ranges.ranges == [IovaRange(start: 0, last: (1 << 48) - 1)])
        _ = try k.attach(a.dev, ptID: s2)
        ranges = try k.ioasIovaRanges(a.fd, ioas: a.ioas)
        #expect(ranges.ranges == [IovaRange(start: 0, last: 0x7FF_FFFF), IovaRange(start: 0x810_0000, last: (1 << 48) - 1)])
        #expect(errnoOf { try k.ioasMap(a.fd, ioas: a.ioas, flags: rw, source: .file(file, offset: 0), length: 0x20_0000, iova: 0x7F0_0000) } == .EINVAL)
        #expect(try k.ioasMap(a.fd, ioas: a.ioas, flags: rw, source: .file(file, offset: 0), length: 0x10_0000, iova: 0x810_0000) == 0x810_0000)
        // Detaching gives the window back.
        try k.detach(a.dev)
        #expect(try k.ioasIovaRanges(a.fd, ioas: a.ioas).ranges.count == 1)
    }

    @Test func iovaRangesOfAnEmptyIOAS() throws {
        let k = makeKernel()
        let fd = try k.openIommufd()
        let ioas = try k.ioasAlloc(fd)
        let ranges = try k.ioasIovaRanges(fd, ioas: ioas)
        #expect(ranges.ranges == [IovaRange(start: 0, last: UInt64.max)])
        #expect(ranges.alignment == 1)
        #expect(errnoOf { try k.ioasIovaRanges(fd, ioas: 9) } == .ENOENT)
    }

    @Test func mapOverTheMSIWindowThenAttachIsEADDRINUSE() throws {
        let k = makeKernel()
        let a = try Bound(k, Fixture.gpuVfio)
        let memory = try k.createGuestMemory(name: "ram", size: 0x40_0000, backing: .anonymous, hugepageSize: nil)
        _ = try k.ioasMap(a.fd, ioas: a.ioas, flags: rw, source: .userVA(memory.userVA), length: memory.size, iova: 0x7E0_0000)
        let s2 = try a.s2()    // the S2 itself does not reserve the window
        #expect(errnoOf { try k.attach(a.dev, ptID: s2) } == .EADDRINUSE)
        #expect(errnoOf { try k.attach(a.dev, ptID: a.ioas) } == .EADDRINUSE)
        // Nothing was left behind by the failed automatic attach.
        #expect(k.objects(1).count == 3)
        _ = try k.ioasUnmap(a.fd, ioas: a.ioas, iova: 0x7E0_0000, length: memory.size)
        #expect(try k.attach(a.dev, ptID: s2) == s2)
    }

    @Test func theS2ApertureEndsAt2PowOAS() throws {
        let k = makeKernel()
        let b = try Bound(k, Fixture.nicB)   // oas 44
        let memory = try k.createGuestMemory(name: "ram", size: 0x20_0000, backing: .memfd, hugepageSize: nil)
        let file = try #require(memory.file)   // memfd memory goes into the IOAS by MAP_FILE
        let top: UInt64 = 1 << 44
        // Mapped before the S2 exists: the S2 cannot join (EADDRINUSE).
        _ = try k.ioasMap(b.fd, ioas: b.ioas, flags: rw, source: .file(file, offset: 0), length: 0x20_0000, iova: top - 0x10_0000)
        #expect(errnoOf { try b.s2() } == .EADDRINUSE)
        _ = try k.ioasUnmap(b.fd, ioas: b.ioas, iova: 0, length: UInt64.max)
        _ = try b.s2()
        #expect(errnoOf { try k.ioasMap(b.fd, ioas: b.ioas, flags: rw, source: .file(file, offset: 0), length: 0x20_0000, iova: top - 0x10_0000) } == .EINVAL)
        #expect(try k.ioasMap(b.fd, ioas: b.ioas, flags: rw, source: .file(file, offset: 0), length: 0x20_0000, iova: top - 0x20_0000) == top - 0x20_0000)
    }

    @Test func mapArgumentChecksInKernelOrder() throws {
        let k = makeKernel()
        let a = try Bound(k, Fixture.gpuVfio)
        _ = try a.s2()
        // IOMMU_IOAS_MAP needs memory with a user VA (anonymous); MAP_FILE below uses a memfd.
        let memory = try k.createGuestMemory(name: "ram", size: 0x40_0000, backing: .anonymous, hugepageSize: nil)
        let memfdMemory = try k.createGuestMemory(name: "ramfd", size: 0x40_0000, backing: .memfd, hugepageSize: nil)
        let va = memory.userVA
        func map(_ flags: IOASMapFlags = rw, _ source: MapSource? = nil, length: UInt64 = 0x10_0000, iova: UInt64 = 0x4000_0000, ioas: ObjectID? = nil) -> Errno? {
            errnoOf { try k.ioasMap(a.fd, ioas: ioas ?? a.ioas, flags: flags, source: source ?? .userVA(va), length: length, iova: iova) }
        }
        #expect(map(rw | 0x8) == .EOPNOTSUPP)
        #expect(map(length: UInt64.max) == .EOVERFLOW)
        #expect(map(IOASMapFlags.fixedIOVA) == .EINVAL)
        #expect(map(ioas: 42) == .ENOENT)
        #expect(map(rw, .userVA(UInt64.max - 0x1000)) == .EOVERFLOW)
        #expect(map(length: 0) == .EINVAL)
        #expect(map(length: 0x800) == .EINVAL)                      // not 4 KiB aligned
        #expect(map(rw, .userVA(va + 0x10)) == .EINVAL)                 // page offset not aligned
        #expect(map(rw, .userVA(0x1000_0000)) == .EFAULT)               // not mapped in the process
        #expect(map() == nil)
        #expect(map(iova: 0x4008_0000) == .EEXIST)                  // overlaps the first mapping
        // MAP_FILE: a closed fd is EBADF; the memfd works.
        guard let file = memfdMemory.file else { Issue.record("no memfd"); return }
        #expect(map(rw, .file(KernelFile(fd: 99), offset: 0), iova: 0x8000_0000) == .EBADF)
        #expect(map(rw, .file(file, offset: 0x30_0000), length: 0x20_0000, iova: 0x8000_0000) == .EINVAL)   // beyond the memfd (memfd_pin_folios)
        #expect(map(rw, .file(file, offset: 0x10_0000), iova: 0x8000_0000) == nil)
        // Automatic IOVA: never 0, aligned like the source up to 2 MiB.
        let auto = try k.ioasMap(a.fd, ioas: a.ioas, flags: IOASMapFlags.readable, source: .userVA(va + 0x20_0000), length: 0x10_0000, iova: 0)
        #expect(auto == 0x10_0000)
    }

    @Test func pinningIsLazyUntilAHWPTJoins() throws {
        let k = makeKernel()
        let a = try Bound(k, Fixture.gpuVfio)
        // No HWPT in the IOAS: an unmapped VA maps (nothing is pinned yet) …
        _ = try k.ioasMap(a.fd, ioas: a.ioas, flags: rw, source: .userVA(0x5555_0000_0000), length: 0x10_0000, iova: 0x4000_0000)
        // … and the pin fails when the S2 joins.
        #expect(errnoOf { try a.s2() } == .EFAULT)
        _ = try k.ioasUnmap(a.fd, ioas: a.ioas, iova: 0x4000_0000, length: 0x10_0000)
        _ = try a.s2()
    }

    @Test func mapFileOfANonMemfdFailsWhenPinned() throws {
        let k = makeKernel()
        let a = try Bound(k, Fixture.gpuVfio)
        // Any open file is accepted by MAP_FILE itself; memfd_pin_folios refuses it later.
        let notMemfd = KernelFile(fd: a.fd.fd)
        _ = try k.ioasMap(a.fd, ioas: a.ioas, flags: rw, source: .file(notMemfd, offset: 0), length: 0x1000, iova: 0x1000)
        #expect(errnoOf { try a.s2() } == .EINVAL)
        _ = try k.ioasUnmap(a.fd, ioas: a.ioas, iova: 0, length: UInt64.max)
        _ = try a.s2()
        #expect(errnoOf { try k.ioasMap(a.fd, ioas: a.ioas, flags: rw, source: .file(notMemfd, offset: 0), length: 0x1000, iova: 0x1000) } == .EINVAL)
        #expect(errnoOf { try k.createGuestMemory(name: "x", size: 0x1000, backing: .memfd, hugepageSize: 0) } == .EINVAL)
        #expect(errnoOf { try k.createGuestMemory(name: "x", size: 3 << 20, backing: .hugetlbfs, hugepageSize: 3 << 20) } == .EINVAL)
    }

    @Test func unmapNeedsWholeMappings() throws {
        let k = makeKernel()
        let a = try Bound(k, Fixture.gpuVfio)
        let memory = try k.createGuestMemory(name: "ram", size: 0x40_0000, backing: .anonymous, hugepageSize: nil)
        _ = try k.ioasMap(a.fd, ioas: a.ioas, flags: rw, source: .userVA(memory.userVA), length: 0x20_0000, iova: 0x4000_0000)
        _ = try k.ioasMap(a.fd, ioas: a.ioas, flags: rw, source: .userVA(memory.userVA + 0x20_0000), length: 0x20_0000, iova: 0x4020_0000)
        #expect(errnoOf { try k.ioasUnmap(a.fd, ioas: a.ioas, iova: 0x4000_0000, length: 0x10_0000) } == .ENOENT)   // splits
        #expect(errnoOf { try k.ioasUnmap(a.fd, ioas: a.ioas, iova: 0x9000_0000, length: 0x10_0000) } == .ENOENT)   // nothing there
        #expect(errnoOf { try k.ioasUnmap(a.fd, ioas: a.ioas, iova: 0x4000_0000, length: 0) } == .EINVAL)
        #expect(errnoOf { try k.ioasUnmap(a.fd, ioas: a.ioas, iova: UInt64.max, length: 1) } == .EOVERFLOW)
        #expect(errnoOf { try k.ioasUnmap(a.fd, ioas: 9, iova: 0, length: UInt64.max) } == .ENOENT)
        // A range that covers the first mapping and cuts the second: the kernel removes
        // the first, then fails on the second.
        #expect(errnoOf { try k.ioasUnmap(a.fd, ioas: a.ioas, iova: 0x4000_0000, length: 0x30_0000) } == .ENOENT)
        guard let ioas = k.ioasObject(1, a.ioas) else { Issue.record("IOAS gone"); return }
        #expect(ioas.mappings.map(\.iova) == [0x4020_0000])
        #expect(try k.ioasUnmap(a.fd, ioas: a.ioas, iova: 0, length: UInt64.max) == 0x20_0000)
        #expect(try k.ioasUnmap(a.fd, ioas: a.ioas, iova: 0, length: UInt64.max) == 0)
    }

    @Test func guestMemoryPlacementAndRelease() throws {
        let k = makeKernel()
        // memfd and hugetlbfs memory is not mapped in this process (docs/kernel-interface.md §2.7, §9.16): no VA, a memfd.
        let a = try k.createGuestMemory(name: "a", size: 0x20_0000, backing: .memfd, hugepageSize: nil)
        let b = try k.createGuestMemory(name: "b", size: 0x4000_0000, backing: .hugetlbfs, hugepageSize: 1 << 30)
        for memory in [a, b] {
            #expect(memory.userVA == 0)
            let file = try #require(memory.file)
            #expect(try k.openFiles().first { $0.fd == file.fd }?.kind == .memfd)
        }
        // Anonymous memory gets a VA: first fit from the mmap base (memfd memory takes none of
        // it), page aligned (at least 2 MiB, or the huge page size), a guard page between regions.
        let c = try k.createGuestMemory(name: "c", size: 0x1000, backing: .anonymous, hugepageSize: nil)
        let d = try k.createGuestMemory(name: "d", size: 0x4000_0000, backing: .anonymous, hugepageSize: 1 << 30)
        let e = try k.createGuestMemory(name: "e", size: 0x20_0000, backing: .anonymous, hugepageSize: nil)
        #expect(c.userVA == 0x7F00_0000_0000)
        for memory in [c, d, e] {
            #expect(memory.file == nil)
            #expect(memory.userVA >= 0x7F00_0000_0000)
            #expect(memory.userVA % (2 << 20) == 0)
        }
        #expect(d.userVA % (1 << 30) == 0)
        let spans = [c, d, e].map { ($0.userVA, $0.userVA + $0.size - 1) }.sorted { $0.0 < $1.0 }
        for (first, second) in zip(spans, spans.dropFirst()) { #expect(first.1 + 0x1000 < second.0) }
        #expect(errnoOf { try k.createGuestMemory(name: "f", size: 0x1000, backing: .hugetlbfs, hugepageSize: nil) } == .EINVAL)
        #expect(errnoOf { try k.createGuestMemory(name: "f", size: 0, backing: .memfd, hugepageSize: nil) } == .EINVAL)
        #expect(k.state.memories.count == 5)
        // A mapping keeps released memory alive (its pages are pinned).
        let dev = try Bound(k, Fixture.gpuVfio)
        _ = try dev.s2()
        let aFile = try #require(a.file)
        _ = try k.ioasMap(dev.fd, ioas: dev.ioas, flags: rw, source: .file(aFile, offset: 0), length: a.size, iova: 0x4000_0000)
        _ = try k.ioasMap(dev.fd, ioas: dev.ioas, flags: rw, source: .userVA(e.userVA), length: e.size, iova: 0x8000_0000)
        // Release of memfd memory closes its memfd: MAP_FILE of it is EBADF.
        k.releaseGuestMemory(a)
        #expect(k.state.memories.count == 5)
        #expect(k.state.files[aFile.fd] == nil)
        #expect(errnoOf { try k.ioasMap(dev.fd, ioas: dev.ioas, flags: rw, source: .file(aFile, offset: 0), length: a.size, iova: 0xC000_0000) } == .EBADF)
        // Release of anonymous memory unmaps it: with a HWPT in the IOAS, mapping its old VA is EFAULT.
        k.releaseGuestMemory(e)
        #expect(k.state.memories.count == 5)
        #expect(errnoOf { try k.ioasMap(dev.fd, ioas: dev.ioas, flags: rw, source: .userVA(e.userVA), length: e.size, iova: 0xC000_0000) } == .EFAULT)
        // Released memory that no mapping holds goes at once, of either kind.
        k.releaseGuestMemory(b)
        k.releaseGuestMemory(c)
        #expect(k.state.memories.count == 3)
        if let file = b.file { #expect(k.state.files[file.fd] == nil) }
        _ = try k.ioasUnmap(dev.fd, ioas: dev.ioas, iova: 0, length: UInt64.max)
        #expect(k.state.memories.count == 1)
    }
}
