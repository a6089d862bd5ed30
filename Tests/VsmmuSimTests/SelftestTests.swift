import Testing
import VsmmuKernel
@testable import VsmmuSim

// The selftest mock driver (docs/kernel-interface.md §7): the minimal nested graph of §7.4.

@Suite struct SelftestTests {
    @Test func minimalNestedGraphEndToEnd() throws {
        let k = makeKernel(Fixture.selftestHost)
        let fd = try k.openIommufd()
        let ioas = try k.ioasAlloc(fd)
        #expect(ioas == 1)
        let a = try k.mockDomain(fd, ptID: ioas)
        #expect((a.stdevID, a.idevID, a.hwptID) == (2, 3, 4))
        let b = try k.mockDomain(fd, ptID: ioas)
        #expect((b.stdevID, b.idevID, b.hwptID) == (5, 6, 4))    // the automatic HWPT is shared
        let info = try k.getHwInfo(fd, devID: a.idevID, requestType: nil)
        #expect(info.dataType == HWInfoType.selftest)
        #expect(le32(info.data, 4) == 0xdead_beef)
        let parent = try k.hwptAlloc(fd, flags: HWPTAllocFlags.nestParent, devID: a.idevID, ptID: ioas, dataType: 0, data: [])
        let viommu = try k.viommuAlloc(fd, type: VIOMMUType.selftest, devID: a.idevID, hwptID: parent, data: []).id
        #expect(errnoOf { try k.viommuAlloc(fd, type: VIOMMUType.armSMMUv3, devID: a.idevID, hwptID: parent, data: []) } == .EOPNOTSUPP)
        let (veventq, eventFD) = try k.veventqAlloc(fd, viommuID: viommu, type: VEventQType.selftest, depth: 2)
        let vdevA = try k.vdeviceAlloc(fd, viommuID: viommu, devID: a.idevID, virtID: 0x99)
        let selftestData = le32Bytes(0xbad_beef) + le32Bytes(0)
        let nested = try k.hwptAlloc(fd, flags: 0, devID: a.idevID, ptID: viommu, dataType: HWPTDataType.selftest, data: selftestData)
        // B has no vDevice yet: the mock refuses the nested attach whatever the data.
        #expect(errnoOf { try k.mockDomainReplace(fd, stdevID: b.stdevID, ptID: nested) } == .ENOENT)
        let vdevB = try k.vdeviceAlloc(fd, viommuID: viommu, devID: b.idevID, virtID: 0x88)
        #expect(try k.mockDomainReplace(fd, stdevID: a.stdevID, ptID: nested) == nested)
        #expect(try k.mockDomainReplace(fd, stdevID: b.stdevID, ptID: nested) == nested)
        // The automatic HWPT went away with its last device.
        #expect(errnoOf { try k.destroy(fd, id: a.hwptID) } == .ENOENT)

        // HW queue on a mapped page inside the mock aperture.
        let memory = try k.createGuestMemory(name: "q", size: 0x1000, backing: .anonymous, hugepageSize: nil)
        _ = try k.ioasMap(fd, ioas: ioas, flags: rw, source: .userVA(memory.userVA), length: 0x1000, iova: 0x100_0000)
        #expect(errnoOf { try k.hwQueueAlloc(fd, viommuID: viommu, type: HWQueueType.selftest, index: 1, iova: 0x100_0000, length: 0x1000) } == .EIO)
        let hwq = try k.hwQueueAlloc(fd, viommuID: viommu, type: HWQueueType.selftest, index: 0, iova: 0x100_0000, length: 0x1000)
        #expect(errnoOf { try k.hwQueueAlloc(fd, viommuID: viommu, type: HWQueueType.selftest, index: 2, iova: 0x100_0000, length: 0x1000) } == .EINVAL)
        #expect(errnoOf { try k.ioasUnmap(fd, ioas: ioas, iova: 0x100_0000, length: 0x1000) } == .EBUSY)

        // Teardown in the order of docs/kernel-interface.md §7.4.
        try k.destroy(fd, id: hwq)
        _ = try k.mockDomainReplace(fd, stdevID: a.stdevID, ptID: parent)
        _ = try k.mockDomainReplace(fd, stdevID: b.stdevID, ptID: parent)
        try k.destroy(fd, id: vdevA)
        try k.destroy(fd, id: vdevB)
        k.closeEventFD(fd, eventFD)
        try k.destroy(fd, id: veventq)
        try k.destroy(fd, id: nested)
        try k.destroy(fd, id: viommu)
        #expect(errnoOf { try k.destroy(fd, id: parent) } == .EBUSY)   // devices attached
        #expect(errnoOf { try k.destroy(fd, id: a.idevID) } == .EBUSY)
        try k.destroy(fd, id: a.stdevID)
        try k.destroy(fd, id: b.stdevID)
        try k.destroy(fd, id: parent)
        _ = try k.ioasUnmap(fd, ioas: ioas, iova: 0, length: UInt64.max)
        try k.destroy(fd, id: ioas)
        #expect(k.objects(1).isEmpty)
        #expect(k.state.contexts[1]?.tombstones.isEmpty == true)
    }

    @Test func destroyingTheStdevTombstonesItsVDevice() throws {
        let k = makeKernel(Fixture.selftestHost)
        let fd = try k.openIommufd()
        let ioas = try k.ioasAlloc(fd)
        let mock = try k.mockDomain(fd, ptID: ioas)
        let parent = try k.hwptAlloc(fd, flags: HWPTAllocFlags.nestParent, devID: mock.idevID, ptID: ioas, dataType: 0, data: [])
        let viommu = try k.viommuAlloc(fd, type: VIOMMUType.selftest, devID: mock.idevID, hwptID: parent, data: []).id
        let vdev = try k.vdeviceAlloc(fd, viommuID: viommu, devID: mock.idevID, virtID: 0x99)
        try k.destroy(fd, id: mock.stdevID)
        #expect(errnoOf { try k.destroy(fd, id: vdev) } == .ENOENT)
        try k.destroy(fd, id: viommu)
        // The freed stdev/idev IDs come back, the tombstone does not.
        #expect(try k.ioasAlloc(fd) == mock.stdevID)
        #expect(try k.ioasAlloc(fd) == mock.idevID)
        #expect(try k.ioasAlloc(fd) == mock.hwptID)   // the automatic HWPT is gone too
        #expect(try k.ioasAlloc(fd) == viommu)
        #expect(try k.ioasAlloc(fd) == vdev + 1)
    }

    @Test func mockApertureAndMissingSelftestDriver() throws {
        let k = makeKernel(Fixture.selftestHost)
        let fd = try k.openIommufd()
        let ioas = try k.ioasAlloc(fd)
        _ = try k.mockDomain(fd, ptID: ioas)
        #expect(try k.ioasIovaRanges(fd, ioas: ioas).ranges == [mockAperture])
        let memory = try k.createGuestMemory(name: "ram", size: 1 << 30, backing: .memfd, hugepageSize: nil)
        let file = try #require(memory.file)
        // 1 GiB at 0x40000000 ends exactly at the aperture's end; beyond it is reserved.
        #expect(try k.ioasMap(fd, ioas: ioas, flags: rw, source: .file(file, offset: 0), length: 1 << 30, iova: 0x4000_0000) == 0x4000_0000)
        #expect(errnoOf { try k.ioasMap(fd, ioas: ioas, flags: rw, source: .file(file, offset: 0), length: 0x1000, iova: 0x8000_0000) } == .EINVAL)
        #expect(errnoOf { try k.mockDomain(fd, ptID: 99) } == .ENOENT)
        #expect(errnoOf { try k.mockDomainReplace(fd, stdevID: ioas, ptID: ioas) } == .ENOENT)
        // A kernel without CONFIG_IOMMUFD_TEST.
        let plain = makeKernel()
        let plainFD = try plain.openIommufd()
        #expect(errnoOf { try plain.mockDomain(plainFD, ptID: 1) } == .ENOTTY)
    }
}
