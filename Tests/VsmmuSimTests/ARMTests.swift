import Testing
import VsmmuKernel
@testable import VsmmuSim

// ARM SMMUv3 driver rules (docs/kernel-interface.md §5.2–§5.5), Tegra241 CMDQV (§5.7), GET_HW_INFO (§5.1), VT-d (§6).

/// One bound device with an IOAS and (optionally) its S2.
struct Bound {
    let k: SimulatedKernel
    let fd: IommufdHandle
    let dev: DeviceHandle
    let devID: ObjectID
    let ioas: ObjectID
    init(_ k: SimulatedKernel, _ address: PCIAddress, fd: IommufdHandle? = nil, ioas: ObjectID? = nil) throws {
        self.k = k
        self.fd = try fd ?? k.openIommufd()
        (dev, devID) = try k.openAndBind(address, to: self.fd)
        self.ioas = try ioas ?? k.ioasAlloc(self.fd)
    }
    func s2() throws -> ObjectID {
        try k.hwptAlloc(fd, flags: HWPTAllocFlags.nestParent, devID: devID, ptID: ioas, dataType: 0, data: [])
    }
}

@Suite struct ARMTests {
    @Test func nestParentRules() throws {
        let k = makeKernel()
        let noNest = try Bound(k, Fixture.devNoNest)
        #expect(errnoOf { try noNest.s2() } == .EOPNOTSUPP)
        // Flags 0 (stage 1) works without nesting.
        #expect(try k.hwptAlloc(noNest.fd, flags: 0, devID: noNest.devID, ptID: noNest.ioas, dataType: 0, data: []) > 0)
        let a = try Bound(k, Fixture.gpuVfio)
        // NEST_PARENT is exclusive on ARM; no dirty tracking; no driver data.
        #expect(errnoOf { try k.hwptAlloc(a.fd, flags: [HWPTAllocFlags.nestParent, .dirtyTracking], devID: a.devID, ptID: a.ioas, dataType: 0, data: []) } == .EOPNOTSUPP)
        #expect(errnoOf { try k.hwptAlloc(a.fd, flags: [HWPTAllocFlags.nestParent, .pasid], devID: a.devID, ptID: a.ioas, dataType: 0, data: []) } == .EOPNOTSUPP)
        #expect(errnoOf { try k.hwptAlloc(a.fd, flags: [HWPTAllocFlags.nestParent, .faultIDValid], devID: a.devID, ptID: a.ioas, dataType: 0, data: []) } == .EOPNOTSUPP)
        #expect(errnoOf { try k.hwptAlloc(a.fd, flags: 0x10, devID: a.devID, ptID: a.ioas, dataType: 0, data: []) } == .EOPNOTSUPP)
        #expect(errnoOf { try k.hwptAlloc(a.fd, flags: 0, devID: a.devID, ptID: a.ioas, dataType: HWPTDataType.armSMMUv3, data: vste(0x9)) } == .EOPNOTSUPP)
        // data_type/data_len mismatch and unknown dev_id come first.
        #expect(errnoOf { try k.hwptAlloc(a.fd, flags: 0, devID: a.devID, ptID: a.ioas, dataType: 0, data: [1]) } == .EINVAL)
        #expect(errnoOf { try k.hwptAlloc(a.fd, flags: 0, devID: 99, ptID: a.ioas, dataType: 0, data: []) } == .ENOENT)
        // FAULT_ID_VALID alone: the fault_id (0) is not a FAULT object.
        #expect(errnoOf { try k.hwptAlloc(a.fd, flags: HWPTAllocFlags.faultIDValid, devID: a.devID, ptID: a.ioas, dataType: 0, data: []) } == .ENOENT)
        #expect(try a.s2() > 0)
    }

    @Test func viommuGatesAndOrder() throws {
        let k = makeKernel()
        let nc = try Bound(k, Fixture.devNonCoherent)
        let ncS2 = try nc.s2()
        // docs/kernel-interface.md §5.2: neither CANWBS nor S2FWB → EOPNOTSUPP, even before the hwpt_id lookup.
        #expect(errnoOf { try k.viommuAlloc(nc.fd, type: 1, devID: nc.devID, hwptID: ncS2, data: []) } == .EOPNOTSUPP)
        #expect(errnoOf { try k.viommuAlloc(nc.fd, type: 1, devID: nc.devID, hwptID: nc.ioas, data: []) } == .EOPNOTSUPP)
        let a = try Bound(k, Fixture.gpuVfio)
        // Supported: a non-HWPT_PAGING hwpt_id is ENOENT, a non-nest-parent HWPT EINVAL.
        #expect(errnoOf { try k.viommuAlloc(a.fd, type: 1, devID: a.devID, hwptID: a.ioas, data: []) } == .ENOENT)
        let s1 = try k.hwptAlloc(a.fd, flags: 0, devID: a.devID, ptID: a.ioas, dataType: 0, data: [])
        #expect(errnoOf { try k.viommuAlloc(a.fd, type: 1, devID: a.devID, hwptID: s1, data: []) } == .EINVAL)
        let s2 = try a.s2()
        #expect(errnoOf { try k.viommuAlloc(a.fd, type: 0, devID: a.devID, hwptID: s2, data: []) } == .EOPNOTSUPP)
        #expect(errnoOf { try k.viommuAlloc(a.fd, type: VIOMMUType.tegra241CMDQV, devID: a.devID, hwptID: s2, data: [UInt8](repeating: 0, count: 16)) } == .EOPNOTSUPP)
        #expect(errnoOf { try k.viommuAlloc(a.fd, type: 1, devID: 77, hwptID: s2, data: []) } == .ENOENT)
        let noNest = try Bound(k, Fixture.devNoNest, fd: a.fd, ioas: a.ioas)
        #expect(errnoOf { try k.viommuAlloc(a.fd, type: 1, devID: noNest.devID, hwptID: s2, data: []) } == .EOPNOTSUPP)
        let viommu = try k.viommuAlloc(a.fd, type: 1, devID: a.devID, hwptID: s2, data: [1, 2, 3])
        #expect(viommu.dataOut.isEmpty)
    }

    @Test func anotherSMMUIsEINVALEverywhere() throws {
        let k = makeKernel()
        let a = try Bound(k, Fixture.gpuVfio)
        let s2A = try a.s2()
        let viommuA = try k.viommuAlloc(a.fd, type: 1, devID: a.devID, hwptID: s2A, data: []).id
        let b = try Bound(k, Fixture.nicB, fd: a.fd, ioas: a.ioas)
        let s2B = try b.s2()
        // Nest parent of another SMMU.
        #expect(errnoOf { try k.viommuAlloc(a.fd, type: 1, devID: a.devID, hwptID: s2B, data: []) } == .EINVAL)
        // vDevice, nested HWPT, attach.
        #expect(errnoOf { try k.vdeviceAlloc(a.fd, viommuID: viommuA, devID: b.devID, virtID: 1) } == .EINVAL)
        #expect(errnoOf { try k.hwptAlloc(a.fd, flags: 0, devID: b.devID, ptID: viommuA, dataType: 2, data: vste(0x9)) } == .EINVAL)
        #expect(errnoOf { try k.attach(b.dev, ptID: s2A) } == .EINVAL)
        let bypassA = try k.hwptAlloc(a.fd, flags: 0, devID: a.devID, ptID: viommuA, dataType: 2, data: vste(0x9))
        #expect(errnoOf { try k.attach(b.dev, ptID: bypassA) } == .EINVAL)
        // Each SMMU gets its own S2 and vIOMMU over the shared IOAS.
        #expect(try k.attach(b.dev, ptID: s2B) == s2B)
        #expect(try k.viommuAlloc(a.fd, type: 1, devID: b.devID, hwptID: s2B, data: []).id > 0)
    }

    @Test func vsteValidation() throws {
        let k = makeKernel()
        let a = try Bound(k, Fixture.gpuVfio)
        let s2 = try a.s2()
        let viommu = try k.viommuAlloc(a.fd, type: 1, devID: a.devID, hwptID: s2, data: []).id
        func nested(_ data: [UInt8], type: HWPTDataType = HWPTDataType.armSMMUv3, flags: HWPTAllocFlags = 0) -> Errno? {
            errnoOf { try k.hwptAlloc(a.fd, flags: flags, devID: a.devID, ptID: viommu, dataType: type, data: data) }
        }
        #expect(nested(vste(0x1)) == nil)                        // abort
        #expect(nested(vste(0x9)) == nil)                        // bypass
        #expect(nested(vste(0xB | 0x4000_0000, 0x1000_0000)) == nil)   // S1 with EATS 1
        #expect(nested(vste(0xFFFF_FFFF_FFFF_FFFE, UInt64.max)) == nil) // V=0: anything goes
        #expect(nested(vste(0x9 | (1 << 52))) == .EIO)           // bit outside word-0 mask
        #expect(nested(vste(0x9, 1 << 32)) == .EIO)              // bit outside word-1 mask
        #expect(nested(vste(0x1 | (6 << 1))) == .EIO)            // Config 6 (S2)
        #expect(nested(vste(0x1 | (7 << 1))) == .EIO)            // Config 7 (nested)
        #expect(nested(vste(0xB, 2 << 28)) == .EIO)              // EATS 2
        #expect(nested(Array(vste(0x9).prefix(8))) == .EINVAL)   // data_len 8
        #expect(nested(vste(0x9) + [0, 0, 0, 0, 0, 0, 0, 0]) == .EINVAL)   // data_len 24
        #expect(nested(vste(0x9), type: HWPTDataType.vtdS1) == .EINVAL)
        #expect(nested(vste(0x9), flags: HWPTAllocFlags.nestParent) == .EOPNOTSUPP)
        #expect(nested(vste(0x9), flags: HWPTAllocFlags.pasid) == .EOPNOTSUPP)
        #expect(nested([], type: 0) == .EOPNOTSUPP)               // no data for a nested HWPT
        // ARM has no nested allocator on a HWPT: use the vIOMMU.
        #expect(errnoOf { try k.hwptAlloc(a.fd, flags: 0, devID: a.devID, ptID: s2, dataType: 2, data: vste(0x9)) } == .EOPNOTSUPP)
        // The stored vSTE: V=0 as zeros, EATS removed.
        let s1 = try k.hwptAlloc(a.fd, flags: 0, devID: a.devID, ptID: viommu, dataType: 2, data: vste(0xB, 0x1000_0000))
        guard case .hwptNested(let stored)? = k.object(1, s1) else { Issue.record("no nested HWPT"); return }
        #expect(stored.config == .stage1)
        #expect(stored.vste == [0xB, 0])
    }

    @Test func stage1AttachNeedsAVDeviceBypassDoesNot() throws {
        let rig = try ArmRig()
        let k = rig.kernel
        let b = try Bound(k, Fixture.gpuVfio2, fd: rig.iommufd, ioas: rig.ioas)
        _ = try k.attach(b.dev, ptID: rig.s2)
        let s1 = try k.hwptAlloc(rig.iommufd, flags: 0, devID: b.devID, ptID: rig.viommu, dataType: 2, data: vste(0xB | 0x4000_0000))
        #expect(errnoOf { try k.attach(b.dev, ptID: s1) } == .ENOENT)
        // The failed attach left the old attachment in place.
        #expect(k.deviceObject(1, b.devID)?.attached == rig.s2)
        #expect(try k.attach(b.dev, ptID: rig.bypass) == rig.bypass)
        let abort = try k.hwptAlloc(rig.iommufd, flags: 0, devID: b.devID, ptID: rig.viommu, dataType: 2, data: vste(0x1))
        #expect(try k.attach(b.dev, ptID: abort) == abort)
        _ = try k.vdeviceAlloc(rig.iommufd, viommuID: rig.viommu, devID: b.devID, virtID: 0x200)
        #expect(try k.attach(b.dev, ptID: s1) == s1)
    }

    @Test func unknownPtIDIsEINVALInHWPTAllocButENOENTInAttach() throws {
        let rig = try ArmRig()
        let k = rig.kernel
        #expect(errnoOf { try k.hwptAlloc(rig.iommufd, flags: 0, devID: rig.devID, ptID: 99, dataType: 0, data: []) } == .EINVAL)
        #expect(errnoOf { try k.attach(rig.device, ptID: 99) } == .ENOENT)
        // A wrong-type pt_id is EINVAL in both.
        #expect(errnoOf { try k.hwptAlloc(rig.iommufd, flags: 0, devID: rig.devID, ptID: rig.vdevice, dataType: 0, data: []) } == .EINVAL)
        #expect(errnoOf { try k.attach(rig.device, ptID: rig.viommu) } == .EINVAL)
        #expect(errnoOf { try k.attach(rig.device, ptID: rig.devID) } == .EINVAL)
    }

    @Test func hwInfoEncodesTheHostFacts() throws {
        let k = makeKernel()
        let a = try Bound(k, Fixture.gpuVfio)
        let info = try k.getHwInfo(a.fd, devID: a.devID, requestType: nil)
        #expect(info.dataType == HWInfoType.armSMMUv3)
        #expect(info.data.count == 40)
        let idr0 = le32(info.data, 8), idr1 = le32(info.data, 12), idr3 = le32(info.data, 20), idr5 = le32(info.data, 28)
        #expect(idr0 & 0x3 == 0x3)              // S1P, S2P
        #expect(idr0 & (1 << 10) != 0)          // ATS
        #expect((idr1 >> 6) & 0x1F == 20)       // SSIDSIZE
        #expect(idr3 & (1 << 10) != 0)          // RIL
        #expect(idr3 & (1 << 8) != 0)           // FWB = coherent
        #expect(idr5 & 0x7 == 5)                // OAS 48
        #expect(idr5 & (1 << 4) != 0)           // GRAN4K
        #expect(info.maxPasidLog2 == 20)
        #expect(info.capabilities == 0)
        #expect(errnoOf { try k.getHwInfo(a.fd, devID: a.devID, requestType: HWInfoType.tegra241CMDQV) } == .EOPNOTSUPP)
        #expect(errnoOf { try k.getHwInfo(a.fd, devID: a.devID, requestType: HWInfoType.intelVTD) } == .EOPNOTSUPP)
        #expect(errnoOf { try k.getHwInfo(a.fd, devID: 42, requestType: nil) } == .ENOENT)
        #expect(try k.getHwInfo(a.fd, devID: a.devID, requestType: 0).dataType == HWInfoType.armSMMUv3)

        let b = try Bound(k, Fixture.nicB, fd: a.fd)
        #expect(le32(try k.getHwInfo(a.fd, devID: b.devID, requestType: nil).data, 28) & 0x7 == 4)   // OAS 44
        let nc = try Bound(k, Fixture.devNonCoherent, fd: a.fd)
        #expect(le32(try k.getHwInfo(a.fd, devID: nc.devID, requestType: nil).data, 20) & (1 << 8) == 0)
        let noNest = try Bound(k, Fixture.devNoNest, fd: a.fd)
        #expect(le32(try k.getHwInfo(a.fd, devID: noNest.devID, requestType: nil).data, 8) & 0x1 == 0)

        let c = try Bound(k, Fixture.devCMDQV, fd: a.fd)
        let tegra = try k.getHwInfo(a.fd, devID: c.devID, requestType: HWInfoType.tegra241CMDQV)
        #expect(tegra.dataType == HWInfoType.tegra241CMDQV)
        #expect(tegra.data.count == 8)
        #expect(tegra.data[5] == 2)             // log2vcmdqs for 4 vCMDQs
        #expect(try k.getHwInfo(a.fd, devID: c.devID, requestType: nil).dataType == HWInfoType.armSMMUv3)
    }

    @Test func intelVTdNestsOnTheParentAndHasNoVIOMMU() throws {
        let k = makeKernel()
        let v = try Bound(k, Fixture.vtdDev)
        let info = try k.getHwInfo(v.fd, devID: v.devID, requestType: nil)
        #expect(info.dataType == HWInfoType.intelVTD)
        #expect(info.data.count == 24)
        #expect(le64(info.data, 16) & (1 << 26) != 0)   // ecap.NEST
        #expect(info.capabilities == HWInfoCapabilities.pciATSNotSupported)
        let parent = try v.s2()
        #expect(errnoOf { try k.viommuAlloc(v.fd, type: 1, devID: v.devID, hwptID: parent, data: []) } == .EOPNOTSUPP)
        let s1 = [UInt8](repeating: 0, count: 24)
        #expect(errnoOf { try k.hwptAlloc(v.fd, flags: 0, devID: v.devID, ptID: parent, dataType: HWPTDataType.vtdS1, data: Array(s1.prefix(16))) } == .EINVAL)
        #expect(errnoOf { try k.hwptAlloc(v.fd, flags: 0, devID: v.devID, ptID: parent, dataType: HWPTDataType.armSMMUv3, data: s1) } == .EOPNOTSUPP)
        let plain = try k.hwptAlloc(v.fd, flags: 0, devID: v.devID, ptID: v.ioas, dataType: 0, data: [])
        #expect(errnoOf { try k.hwptAlloc(v.fd, flags: 0, devID: v.devID, ptID: plain, dataType: HWPTDataType.vtdS1, data: s1) } == .EINVAL)
        let nested = try k.hwptAlloc(v.fd, flags: 0, devID: v.devID, ptID: parent, dataType: HWPTDataType.vtdS1, data: s1)
        #expect(try k.attach(v.dev, ptID: nested) == nested)
    }

    /// intel/nested.c intel_nested_cache_invalidate_user (read in the source; no lab has VT-d
    /// nesting): the nested HWPT takes VTD_S1 entries {addr, npages, flags, reserved}.
    @Test func intelVTdNestedHWPTsInvalidate() throws {
        let k = makeKernel()
        let v = try Bound(k, Fixture.vtdDev)
        let nested = try k.hwptAlloc(v.fd, flags: 0, devID: v.devID, ptID: try v.s2(), dataType: HWPTDataType.vtdS1, data: [UInt8](repeating: 0, count: 24))
        func entry(addr: UInt64, npages: UInt64, flags: UInt32 = 0, reserved: UInt32 = 0) -> [UInt8] {
            le64Bytes(addr) + le64Bytes(npages) + le32Bytes(flags) + le32Bytes(reserved)
        }
        func invalidate(_ entries: [UInt8], len: UInt32 = 24, type: InvalidateDataType = .vtdS1) -> Errno? {
            errnoOf { _ = try k.hwptInvalidate(v.fd, hwptID: nested, dataType: type, entryLen: len, entryNum: UInt32(entries.count) / len, entries: entries) }
        }
        #expect(try k.hwptInvalidate(v.fd, hwptID: nested, dataType: .vtdS1, entryLen: 24, entryNum: 0, entries: []) == 0)
        #expect(try k.hwptInvalidate(v.fd, hwptID: nested, dataType: .vtdS1, entryLen: 24, entryNum: 2,
                                     entries: entry(addr: 0x1000, npages: 1, flags: 1) + entry(addr: 0, npages: .max)) == 2)
        #expect(invalidate(entry(addr: 0x1000, npages: 1), type: .armSMMUv3) == .EINVAL)
        #expect(invalidate(entry(addr: 0x1000, npages: 1) + [0], len: 25) == .EINVAL)      // longer than the struct
        #expect(invalidate(entry(addr: 0x1000, npages: 1, flags: 2)) == .EOPNOTSUPP)
        #expect(invalidate(entry(addr: 0x1000, npages: 1, reserved: 1)) == .EOPNOTSUPP)
        #expect(invalidate(entry(addr: 0x1800, npages: 1)) == .EINVAL)
        #expect(invalidate(entry(addr: 0x1000, npages: .max)) == .EINVAL)
    }

    @Test func tegra241CMDQVViommuAndHWQueues() throws {
        let k = makeKernel()
        let c = try Bound(k, Fixture.devCMDQV)
        let s2 = try c.s2()
        _ = try k.attach(c.dev, ptID: s2)
        #expect(errnoOf { try k.viommuAlloc(c.fd, type: VIOMMUType.tegra241CMDQV, devID: c.devID, hwptID: s2, data: []) } == .EINVAL)
        #expect(errnoOf { try k.viommuAlloc(c.fd, type: VIOMMUType.tegra241CMDQV, devID: c.devID, hwptID: s2, data: [UInt8](repeating: 0, count: 8)) } == .EINVAL)
        let (viommu, out) = try k.viommuAlloc(c.fd, type: VIOMMUType.tegra241CMDQV, devID: c.devID, hwptID: s2, data: [UInt8](repeating: 0, count: 16))
        #expect(out.count == 16)
        #expect(le64(out, 0) == 65536)
        #expect(le64(out, 8) == 65536)
        // A second one gets the next mmap offset.
        let second = try k.viommuAlloc(c.fd, type: VIOMMUType.tegra241CMDQV, devID: c.devID, hwptID: s2, data: [UInt8](repeating: 0, count: 16))
        #expect(le64(second.dataOut, 0) == 131072)
        #expect(errnoOf { try k.vdeviceAlloc(c.fd, viommuID: viommu, devID: c.devID, virtID: 0x10_0000) } == .EINVAL)
        _ = try k.vdeviceAlloc(c.fd, viommuID: viommu, devID: c.devID, virtID: 0xF_FFFF)

        // Queue memory: one 2 MiB huge page mapped at IPA 0x4000_0000.
        let memory = try k.createGuestMemory(name: "ram", size: 2 << 20, backing: .hugetlbfs, hugepageSize: 2 << 20)
        guard let file = memory.file else { Issue.record("no memfd"); return }
        _ = try k.ioasMap(c.fd, ioas: c.ioas, flags: rw, source: .file(file, offset: 0), length: memory.size, iova: 0x4000_0000)
        func queue(_ index: UInt32, at iova: UInt64, length: UInt64 = 0x1000, type: HWQueueType = HWQueueType.tegra241CMDQV, on v: ObjectID? = nil) throws(KernelCallError) -> ObjectID {
            try k.hwQueueAlloc(c.fd, viommuID: v ?? viommu, type: type, index: index, iova: iova, length: length)
        }
        #expect(errnoOf { try queue(1, at: 0x4000_1000) } == .EIO)              // 1 before 0
        #expect(errnoOf { try queue(0, at: 0x4000_0000, length: 0x1800) } == .EINVAL)   // not a power of two
        #expect(errnoOf { try queue(0, at: 0x4000_0800, length: 0x1000) } == .EINVAL)   // not aligned to its length
        #expect(errnoOf { try queue(0, at: 0x3000_0000) } == .ENOENT)           // not mapped
        #expect(errnoOf { try queue(0, at: 0x4000_0000, type: 0) } == .EOPNOTSUPP)
        let plain = try k.viommuAlloc(c.fd, type: VIOMMUType.armSMMUv3, devID: c.devID, hwptID: s2, data: []).id
        #expect(errnoOf { try queue(0, at: 0x4000_0000, on: plain) } == .EOPNOTSUPP)
        let q0 = try queue(0, at: 0x4000_0000)
        #expect(errnoOf { try queue(0, at: 0x4000_1000) } == .EEXIST)
        #expect(errnoOf { try queue(4, at: 0x4000_4000) } == .EINVAL)            // 4 vCMDQs: 0...3
        let q1 = try queue(1, at: 0x4000_1000)
        // Queue i is held by queue i+1; the pages are locked; the vIOMMU is held.
        #expect(errnoOf { try k.destroy(c.fd, id: q0) } == .EBUSY)
        #expect(errnoOf { try k.ioasUnmap(c.fd, ioas: c.ioas, iova: 0x4000_0000, length: memory.size) } == .EBUSY)
        #expect(errnoOf { try k.ioasUnmap(c.fd, ioas: c.ioas, iova: 0, length: UInt64.max) } == .EBUSY)
        #expect(errnoOf { try k.destroy(c.fd, id: viommu) } == .EBUSY)
        try k.destroy(c.fd, id: q1)
        try k.destroy(c.fd, id: q0)
        #expect(try k.ioasUnmap(c.fd, ioas: c.ioas, iova: 0, length: UInt64.max) == memory.size)
    }
}
