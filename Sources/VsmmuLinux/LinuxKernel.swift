#if os(Linux)
import CVsmmuUAPI
import Foundation
import Glibc
import VsmmuKernel

/// The kernel port on the real kernel: ioctls on /dev/iommu and /dev/vfio/devices/vfioN
/// through one `IoctlTransport`, every other system call through one `HostFiles`, sysfs
/// through `SysfsTree`. Both seams are this machine's by default, or a remote executor's
/// (`init(remote:)`). `devRoot` and `sysfs` move for tests; production uses /dev and /sys.
public final class LinuxKernel: KernelPort {
    public let calls: IoctlCalls
    public let sysfs: any SysfsAccess
    public let files: any HostFiles
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
        if mine { files.close(fd) }
    }

    let sysfsRootPath: String
    /// PAGE_SIZE once read: a running kernel's never changes, and reading it (smaps) walks
    /// every mapping of the reader, on each plan of the agent (docs/live-speed.md §3).
    var pageSizeRead: UInt64?
    /// Where procfs is mounted: who holds a device open (tests move it).
    public var procRoot = "/proc"

    public init(transport: IoctlTransport = SystemIoctl(), files: any HostFiles = LocalHostFiles(), sysfsRoot: String = "/sys", devRoot: String = "/dev") {
        calls = IoctlCalls(transport: transport)
        self.files = files
        sysfs = SysfsTree(root: sysfsRoot, files: files)
        sysfsRootPath = sysfsRoot
        self.devRoot = devRoot
    }

    public init(transport: IoctlTransport, sysfs: any SysfsAccess, devRoot: String, sysfsRoot: String = "/sys", files: any HostFiles = LocalHostFiles()) {
        calls = IoctlCalls(transport: transport)
        self.sysfs = sysfs
        self.files = files
        sysfsRootPath = sysfsRoot
        self.devRoot = devRoot
    }

    /// Every call goes to the kernel behind a vsmmu-remote executor, at its /dev and /sys
    /// (the executor's `--root` moves them, not this side).
    public convenience init(remote: RemoteExecutor) {
        self.init(transport: remote, files: remote, sysfsRoot: "/sys", devRoot: "/dev")
    }

    public var hasIommufd: Bool { files.exists(devRoot + "/iommu") }
    public var holderIdentity: String { files.processIdentity }
    /// VFIO cdev support: /dev/vfio/devices appears only while some device is on a VFIO
    /// driver (seen on the lab's 7.2 kernel), so the vfio-dev class in sysfs counts too.
    public var hasVfioCdev: Bool {
        files.exists(devRoot + "/vfio/devices") || files.exists(sysfsRootPath + "/class/vfio-dev")
    }

    @discardableResult
    func mutating<T>(_ body: () throws(KernelCallError) -> T) throws(KernelCallError) -> T {
        mutatingCalls += 1
        return try body()
    }

    func openFile(_ call: KernelCall, _ path: String) throws(KernelCallError) -> Int32 {
        do { return own(try files.open(path, flags: O_RDWR)) } catch { throw error.renamed(call) }
    }

    // MARK: iommufd

    public func openIommufd() throws(KernelCallError) -> IommufdHandle {
        try mutating { () throws(KernelCallError) in IommufdHandle(fd: try openFile(.openIommufd, devRoot + "/iommu")) }
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

    public func ioasMap(_ fd: IommufdHandle, ioas: ObjectID, flags: IOASMapFlags, source: MapSource, length: UInt64, iova: UInt64) throws(KernelCallError) -> UInt64 {
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

    public func hwptAlloc(_ fd: IommufdHandle, flags: HWPTAllocFlags, devID: ObjectID, ptID: ObjectID, dataType: HWPTDataType, data: [UInt8]) throws(KernelCallError) -> ObjectID {
        try mutating { () throws(KernelCallError) in try calls.hwptAlloc(fd.fd, flags: flags, devID: devID, ptID: ptID, dataType: dataType, data: data) }
    }

    public func getHwInfo(_ fd: IommufdHandle, devID: ObjectID, requestType: HWInfoType?) throws(KernelCallError) -> HwInfo {
        try calls.getHwInfo(fd.fd, devID: devID, requestType: requestType)
    }

    public func viommuAlloc(_ fd: IommufdHandle, type: VIOMMUType, devID: ObjectID, hwptID: ObjectID, data: [UInt8]) throws(KernelCallError) -> (id: ObjectID, dataOut: [UInt8]) {
        try mutating { () throws(KernelCallError) in try calls.viommuAlloc(fd.fd, type: type, devID: devID, hwptID: hwptID, data: data) }
    }

    public func vdeviceAlloc(_ fd: IommufdHandle, viommuID: ObjectID, devID: ObjectID, virtID: UInt64) throws(KernelCallError) -> ObjectID {
        try mutating { () throws(KernelCallError) in try calls.vdeviceAlloc(fd.fd, viommuID: viommuID, devID: devID, virtID: virtID) }
    }

    public func veventqAlloc(_ fd: IommufdHandle, viommuID: ObjectID, type: VEventQType, depth: UInt32) throws(KernelCallError) -> (id: ObjectID, eventFD: KernelFile) {
        try mutating { () throws(KernelCallError) in
            let r = try calls.veventqAlloc(fd.fd, viommuID: viommuID, type: type, depth: depth)
            return (r.id, KernelFile(fd: own(r.eventFD)))
        }
    }

    public func closeEventFD(_ fd: IommufdHandle, _ eventFD: KernelFile) { closeOwned(eventFD.fd) }

    public func hwQueueAlloc(_ fd: IommufdHandle, viommuID: ObjectID, type: HWQueueType, index: UInt32, iova: UInt64, length: UInt64) throws(KernelCallError) -> ObjectID {
        try mutating { () throws(KernelCallError) in try calls.hwQueueAlloc(fd.fd, viommuID: viommuID, type: type, index: index, iova: iova, length: length) }
    }

    public func iommuOption(_ fd: IommufdHandle, option: IommuOption, objectID: ObjectID, set value: UInt64?) throws(KernelCallError) -> UInt64 {
        try mutating { () throws(KernelCallError) in try calls.option(fd.fd, option: option, objectID: objectID, value: value) }
    }

    public func limitLockedMemory(_ bytes: UInt64?) throws(KernelCallError) { try files.limitLockedMemory(bytes) }

    public func mockDomain(_ fd: IommufdHandle, ptID: ObjectID) throws(KernelCallError) -> MockDevice {
        try mutating { () throws(KernelCallError) in try calls.mockDomain(fd.fd, ptID: ptID) }
    }

    public func mockDomainReplace(_ fd: IommufdHandle, stdevID: ObjectID, ptID: ObjectID) throws(KernelCallError) -> ObjectID {
        try mutating { () throws(KernelCallError) in try calls.mockDomainReplace(fd.fd, stdevID: stdevID, ptID: ptID) }
    }

    // MARK: VFIO cdev

    public func openVfioDevice(index: Int) throws(KernelCallError) -> DeviceHandle {
        try mutating { () throws(KernelCallError) in DeviceHandle(fd: try openFile(.openVfioDevice, devRoot + "/vfio/devices/vfio\(index)")) }
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
                // by the VMM itself, never into this process (docs/kernel-interface.md §9.16).
                let flags = vsmmu_memfd_flags(huge != nil || backing == .hugetlbfs ? 1 : 0, huge ?? 0)
                do throws(KernelCallError) {
                    return GuestMemory(file: KernelFile(fd: own(try files.memfd(name: name, size: size, flags: flags))), userVA: 0, size: size)
                } catch { throw error.renamed(.memfdCreate) }
            case .anonymous:
                do throws(KernelCallError) {
                    return GuestMemory(file: nil, userVA: try files.mapAnonymous(size: size, hugepageLog2: huge), size: size)
                } catch { throw error.renamed(.mmapAnon) }
            }
        }
    }

    public func releaseGuestMemory(_ memory: GuestMemory) {
        if let f = memory.file { closeOwned(f.fd) } else { mutatingCalls += 1 }
        if memory.userVA != 0 { files.unmap(address: memory.userVA, size: memory.size) }
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
        var out: [OpenFileInfo] = []
        for held in try files.heldFiles() {
            let fd = held.fd, target = held.target
            guard fd > 2 else { continue }
            let kind: OpenFileInfo.Kind
            if target == devRoot + "/iommu" {
                kind = .iommufd
            } else if target.hasPrefix(devRoot + "/vfio/devices/vfio") {
                // fdinfo names the device: `vfio-device-syspath: /sys/devices/.../0000:09:01.0`
                let path = held.fdinfo.split(separator: "\n").first { $0.hasPrefix("vfio-device-syspath:") }
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
        files.close(fd)
    }

    // MARK: ownership

    public func chownVfioDevice(index: Int, uid: UInt32, gid: UInt32) throws(KernelCallError) {
        try mutating { () throws(KernelCallError) in
            do throws(KernelCallError) { try files.chown(devRoot + "/vfio/devices/vfio\(index)", uid: uid, gid: gid) } catch { throw error.renamed(.chownVfioDevice) }
        }
    }

    public func vfioDeviceOwner(index: Int) throws(KernelCallError) -> (uid: UInt32, gid: UInt32)? {
        guard let st = files.status(devRoot + "/vfio/devices/vfio\(index)") else { return nil }
        return (st.uid, st.gid)
    }
}
#endif
