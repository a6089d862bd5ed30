#if os(Linux)
import CVsmmuUAPI
import Foundation
import Glibc
import VsmmuKernel

/// The kernel port on the real kernel: ioctls on /dev/iommu and /dev/vfio/devices/vfioN
/// through one `IoctlTransport`, sysfs through `SysfsTree`. `devRoot` and `sysfs` move
/// for tests; production uses /dev and /sys.
public final class LinuxKernel: KernelPort {
    public let calls: IoctlCalls
    public let sysfs: any SysfsAccess
    public let devRoot: String
    public private(set) var mutatingCalls = 0
    /// Every fd this port opened and has not closed: a close is done once, a second
    /// close of the same number is refused (it could be some other file by then).
    private var owned = Set<Int32>()
    private let ownedLock = NSLock()

    func own(_ fd: Int32) -> Int32 { ownedLock.lock(); owned.insert(fd); ownedLock.unlock(); return fd }

    /// close(2) of an fd this port opened, at most once.
    func closeOwned(_ fd: Int32) {
        ownedLock.lock()
        let mine = owned.remove(fd) != nil
        ownedLock.unlock()
        mutatingCalls += 1
        if mine { _ = Glibc.close(fd) }
    }

    let sysfsRootPath: String

    public init(transport: IoctlTransport = SystemIoctl(), sysfsRoot: String = "/sys", devRoot: String = "/dev") {
        calls = IoctlCalls(transport: transport)
        sysfs = SysfsTree(root: sysfsRoot)
        sysfsRootPath = sysfsRoot
        self.devRoot = devRoot
    }

    public init(transport: IoctlTransport, sysfs: any SysfsAccess, devRoot: String, sysfsRoot: String = "/sys") {
        calls = IoctlCalls(transport: transport)
        self.sysfs = sysfs
        sysfsRootPath = sysfsRoot
        self.devRoot = devRoot
    }

    public var hasIommufd: Bool { FileManager.default.fileExists(atPath: devRoot + "/iommu") }
    /// VFIO cdev support: /dev/vfio/devices appears only while some device is on a VFIO
    /// driver (seen on the lab's 7.2 kernel), so the vfio-dev class in sysfs counts too.
    public var hasVfioCdev: Bool {
        FileManager.default.fileExists(atPath: devRoot + "/vfio/devices")
            || FileManager.default.fileExists(atPath: sysfsRootPath + "/class/vfio-dev")
    }

    @discardableResult
    func mutating<T>(_ body: () throws(KernelCallError) -> T) throws(KernelCallError) -> T {
        mutatingCalls += 1
        return try body()
    }

    func openFile(_ call: String, _ path: String) throws(KernelCallError) -> Int32 {
        var fd: Int32
        repeat { fd = open(path, O_RDWR | O_CLOEXEC) } while fd < 0 && errno == EINTR
        guard fd >= 0 else { throw KernelCallError(call, Errno(errno), path) }
        return own(fd)
    }

    // MARK: iommufd

    public func openIommufd() throws(KernelCallError) -> IommufdHandle {
        try mutating { () throws(KernelCallError) in IommufdHandle(fd: try openFile("OPEN_IOMMUFD", devRoot + "/iommu")) }
    }

    public func close(_ iommufd: IommufdHandle) { closeOwned(iommufd.fd) }

    public func destroy(_ fd: IommufdHandle, id: ObjectID) throws(KernelCallError) {
        try mutating { () throws(KernelCallError) in try calls.destroy(fd.fd, id: id) }
    }

    public func ioasAlloc(_ fd: IommufdHandle) throws(KernelCallError) -> ObjectID {
        try mutating { () throws(KernelCallError) in try calls.ioasAlloc(fd.fd) }
    }

    public func ioasIovaRanges(_ fd: IommufdHandle, ioas: ObjectID) throws(KernelCallError) -> (ranges: [IovaRange], alignment: UInt64) {
        try calls.ioasIovaRanges(fd.fd, ioas: ioas)
    }

    public func ioasMap(_ fd: IommufdHandle, ioas: ObjectID, flags: UInt32, source: MapSource, length: UInt64, iova: UInt64) throws(KernelCallError) -> UInt64 {
        try mutating { () throws(KernelCallError) in
            switch source {
            case .userVA(let va): return try calls.ioasMap(fd.fd, ioas: ioas, flags: flags, userVA: va, length: length, iova: iova)
            case .file(let f, let offset): return try calls.ioasMapFile(fd.fd, ioas: ioas, flags: flags, file: f.fd, start: offset, length: length, iova: iova)
            }
        }
    }

    public func ioasUnmap(_ fd: IommufdHandle, ioas: ObjectID, iova: UInt64, length: UInt64) throws(KernelCallError) -> UInt64 {
        try mutating { () throws(KernelCallError) in try calls.ioasUnmap(fd.fd, ioas: ioas, iova: iova, length: length) }
    }

    public func hwptAlloc(_ fd: IommufdHandle, flags: UInt32, devID: ObjectID, ptID: ObjectID, dataType: UInt32, data: [UInt8]) throws(KernelCallError) -> ObjectID {
        try mutating { () throws(KernelCallError) in try calls.hwptAlloc(fd.fd, flags: flags, devID: devID, ptID: ptID, dataType: dataType, data: data) }
    }

    public func getHwInfo(_ fd: IommufdHandle, devID: ObjectID, requestType: UInt32?) throws(KernelCallError) -> HwInfo {
        try calls.getHwInfo(fd.fd, devID: devID, requestType: requestType)
    }

    public func viommuAlloc(_ fd: IommufdHandle, type: UInt32, devID: ObjectID, hwptID: ObjectID, data: [UInt8]) throws(KernelCallError) -> (id: ObjectID, dataOut: [UInt8]) {
        try mutating { () throws(KernelCallError) in try calls.viommuAlloc(fd.fd, type: type, devID: devID, hwptID: hwptID, data: data) }
    }

    public func vdeviceAlloc(_ fd: IommufdHandle, viommuID: ObjectID, devID: ObjectID, virtID: UInt64) throws(KernelCallError) -> ObjectID {
        try mutating { () throws(KernelCallError) in try calls.vdeviceAlloc(fd.fd, viommuID: viommuID, devID: devID, virtID: virtID) }
    }

    public func veventqAlloc(_ fd: IommufdHandle, viommuID: ObjectID, type: UInt32, depth: UInt32) throws(KernelCallError) -> (id: ObjectID, eventFD: KernelFile) {
        try mutating { () throws(KernelCallError) in
            let r = try calls.veventqAlloc(fd.fd, viommuID: viommuID, type: type, depth: depth)
            return (r.id, KernelFile(fd: own(r.eventFD)))
        }
    }

    public func closeEventFD(_ fd: IommufdHandle, _ eventFD: KernelFile) { closeOwned(eventFD.fd) }

    public func hwQueueAlloc(_ fd: IommufdHandle, viommuID: ObjectID, type: UInt32, index: UInt32, iova: UInt64, length: UInt64) throws(KernelCallError) -> ObjectID {
        try mutating { () throws(KernelCallError) in try calls.hwQueueAlloc(fd.fd, viommuID: viommuID, type: type, index: index, iova: iova, length: length) }
    }

    public func mockDomain(_ fd: IommufdHandle, ptID: ObjectID) throws(KernelCallError) -> MockDevice {
        try mutating { () throws(KernelCallError) in try calls.mockDomain(fd.fd, ptID: ptID) }
    }

    public func mockDomainReplace(_ fd: IommufdHandle, stdevID: ObjectID, ptID: ObjectID) throws(KernelCallError) -> ObjectID {
        try mutating { () throws(KernelCallError) in try calls.mockDomainReplace(fd.fd, stdevID: stdevID, ptID: ptID) }
    }

    // MARK: VFIO cdev

    public func openVfioDevice(index: Int) throws(KernelCallError) -> DeviceHandle {
        try mutating { () throws(KernelCallError) in DeviceHandle(fd: try openFile("OPEN_VFIO_DEVICE", devRoot + "/vfio/devices/vfio\(index)")) }
    }

    public func bindIommufd(_ dev: DeviceHandle, iommufd: IommufdHandle) throws(KernelCallError) -> ObjectID {
        try mutating { () throws(KernelCallError) in try calls.bindIommufd(dev.fd, iommufd: iommufd.fd) }
    }

    public func attach(_ dev: DeviceHandle, ptID: ObjectID) throws(KernelCallError) -> ObjectID {
        try mutating { () throws(KernelCallError) in try calls.attach(dev.fd, ptID: ptID) }
    }

    public func detach(_ dev: DeviceHandle) throws(KernelCallError) {
        try mutating { () throws(KernelCallError) in try calls.detach(dev.fd) }
    }

    public func close(_ dev: DeviceHandle) { closeOwned(dev.fd) }

    // MARK: guest memory

    public func createGuestMemory(name: String, size: UInt64, backing: GuestMemoryBacking, hugepageSize: UInt64?) throws(KernelCallError) -> GuestMemory {
        try mutating { () throws(KernelCallError) in
            let huge = hugepageSize.map { UInt32($0.trailingZeroBitCount) }
            switch backing {
            case .memfd, .hugetlbfs:
                // memfd (MFD_HUGETLB for huge pages): mapped into the IOAS by IOAS_MAP_FILE and
                // by the VMM itself, never into this process (reference §9.16).
                let fd = vsmmu_memfd_create(name, vsmmu_memfd_flags(huge != nil || backing == .hugetlbfs ? 1 : 0, huge ?? 0))
                guard fd >= 0 else { throw KernelCallError("MEMFD_CREATE", Errno(-fd), "name=\(name)") }
                guard ftruncate(fd, off_t(truncatingIfNeeded: size)) == 0 else {
                    let e = errno
                    _ = Glibc.close(fd)
                    throw KernelCallError("MEMFD_CREATE", Errno(e), "ftruncate \(name) to \(size)")
                }
                return GuestMemory(file: KernelFile(fd: own(fd)), userVA: 0, size: size)
            case .anonymous:
                var flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE
                if let huge { flags |= MAP_HUGETLB | Int32(bitPattern: huge << 26) }
                guard let p = mmap(nil, Int(size), PROT_READ | PROT_WRITE, flags, -1, 0), p != MAP_FAILED else {
                    throw KernelCallError("MMAP_ANON", Errno(errno), "size=\(size)")
                }
                return GuestMemory(file: nil, userVA: UInt64(UInt(bitPattern: p)), size: size)
            }
        }
    }

    public func releaseGuestMemory(_ memory: GuestMemory) {
        if let f = memory.file { closeOwned(f.fd) } else { mutatingCalls += 1 }
        if memory.userVA != 0, let p = UnsafeMutableRawPointer(bitPattern: UInt(memory.userVA)) { _ = munmap(p, Int(memory.size)) }
    }

    // MARK: sysfs

    public func pciDevices() throws(KernelCallError) -> [SysfsPCIDevice] {
        try sysfs.pciAddresses().compactMap { sysfs.device($0) }
    }

    public func pciDevice(_ address: PCIAddress) throws(KernelCallError) -> SysfsPCIDevice? { sysfs.device(address) }
    public func iommuGroupMembers(_ group: Int) throws(KernelCallError) -> [PCIAddress] { sysfs.groupMembers(group) }
    public func iommuNames() throws(KernelCallError) -> [String] { sysfs.iommuNames() }
    public func reservedRegions(group: Int) throws(KernelCallError) -> [(start: UInt64, last: UInt64, type: String)] { sysfs.reservedRegions(group: group) }
    public func driverLoaded(_ name: String) throws(KernelCallError) -> Bool { sysfs.driverLoaded(name) }

    public func writeDriverOverride(_ address: PCIAddress, _ driver: String?) throws(KernelCallError) {
        try mutating { () throws(KernelCallError) in try sysfs.writeDriverOverride(address, driver) }
    }

    public func unbindDriver(_ address: PCIAddress, driver: String) throws(KernelCallError) {
        try mutating { () throws(KernelCallError) in try sysfs.unbind(address, driver: driver) }
    }

    public func driversProbe(_ address: PCIAddress) throws(KernelCallError) {
        try mutating { () throws(KernelCallError) in try sysfs.driversProbe(address) }
    }

    // MARK: this process's files

    public func openFiles() throws(KernelCallError) -> [OpenFileInfo] {
        guard let fds = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") else {
            throw KernelCallError("PROC_FD", .ENOENT, "/proc/self/fd")
        }
        var out: [OpenFileInfo] = []
        for name in fds {
            guard let fd = Int32(name), fd > 2, let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(name)") else { continue }
            let kind: OpenFileInfo.Kind
            if target == devRoot + "/iommu" {
                kind = .iommufd
            } else if target.hasPrefix(devRoot + "/vfio/devices/vfio") {
                // fdinfo names the device: `vfio-device-syspath: /sys/devices/.../0000:09:01.0`
                let info = (try? String(contentsOfFile: "/proc/self/fdinfo/\(name)", encoding: .utf8)) ?? ""
                let path = info.split(separator: "\n").first { $0.hasPrefix("vfio-device-syspath:") }
                kind = .vfioDevice(path.flatMap { PCIAddress(String($0.split(separator: "/").last ?? "")) })
            } else if target.contains("[iommufd-viommu-event]") {
                kind = .eventQueue
            } else if target.hasPrefix("/memfd:vsmmu:") {
                kind = .memfd
            } else {
                kind = .other
            }
            out.append(OpenFileInfo(fd: fd, kind: kind))
        }
        return out.sorted { $0.fd < $1.fd }
    }

    /// Orphans found in /proc/self/fd were opened by this process but not recorded.
    public func closeFile(_ fd: Int32) {
        ownedLock.lock(); owned.remove(fd); ownedLock.unlock()
        mutatingCalls += 1
        _ = Glibc.close(fd)
    }

    // MARK: ownership

    public func chownVfioDevice(index: Int, uid: UInt32, gid: UInt32) throws(KernelCallError) {
        try mutating { () throws(KernelCallError) in
            let path = devRoot + "/vfio/devices/vfio\(index)"
            guard chown(path, uid, gid) == 0 else { throw KernelCallError("CHOWN_VFIO_DEVICE", Errno(errno), path) }
        }
    }

    public func vfioDeviceOwner(index: Int) throws(KernelCallError) -> (uid: UInt32, gid: UInt32)? {
        var st = stat()
        guard stat(devRoot + "/vfio/devices/vfio\(index)", &st) == 0 else { return nil }
        return (st.st_uid, st.st_gid)
    }
}
#endif
