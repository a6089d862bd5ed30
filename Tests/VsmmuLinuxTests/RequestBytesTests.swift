import Foundation
import Testing
import VsmmuKernel
@testable import VsmmuLinux

/// Records every request with a copy of its bytes (and of the buffers its pointer
/// fields name), and answers from a script.
final class RecordingTransport: IoctlTransport {
    struct Call { var fd: Int32; var request: UInt32; var bytes: [UInt8]; var data: [UInt8] }
    var calls: [Call] = []
    /// Per call: return value and a chance to write outputs.
    var answer: (UInt32, UnsafeMutableRawBufferPointer) -> Int32 = { _, _ in 0 }

    func ioctl(_ fd: Int32, _ request: UInt32, _ bytes: UnsafeMutableRawBufferPointer) -> Int32 {
        var data: [UInt8] = []
        // HWPT_ALLOC and VIOMMU_ALLOC carry driver data at (len @28/24, ptr @32)
        if request == 0x3B89, let p = UnsafeRawPointer(bitPattern: UInt(bytes.load(fromByteOffset: 32, as: UInt64.self))) {
            data = Array(UnsafeRawBufferPointer(start: p, count: Int(bytes.load(fromByteOffset: 28, as: UInt32.self))))
        }
        calls.append(Call(fd: fd, request: request, bytes: Array(bytes), data: data))
        return answer(request, bytes)
    }
}

func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * UInt32($0))) } }
func le64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }

@Test func ioasAllocBytesAndResult() throws {
    let t = RecordingTransport()
    t.answer = { _, b in b.storeBytes(of: UInt32(7), toByteOffset: 8, as: UInt32.self); return 0 }
    let id = try IoctlCalls(transport: t).ioasAlloc(3)
    #expect(id == 7)
    #expect(t.calls.count == 1)
    #expect(t.calls[0].fd == 3)
    #expect(t.calls[0].request == 0x3B81)
    //                       size=12        flags=0       out_ioas_id=0
    #expect(t.calls[0].bytes == le32(12) + le32(0) + le32(0))
}

@Test func nestParentHWPTAllocBytes() throws {
    let t = RecordingTransport()
    t.answer = { _, b in b.storeBytes(of: UInt32(9), toByteOffset: 16, as: UInt32.self); return 0 }
    let id = try IoctlCalls(transport: t).hwptAlloc(3, flags: HWPTAllocFlags.nestParent, devID: 2, ptID: 1, dataType: 0, data: [])
    #expect(id == 9)
    #expect(t.calls[0].request == 0x3B89)
    // size 48, flags NEST_PARENT, dev_id 2, pt_id 1, out 0, reserved 0, data_type 0, data_len 0, data_uptr 0, fault_id 0, reserved2 0
    #expect(t.calls[0].bytes == le32(48) + le32(1) + le32(2) + le32(1) + le32(0) + le32(0) + le32(0) + le32(0) + le64(0) + le32(0) + le32(0))
}

@Test func nestedHWPTCarriesTheVSTE() throws {
    let t = RecordingTransport()
    let vste = le64(0x9) + le64(0)
    _ = try IoctlCalls(transport: t).hwptAlloc(3, flags: 0, devID: 2, ptID: 6, dataType: HWPTDataType.armSMMUv3, data: vste)
    let b = t.calls[0].bytes
    #expect(Array(b[24..<32]) == le32(2) + le32(16))     // data_type ARM_SMMUV3, data_len 16
    #expect(Array(b[32..<40]) != le64(0))                // data_uptr set
    #expect(t.calls[0].data == vste)                     // and it points at the vSTE
}

@Test func vdeviceBindAttachDetachBytes() throws {
    let t = RecordingTransport()
    let c = IoctlCalls(transport: t)
    _ = try c.vdeviceAlloc(3, viommuID: 8, devID: 2, virtID: 0x1100)
    _ = try c.bindIommufd(5, iommufd: 3)
    _ = try c.attach(5, ptID: 12)
    try c.detach(5)
    #expect(t.calls.map(\.request) == [0x3B91, 0x3B76, 0x3B77, 0x3B78])
    #expect(t.calls[0].bytes == le32(24) + le32(8) + le32(2) + le32(0) + le64(0x1100))
    #expect(t.calls[1].fd == 5)
    #expect(t.calls[1].bytes == le32(24) + le32(0) + le32(3) + le32(0) + le64(0))
    #expect(t.calls[2].bytes == le32(16) + le32(0) + le32(12) + le32(0))
    #expect(t.calls[3].bytes == le32(12) + le32(0) + le32(0))
}

@Test func viommuAndVEventQBytes() throws {
    let t = RecordingTransport()
    t.answer = { req, b in
        if req == 0x3B93 { b.storeBytes(of: UInt32(11), toByteOffset: 20, as: UInt32.self); b.storeBytes(of: UInt32(42), toByteOffset: 24, as: UInt32.self) }
        return 0
    }
    let c = IoctlCalls(transport: t)
    _ = try c.viommuAlloc(3, type: VIOMMUType.armSMMUv3, devID: 2, hwptID: 5, data: [])
    let q = try c.veventqAlloc(3, viommuID: 6, type: VEventQType.armSMMUv3, depth: 128)
    #expect(q.id == 11 && q.eventFD == 42)
    #expect(t.calls[0].bytes == le32(40) + le32(0) + le32(1) + le32(2) + le32(5) + le32(0) + le32(0) + le32(0) + le64(0))
    #expect(t.calls[1].bytes == le32(32) + le32(0) + le32(6) + le32(1) + le32(128) + le32(0) + le32(0) + le32(0))
}

@Test func mapFileAndUnmapBytes() throws {
    let t = RecordingTransport()
    let c = IoctlCalls(transport: t)
    _ = try c.ioasMapFile(3, ioas: 1, flags: 7, file: 9, start: 0, length: 1 << 30, iova: 0x4000_0000)
    _ = try c.ioasUnmap(3, ioas: 1, iova: 0x4000_0000, length: 1 << 30)
    #expect(t.calls[0].request == 0x3B8F)
    #expect(t.calls[0].bytes == le32(40) + le32(7) + le32(1) + le32(9) + le64(0) + le64(1 << 30) + le64(0x4000_0000))
    #expect(t.calls[1].bytes == le32(24) + le32(1) + le64(0x4000_0000) + le64(1 << 30))
}

@Test func mockDomainBytesAndOutputs() throws {
    let t = RecordingTransport()
    t.answer = { _, b in
        b.storeBytes(of: UInt32(4), toByteOffset: 16, as: UInt32.self)
        b.storeBytes(of: UInt32(3), toByteOffset: 20, as: UInt32.self)
        b.storeBytes(of: UInt32(2), toByteOffset: 24, as: UInt32.self)
        return 0
    }
    let m = try IoctlCalls(transport: t).mockDomain(3, ptID: 1)
    #expect(m == MockDevice(stdevID: 4, hwptID: 3, idevID: 2))
    #expect(t.calls[0].request == 0x3BA0)
    #expect(Array(t.calls[0].bytes.prefix(16)) == le32(72) + le32(2) + le32(1) + le32(0))
    #expect(t.calls[0].bytes.count == 72)
}

@Test func eintrIsRetried() throws {
    let t = RecordingTransport()
    var first = true
    t.answer = { _, _ in
        if first { first = false; return -Errno.EINTR.rawValue }
        return 0
    }
    try IoctlCalls(transport: t).destroy(3, id: 5)
    #expect(t.calls.count == 2)
}

@Test func errnoBecomesANamedErrorWithTheArguments() {
    let t = RecordingTransport()
    t.answer = { _, _ in -Errno.EBUSY.rawValue }
    do {
        try IoctlCalls(transport: t).destroy(3, id: 5)
        Issue.record("no error")
    } catch {
        #expect(error.call == "IOMMU_DESTROY")
        #expect(error.errno == .EBUSY)
        #expect(error.detail == "fd=3 id=5")
        #expect(error.description == "IOMMU_DESTROY [fd=3 id=5]: EBUSY (device or resource busy)")
    }
}

@Test func iovaRangesGrowsItsBufferOnEMSGSIZE() throws {
    let t = RecordingTransport()
    t.answer = { _, b in
        let capacity = b.load(fromByteOffset: 8, as: UInt32.self)
        b.storeBytes(of: UInt32(10), toByteOffset: 8, as: UInt32.self)   // 10 ranges exist
        if capacity < 10 { return -Errno.EMSGSIZE.rawValue }
        let p = UnsafeMutableRawPointer(bitPattern: UInt(b.load(fromByteOffset: 16, as: UInt64.self)))!
        for i in 0..<10 {
            p.storeBytes(of: UInt64(i) << 32, toByteOffset: i * 16, as: UInt64.self)
            p.storeBytes(of: UInt64(i) << 32 | 0xfff, toByteOffset: i * 16 + 8, as: UInt64.self)
        }
        b.storeBytes(of: UInt64(4096), toByteOffset: 24, as: UInt64.self)
        return 0
    }
    let r = try IoctlCalls(transport: t).ioasIovaRanges(3, ioas: 1)
    #expect(t.calls.count == 2)
    #expect(r.ranges.count == 10)
    #expect(r.ranges[3] == IovaRange(start: 3 << 32, last: 3 << 32 | 0xfff))
    #expect(r.alignment == 4096)
}

@Test func armRegistersDecode() {
    var data = [UInt8](repeating: 0, count: 40)
    func put(_ off: Int, _ v: UInt32) { for i in 0..<4 { data[off + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))) } }
    put(8, 0x3 | 1 << 10)            // IDR0: S2P, S1P, ATS
    put(12, 20 << 6)                 // IDR1: SSIDSIZE 20
    put(20, 1 << 10 | 1 << 8)        // IDR3: RIL, FWB
    put(28, 5)                       // IDR5: OAS 48
    let f = IOMMUFeatures.armSMMUv3(data, maxPasidLog2: 20, capabilities: 0)!
    #expect(f.nesting == true && f.ats == true && f.ril == true && f.coherent == true)
    #expect(f.ssidSize == 20 && f.oas == 48 && f.pasid == true)
    put(20, 0)                       // no FWB: coherency is only knowable by probe
    let g = IOMMUFeatures.armSMMUv3(data, maxPasidLog2: 0, capabilities: HWInfoCapabilities.pciATSNotSupported)!
    #expect(g.coherent == nil)
    #expect(g.ats == false)
}
