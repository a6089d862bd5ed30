#if os(Linux)
import CVsmmuUAPI
import Glibc
import VsmmuKernel

/// The one seam every ioctl goes through: the real one calls ioctl(2); tests put a
/// recording fake here and assert the exact request and bytes (as swift-system does).
public protocol IoctlTransport: AnyObject {
    /// ioctl(fd, request, arg) where arg points at `bytes`. Returns 0 (or a non-negative
    /// result) on success, -errno on failure.
    func ioctl(_ fd: Int32, _ request: UInt32, _ bytes: UnsafeMutableRawBufferPointer) -> Int32
    /// Set once the transport itself has failed (a remote executor that went away): the
    /// -errno results then come from it, not from the kernel, and errors say so.
    var transportFailure: String? { get }
}

extension IoctlTransport {
    public var transportFailure: String? { nil }
}

public final class SystemIoctl: IoctlTransport {
    public init() {}
    public func ioctl(_ fd: Int32, _ request: UInt32, _ bytes: UnsafeMutableRawBufferPointer) -> Int32 {
        vsmmu_ioctl(fd, UInt(request), bytes.baseAddress)
    }
}

/// Typed calls: one throwing function per ioctl. Each fills its struct (sizes and
/// offsets pinned by the layout tests), retries EINTR, and turns a failure into a
/// `KernelCallError` naming the request, its arguments and the errno.
public struct IoctlCalls {
    public let transport: IoctlTransport
    public init(transport: IoctlTransport) { self.transport = transport }

    /// Runs one request on `value`'s bytes, on the fd the request names.
    @discardableResult
    func call<T>(_ request: KernelRequest, _ fd: Int32, _ value: inout T) throws(KernelCallError) -> Int32 {
        let kernelCall = request.call
        guard let number = kernelCall.request else { preconditionFailure("\(kernelCall) is not an ioctl") }
        var r: Int32
        repeat {
            r = withUnsafeMutableBytes(of: &value) { transport.ioctl(fd, number, $0) }
        } while r == -Errno.EINTR.rawValue
        if r < 0 { throw KernelCallError(kernelCall, Errno(-r), request.detail + (transport.transportFailure.map { "; \($0)" } ?? "")) }
        return r
    }

    static func size<T>(_: T.Type) -> UInt32 { UInt32(MemoryLayout<T>.size) }

    public func destroy(_ fd: Int32, id: ObjectID) throws(KernelCallError) {
        var s = vsmmu_iommu_destroy(size: Self.size(vsmmu_iommu_destroy.self), id: id)
        try call(.destroy(fd: fd, id: id), fd, &s)
    }

    /// IOMMU_OPTION: SET when `value` is given, else GET; returns val64 as written back.
    public func option(_ fd: Int32, option: IommuOption, objectID: ObjectID, value: UInt64?) throws(KernelCallError) -> UInt64 {
        let op = UInt16(value == nil ? VSMMU_IOMMU_OPTION_OP_GET : VSMMU_IOMMU_OPTION_OP_SET)
        var s = vsmmu_iommu_option(size: Self.size(vsmmu_iommu_option.self), option_id: option.rawValue, op: op, __reserved: 0,
                                   object_id: objectID, val64: value ?? 0)
        try call(.option(fd: fd, option: option, objectID: objectID, value: value), fd, &s)
        return s.val64
    }

    public func ioasAlloc(_ fd: Int32) throws(KernelCallError) -> ObjectID {
        var s = vsmmu_iommu_ioas_alloc(size: Self.size(vsmmu_iommu_ioas_alloc.self), flags: 0, out_ioas_id: 0)
        try call(.ioasAlloc(fd: fd), fd, &s)
        return s.out_ioas_id
    }

    public func ioasIovaRanges(_ fd: Int32, ioas: ObjectID) throws(KernelCallError) -> (ranges: [IovaRange], alignment: UInt64) {
        var capacity: UInt32 = 8
        while true {
            var buffer = [vsmmu_iommu_iova_range](repeating: vsmmu_iommu_iova_range(), count: Int(capacity))
            var s = vsmmu_iommu_ioas_iova_ranges()
            s.size = Self.size(vsmmu_iommu_ioas_iova_ranges.self)
            s.ioas_id = ioas
            s.num_iovas = capacity
            do throws(KernelCallError) {
                try buffer.withUnsafeMutableBufferPointer { (b) throws(KernelCallError) in
                    s.allowed_iovas = UInt64(UInt(bitPattern: b.baseAddress))
                    try call(.ioasIovaRanges(fd: fd, ioas: ioas, numIovas: capacity), fd, &s)
                }
            } catch {
                // EMSGSIZE comes after num_iovas was written back with the count needed (docs/kernel-interface.md §2.4).
                if error.errno == .EMSGSIZE, s.num_iovas > capacity { capacity = s.num_iovas; continue }
                throw error
            }
            let ranges = buffer.prefix(Int(min(s.num_iovas, capacity))).map { IovaRange(start: $0.start, last: $0.last) }
            return (ranges, s.out_iova_alignment)
        }
    }

    public func ioasMap(_ fd: Int32, ioas: ObjectID, flags: IOASMapFlags, userVA: UInt64, length: UInt64, iova: UInt64) throws(KernelCallError) -> UInt64 {
        var s = vsmmu_iommu_ioas_map(size: Self.size(vsmmu_iommu_ioas_map.self), flags: flags.rawValue, ioas_id: ioas, __reserved: 0,
                                     user_va: userVA, length: length, iova: iova)
        try call(.ioasMap(fd: fd, ioas: ioas, flags: flags, source: .userVA(userVA), length: length, iova: iova), fd, &s)
        return s.iova
    }

    public func ioasMapFile(_ fd: Int32, ioas: ObjectID, flags: IOASMapFlags, file: Int32, start: UInt64, length: UInt64, iova: UInt64) throws(KernelCallError) -> UInt64 {
        var s = vsmmu_iommu_ioas_map_file(size: Self.size(vsmmu_iommu_ioas_map_file.self), flags: flags.rawValue, ioas_id: ioas, fd: file,
                                          start: start, length: length, iova: iova)
        try call(.ioasMap(fd: fd, ioas: ioas, flags: flags, source: .file(KernelFile(fd: file), offset: start), length: length, iova: iova), fd, &s)
        return s.iova
    }

    public func ioasUnmap(_ fd: Int32, ioas: ObjectID, iova: UInt64, length: UInt64) throws(KernelCallError) -> UInt64 {
        var s = vsmmu_iommu_ioas_unmap(size: Self.size(vsmmu_iommu_ioas_unmap.self), ioas_id: ioas, iova: iova, length: length)
        try call(.ioasUnmap(fd: fd, ioas: ioas, iova: iova, length: length), fd, &s)
        return s.length
    }

    public func hwptAlloc(_ fd: Int32, flags: HWPTAllocFlags, devID: ObjectID, ptID: ObjectID, dataType: HWPTDataType, data: [UInt8]) throws(KernelCallError) -> ObjectID {
        var s = vsmmu_iommu_hwpt_alloc()
        s.size = Self.size(vsmmu_iommu_hwpt_alloc.self)
        s.flags = flags.rawValue
        s.dev_id = devID
        s.pt_id = ptID
        s.data_type = dataType.rawValue
        s.data_len = UInt32(data.count)
        var payload = data
        try withBytes(&payload) { (b) throws(KernelCallError) in
            s.data_uptr = data.isEmpty ? 0 : UInt64(UInt(bitPattern: b.baseAddress))
            try call(.hwptAlloc(fd: fd, flags: flags, devID: devID, ptID: ptID, dataType: dataType, dataLength: data.count), fd, &s)
        }
        return s.out_hwpt_id
    }

    public func hwptInvalidate(_ fd: Int32, hwptID: ObjectID, dataType: InvalidateDataType, entryLen: UInt32, entryNum: UInt32, entries: [UInt8]) throws(KernelCallError) -> UInt32 {
        var s = vsmmu_iommu_hwpt_invalidate()
        s.size = Self.size(vsmmu_iommu_hwpt_invalidate.self)
        s.hwpt_id = hwptID
        s.data_type = dataType.rawValue
        s.entry_len = entryLen
        s.entry_num = entryNum
        var payload = entries
        try withBytes(&payload) { (b) throws(KernelCallError) in
            s.data_uptr = entries.isEmpty ? 0 : UInt64(UInt(bitPattern: b.baseAddress))
            try call(.hwptInvalidate(fd: fd, hwptID: hwptID, dataType: dataType, entryLen: entryLen, entryNum: entryNum), fd, &s)
        }
        return s.entry_num
    }

    public func getHwInfo(_ fd: Int32, devID: ObjectID, requestType: HWInfoType?) throws(KernelCallError) -> HwInfo {
        var buffer = [UInt8](repeating: 0, count: 64)
        var s = vsmmu_iommu_hw_info()
        s.size = Self.size(vsmmu_iommu_hw_info.self)
        s.flags = requestType == nil ? 0 : HWInfoFlags.inputType.rawValue
        s.dev_id = devID
        s.data_len = UInt32(buffer.count)
        s.data_type = requestType?.rawValue ?? 0
        try withBytes(&buffer) { (b) throws(KernelCallError) in
            s.data_uptr = UInt64(UInt(bitPattern: b.baseAddress))
            try call(.getHwInfo(fd: fd, devID: devID, requestType: requestType), fd, &s)
        }
        return HwInfo(dataType: HWInfoType(rawValue: s.data_type), data: Array(buffer.prefix(Int(min(s.data_len, UInt32(buffer.count))))),
                      maxPasidLog2: s.out_max_pasid_log2, capabilities: HWInfoCapabilities(rawValue: s.out_capabilities))
    }

    public func viommuAlloc(_ fd: Int32, type: VIOMMUType, devID: ObjectID, hwptID: ObjectID, data: [UInt8]) throws(KernelCallError) -> (id: ObjectID, dataOut: [UInt8]) {
        var s = vsmmu_iommu_viommu_alloc()
        s.size = Self.size(vsmmu_iommu_viommu_alloc.self)
        s.type = type.rawValue
        s.dev_id = devID
        s.hwpt_id = hwptID
        s.data_len = UInt32(data.count)
        var payload = data
        try withBytes(&payload) { (b) throws(KernelCallError) in
            s.data_uptr = data.isEmpty ? 0 : UInt64(UInt(bitPattern: b.baseAddress))
            try call(.viommuAlloc(fd: fd, type: type, devID: devID, hwptID: hwptID, dataLength: data.count), fd, &s)
        }
        return (s.out_viommu_id, payload)
    }

    public func vdeviceAlloc(_ fd: Int32, viommuID: ObjectID, devID: ObjectID, virtID: UInt64) throws(KernelCallError) -> ObjectID {
        var s = vsmmu_iommu_vdevice_alloc(size: Self.size(vsmmu_iommu_vdevice_alloc.self), viommu_id: viommuID, dev_id: devID,
                                          out_vdevice_id: 0, virt_id: virtID)
        try call(.vdeviceAlloc(fd: fd, viommuID: viommuID, devID: devID, virtID: virtID), fd, &s)
        return s.out_vdevice_id
    }

    public func veventqAlloc(_ fd: Int32, viommuID: ObjectID, type: VEventQType, depth: UInt32) throws(KernelCallError) -> (id: ObjectID, eventFD: Int32) {
        var s = vsmmu_iommu_veventq_alloc()
        s.size = Self.size(vsmmu_iommu_veventq_alloc.self)
        s.viommu_id = viommuID
        s.type = type.rawValue
        s.veventq_depth = depth
        try call(.veventqAlloc(fd: fd, viommuID: viommuID, type: type, depth: depth), fd, &s)
        return (s.out_veventq_id, Int32(bitPattern: s.out_veventq_fd))
    }

    public func hwQueueAlloc(_ fd: Int32, viommuID: ObjectID, type: HWQueueType, index: UInt32, iova: UInt64, length: UInt64) throws(KernelCallError) -> ObjectID {
        var s = vsmmu_iommu_hw_queue_alloc(size: Self.size(vsmmu_iommu_hw_queue_alloc.self), flags: 0, viommu_id: viommuID, type: type.rawValue,
                                           index: index, out_hw_queue_id: 0, nesting_parent_iova: iova, length: length)
        try call(.hwQueueAlloc(fd: fd, viommuID: viommuID, type: type, index: index, iova: iova, length: length), fd, &s)
        return s.out_hw_queue_id
    }

    public func mockDomain(_ fd: Int32, ptID: ObjectID) throws(KernelCallError) -> MockDevice {
        var s = vsmmu_iommu_test_cmd()
        s.size = Self.size(vsmmu_iommu_test_cmd.self)
        s.op = UInt32(VSMMU_IOMMU_TEST_OP_MOCK_DOMAIN)
        s.id = ptID
        try call(.mockDomain(fd: fd, ptID: ptID), fd, &s)
        return MockDevice(stdevID: s.mock_domain.out_stdev_id, hwptID: s.mock_domain.out_hwpt_id, idevID: s.mock_domain.out_idev_id)
    }

    public func mockDomainReplace(_ fd: Int32, stdevID: ObjectID, ptID: ObjectID) throws(KernelCallError) -> ObjectID {
        var s = vsmmu_iommu_test_cmd()
        s.size = Self.size(vsmmu_iommu_test_cmd.self)
        s.op = UInt32(VSMMU_IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE)
        s.id = stdevID
        s.mock_domain_replace.pt_id = ptID
        try call(.mockDomainReplace(fd: fd, stdevID: stdevID, ptID: ptID), fd, &s)
        return s.mock_domain_replace.pt_id
    }

    public func bindIommufd(_ dev: Int32, iommufd: Int32) throws(KernelCallError) -> ObjectID {
        var s = vsmmu_vfio_device_bind_iommufd(argsz: Self.size(vsmmu_vfio_device_bind_iommufd.self), flags: 0, iommufd: iommufd,
                                               out_devid: 0, token_uuid_ptr: 0)
        try call(.bindIommufd(dev: dev, iommufd: iommufd), dev, &s)
        return s.out_devid
    }

    public func attach(_ dev: Int32, ptID: ObjectID) throws(KernelCallError) -> ObjectID {
        var s = vsmmu_vfio_device_attach_iommufd_pt(argsz: Self.size(vsmmu_vfio_device_attach_iommufd_pt.self), flags: 0, pt_id: ptID, pasid: 0)
        try call(.attach(dev: dev, ptID: ptID), dev, &s)
        return s.pt_id
    }

    public func detach(_ dev: Int32) throws(KernelCallError) {
        var s = vsmmu_vfio_device_detach_iommufd_pt(argsz: Self.size(vsmmu_vfio_device_detach_iommufd_pt.self), flags: 0, pasid: 0)
        try call(.detach(dev: dev), dev, &s)
    }

    public func deviceInfo(_ dev: Int32) throws(KernelCallError) -> (flags: UInt32, regions: UInt32, irqs: UInt32) {
        var s = vsmmu_vfio_device_info()
        s.argsz = Self.size(vsmmu_vfio_device_info.self)
        try call(.deviceGetInfo(dev: dev), dev, &s)
        return (s.flags, s.num_regions, s.num_irqs)
    }
}

/// Array.withUnsafeMutableBytes for a body with typed throws.
func withBytes<R>(_ a: inout [UInt8], _ body: (UnsafeMutableRawBufferPointer) throws(KernelCallError) -> R) throws(KernelCallError) -> R {
    var result: Result<R, KernelCallError>?
    a.withUnsafeMutableBytes { b in
        do throws(KernelCallError) { result = .success(try body(b)) } catch { result = .failure(error) }
    }
    return try result!.get()
}

#endif
