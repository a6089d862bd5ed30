import Foundation
import VsmmuKernel

/// The simulated Linux kernel: a digital twin of iommufd, the VFIO cdev interface and
/// the sysfs binding files, implementing `KernelPort` with the errnos and check order of
/// reference/iommufd-uapi.md. Used by tests and by `--host` runs without hardware.
///
/// Every call goes through one funnel (`call`, SimFaults.swift) that applies
/// VSMMU_SIM_DELAY_MS and VSMMU_SIM_FAIL, counts mutating calls, traces, and appends
/// mutating calls to the redo log when the kernel is backed by a `SimStore`.
///
/// Not thread-safe: one kernel per thread/task, like one process's view of the kernel.
public final class SimulatedKernel: KernelPort {
    var state: SimState
    var opCounts: [String: Int] = [:]
    var mutatingCallCount = 0
    var store: SimStore?
    /// Derived lookup structures over `state` (never persisted; SimIndexes.swift).
    let indexes = SimIndexes()

    /// The fault-injection rules in force (from VSMMU_SIM_FAIL unless set directly).
    public var failRules: [FailRule]
    /// Milliseconds slept before every call (VSMMU_SIM_DELAY_MS).
    public var delayMS: Int
    /// A bad VSMMU_SIM_FAIL / VSMMU_SIM_DELAY_MS seen by `init`; those settings are then
    /// ignored. `SimStore.open` throws it instead.
    public let configurationError: SimConfigurationError?
    /// Record every call in `trace`.
    public var traceEnabled = false
    public var trace: [SimCall] = []
    /// Set when appending to the redo log failed; `save()` reports it.
    public internal(set) var persistenceError: String?

    /// Builds sysfs from a host description: every device with its driver, vfio-pci
    /// devices with the lowest free vfio index, no override, cdevs owned by root.
    public init(host: HostDescription, environment: [String: String] = ProcessInfo.processInfo.environment) {
        state = SimState(hostName: host.name, kernel: host.kernel, iommus: host.iommus)
        (failRules, delayMS, configurationError) = SimulatedKernel.configure(environment)
        indexes.rebuild(from: state)
        // First entry wins for a duplicated address; devices are added in PCI address
        // order (the bus scan order), which decides the initial vfio indexes.
        var unique: [PCIAddress: HostPCIDevice] = [:]
        for device in host.pciDevices where unique[device.address] == nil { unique[device.address] = device }
        for address in unique.keys.sorted() {
            if let device = unique[address] { addHostDevice(device) }
        }
    }

    /// Rebuilds a kernel from a snapshot (SimStore).
    init(state: SimState, environment: [String: String]) {
        self.state = state
        (failRules, delayMS, configurationError) = SimulatedKernel.configure(environment)
        indexes.rebuild(from: state)
    }

    private static func configure(_ environment: [String: String]) -> ([FailRule], Int, SimConfigurationError?) {
        do {
            let config = try configuration(from: environment)
            return (config.rules, config.delayMS, nil)
        } catch {
            return ([], 0, error)
        }
    }

    // MARK: facts

    public var hasIommufd: Bool { state.kernel.iommufd }
    public var hasVfioCdev: Bool { state.kernel.vfioCdev }
    public var mutatingCalls: Int { mutatingCallCount }
    public var holderIdentity: String { "simulated process \(state.processGeneration)" }

    /// The host description as sysfs shows it now (drivers included).
    public var currentHost: HostDescription {
        let devices = state.devices.values.map(\.hostDevice) + state.ignoredHostDevices
        return HostDescription(name: state.hostName, kernel: state.kernel, iommus: state.iommus,
                               pciDevices: devices.sorted { $0.address < $1.address })
    }

    /// Writes the state to the store (host.yaml, kernel.json) and truncates the redo
    /// log. A kernel without a store has nothing to save.
    public func save() throws {
        guard let store else { return }
        if let persistenceError { throw SimStoreError("the redo log could not be written earlier: \(persistenceError)") }
        try store.save(self)
    }

    /// The holding process exits: every fd it holds closes (cdevs, event fds, memfds,
    /// iommufd handles) and its guest memory is unmapped, so the kernel destroys every
    /// iommufd object (§4.4). Host-level state (drivers, overrides, vfio indexes,
    /// owners) stays (§9.6).
    public func simulateProcessExit() {
        callQuietly("PROCESS_EXIT", .processExit, detail: "") { processExitImpl(); return nil }
    }

    // MARK: iommufd context

    public func openIommufd() throws(KernelCallError) -> IommufdHandle {
        try call("OPEN_IOMMUFD", .openIommufd, detail: "/dev/iommu") { () throws(Refusal) in
            IommufdHandle(fd: try openIommufdImpl())
        }
    }

    public func close(_ iommufd: IommufdHandle) {
        callQuietly("CLOSE_IOMMUFD", .close(fd: iommufd.fd), detail: "fd=\(iommufd.fd)") { closeFD(iommufd.fd) }
    }

    // MARK: iommufd ioctls

    public func destroy(_ fd: IommufdHandle, id: ObjectID) throws(KernelCallError) {
        try call("IOMMU_DESTROY", .destroy(fd: fd.fd, id: id), detail: "fd=\(fd.fd) id=\(id)") { () throws(Refusal) in
            try destroyImpl(fd.fd, id: id)
        }
    }

    public func ioasAlloc(_ fd: IommufdHandle) throws(KernelCallError) -> ObjectID {
        try call("IOMMU_IOAS_ALLOC", .ioasAlloc(fd: fd.fd), detail: "fd=\(fd.fd)") { () throws(Refusal) in
            try ioasAllocImpl(fd.fd)
        }
    }

    public func ioasIovaRanges(_ fd: IommufdHandle, ioas: ObjectID) throws(KernelCallError) -> (ranges: [IovaRange], alignment: UInt64) {
        try call("IOMMU_IOAS_IOVA_RANGES", nil, detail: "fd=\(fd.fd) ioas=\(ioas)") { () throws(Refusal) in
            try ioasIovaRangesImpl(fd.fd, ioas: ioas)
        }
    }

    public func ioasMap(_ fd: IommufdHandle, ioas: ObjectID, flags: UInt32, source: MapSource, length: UInt64, iova: UInt64) throws(KernelCallError) -> UInt64 {
        let op: String
        let from: String
        switch source {
        case .userVA(let va): op = "IOMMU_IOAS_MAP"; from = "user_va=\(hex(va))"
        case .file(let file, let offset): op = "IOMMU_IOAS_MAP_FILE"; from = "file_fd=\(file.fd) start=\(hex(offset))"
        }
        return try call(op, .ioasMap(fd: fd.fd, ioas: ioas, flags: flags, source: source, length: length, iova: iova),
                        detail: "fd=\(fd.fd) ioas=\(ioas) flags=\(hex(flags)) \(from) length=\(hex(length)) iova=\(hex(iova))") { () throws(Refusal) in
            try ioasMapImpl(fd.fd, ioas: ioas, flags: flags, source: source, length: length, iova: iova)
        }
    }

    public func ioasUnmap(_ fd: IommufdHandle, ioas: ObjectID, iova: UInt64, length: UInt64) throws(KernelCallError) -> UInt64 {
        try call("IOMMU_IOAS_UNMAP", .ioasUnmap(fd: fd.fd, ioas: ioas, iova: iova, length: length),
                 detail: "fd=\(fd.fd) ioas=\(ioas) iova=\(hex(iova)) length=\(hex(length))") { () throws(Refusal) in
            try ioasUnmapImpl(fd.fd, ioas: ioas, iova: iova, length: length)
        }
    }

    public func hwptAlloc(_ fd: IommufdHandle, flags: UInt32, devID: ObjectID, ptID: ObjectID, dataType: UInt32, data: [UInt8]) throws(KernelCallError) -> ObjectID {
        try call("IOMMU_HWPT_ALLOC", .hwptAlloc(fd: fd.fd, flags: flags, devID: devID, ptID: ptID, dataType: dataType, data: data),
                 detail: "fd=\(fd.fd) flags=\(hex(flags)) dev_id=\(devID) pt_id=\(ptID) data_type=\(hex(dataType)) data_len=\(data.count)") { () throws(Refusal) in
            try hwptAllocImpl(fd.fd, flags: flags, devID: devID, ptID: ptID, dataType: dataType, data: data)
        }
    }

    public func getHwInfo(_ fd: IommufdHandle, devID: ObjectID, requestType: UInt32?) throws(KernelCallError) -> HwInfo {
        try call("IOMMU_GET_HW_INFO", nil, detail: "fd=\(fd.fd) dev_id=\(devID)" + (requestType.map { " in_data_type=\(hex($0))" } ?? "")) { () throws(Refusal) in
            try hwInfoImpl(fd.fd, devID: devID, requestType: requestType)
        }
    }

    public func viommuAlloc(_ fd: IommufdHandle, type: UInt32, devID: ObjectID, hwptID: ObjectID, data: [UInt8]) throws(KernelCallError) -> (id: ObjectID, dataOut: [UInt8]) {
        try call("IOMMU_VIOMMU_ALLOC", .viommuAlloc(fd: fd.fd, type: type, devID: devID, hwptID: hwptID, data: data),
                 detail: "fd=\(fd.fd) type=\(hex(type)) dev_id=\(devID) hwpt_id=\(hwptID) data_len=\(data.count)") { () throws(Refusal) in
            try viommuAllocImpl(fd.fd, type: type, devID: devID, hwptID: hwptID, data: data)
        }
    }

    public func hwptInvalidate(_ fd: IommufdHandle, hwptID: ObjectID, dataType: UInt32, entryLen: UInt32, entryNum: UInt32, entries: [UInt8]) throws(KernelCallError) -> UInt32 {
        try call("IOMMU_HWPT_INVALIDATE", nil,
                 detail: "fd=\(fd.fd) hwpt_id=\(hwptID) data_type=\(dataType) entry_len=\(entryLen) entry_num=\(entryNum)") { () throws(Refusal) in
            try hwptInvalidateImpl(fd.fd, hwptID: hwptID, dataType: dataType, entryLen: entryLen, entryNum: entryNum, entries: entries)
        }
    }

    public func vdeviceAlloc(_ fd: IommufdHandle, viommuID: ObjectID, devID: ObjectID, virtID: UInt64) throws(KernelCallError) -> ObjectID {
        try call("IOMMU_VDEVICE_ALLOC", .vdeviceAlloc(fd: fd.fd, viommuID: viommuID, devID: devID, virtID: virtID),
                 detail: "fd=\(fd.fd) viommu_id=\(viommuID) dev_id=\(devID) virt_id=\(hex(virtID))") { () throws(Refusal) in
            try vdeviceAllocImpl(fd.fd, viommuID: viommuID, devID: devID, virtID: virtID)
        }
    }

    public func veventqAlloc(_ fd: IommufdHandle, viommuID: ObjectID, type: UInt32, depth: UInt32) throws(KernelCallError) -> (id: ObjectID, eventFD: KernelFile) {
        try call("IOMMU_VEVENTQ_ALLOC", .veventqAlloc(fd: fd.fd, viommuID: viommuID, type: type, depth: depth),
                 detail: "fd=\(fd.fd) viommu_id=\(viommuID) type=\(hex(type)) depth=\(depth)") { () throws(Refusal) in
            try veventqAllocImpl(fd.fd, viommuID: viommuID, type: type, depth: depth)
        }
    }

    /// close(2) of the event fd (any fd number is closed with its own semantics, as
    /// close(2) would).
    public func closeEventFD(_ fd: IommufdHandle, _ eventFD: KernelFile) {
        callQuietly("CLOSE_EVENT_FD", .close(fd: eventFD.fd), detail: "fd=\(eventFD.fd)") { closeFD(eventFD.fd) }
    }

    public func hwQueueAlloc(_ fd: IommufdHandle, viommuID: ObjectID, type: UInt32, index: UInt32, iova: UInt64, length: UInt64) throws(KernelCallError) -> ObjectID {
        try call("IOMMU_HW_QUEUE_ALLOC", .hwQueueAlloc(fd: fd.fd, viommuID: viommuID, type: type, index: index, iova: iova, length: length),
                 detail: "fd=\(fd.fd) viommu_id=\(viommuID) type=\(hex(type)) index=\(index) nesting_parent_iova=\(hex(iova)) length=\(hex(length))") { () throws(Refusal) in
            try hwQueueAllocImpl(fd.fd, viommuID: viommuID, type: type, index: index, iova: iova, length: length)
        }
    }

    // MARK: selftest mock devices

    public func iommuOption(_ fd: IommufdHandle, option: IommuOption, objectID: ObjectID, set value: UInt64?) throws(KernelCallError) -> UInt64 {
        let detail = "fd=\(fd.fd) option_id=\(option.rawValue) op=\(value == nil ? 1 : 0) object_id=\(objectID) val64=\(value ?? 0)"
        if let value {
            return try call("IOMMU_OPTION", .iommuOption(fd: fd.fd, option: option.rawValue, objectID: objectID, value: value), detail: detail) { () throws(Refusal) in
                try iommuOptionImpl(fd.fd, option: option.rawValue, objectID: objectID, set: value)
            }
        }
        return try call("IOMMU_OPTION", nil, detail: detail) { () throws(Refusal) in
            try iommuOptionImpl(fd.fd, option: option.rawValue, objectID: objectID, set: nil)
        }
    }

    public func deviceHolders(_ address: PCIAddress) throws(KernelCallError) -> [FileHolder] {
        // The Linux backend reads the device (its vfio index and group) before it walks
        // /proc: the same read here keeps the two call sequences alike.
        guard try pciDevice(address) != nil else { return [] }
        return try call("PROC_FD_SCAN", nil, detail: "\(address)") { () throws(Refusal) in deviceHoldersImpl(address) }
    }

    public func mockDomain(_ fd: IommufdHandle, ptID: ObjectID) throws(KernelCallError) -> MockDevice {
        try call("IOMMU_TEST_CMD", .mockDomain(fd: fd.fd, ptID: ptID), detail: "fd=\(fd.fd) op=MOCK_DOMAIN id=\(ptID)") { () throws(Refusal) in
            try mockDomainImpl(fd.fd, ptID: ptID)
        }
    }

    public func mockDomainReplace(_ fd: IommufdHandle, stdevID: ObjectID, ptID: ObjectID) throws(KernelCallError) -> ObjectID {
        try call("IOMMU_TEST_CMD", .mockDomainReplace(fd: fd.fd, stdevID: stdevID, ptID: ptID),
                 detail: "fd=\(fd.fd) op=MOCK_DOMAIN_REPLACE id=\(stdevID) pt_id=\(ptID)") { () throws(Refusal) in
            try mockDomainReplaceImpl(fd.fd, stdevID: stdevID, ptID: ptID)
        }
    }

    // MARK: VFIO cdev

    public func openVfioDevice(index: Int) throws(KernelCallError) -> DeviceHandle {
        try call("OPEN_VFIO_DEVICE", .openVfioDevice(index: index), detail: "/dev/vfio/devices/vfio\(index)") { () throws(Refusal) in
            DeviceHandle(fd: try openVfioDeviceImpl(index: index))
        }
    }

    public func bindIommufd(_ dev: DeviceHandle, iommufd: IommufdHandle) throws(KernelCallError) -> ObjectID {
        try call("VFIO_DEVICE_BIND_IOMMUFD", .bind(dev: dev.fd, iommufd: iommufd.fd), detail: "fd=\(dev.fd) iommufd=\(iommufd.fd)") { () throws(Refusal) in
            try bindImpl(dev.fd, iommufd: iommufd.fd)
        }
    }

    public func attach(_ dev: DeviceHandle, ptID: ObjectID) throws(KernelCallError) -> ObjectID {
        try call("VFIO_DEVICE_ATTACH_IOMMUFD_PT", .attach(dev: dev.fd, ptID: ptID), detail: "fd=\(dev.fd) pt_id=\(ptID)") { () throws(Refusal) in
            try attachImpl(dev.fd, ptID: ptID)
        }
    }

    public func detach(_ dev: DeviceHandle) throws(KernelCallError) {
        try call("VFIO_DEVICE_DETACH_IOMMUFD_PT", .detach(dev: dev.fd), detail: "fd=\(dev.fd)") { () throws(Refusal) in
            try detachImpl(dev.fd)
        }
    }

    public func close(_ dev: DeviceHandle) {
        callQuietly("CLOSE_VFIO_DEVICE", .close(fd: dev.fd), detail: "fd=\(dev.fd)") { closeFD(dev.fd) }
    }

    // MARK: guest memory

    public func createGuestMemory(name: String, size: UInt64, backing: GuestMemoryBacking, hugepageSize: UInt64?) throws(KernelCallError) -> GuestMemory {
        let op = backing == .anonymous ? "MMAP_ANON" : "MEMFD_CREATE"
        return try call(op, .createGuestMemory(name: name, size: size, backing: backing, hugepageSize: hugepageSize),
                        detail: "name=\(name) size=\(hex(size)) backing=\(backing.rawValue)" + (hugepageSize.map { " hugepage=\(hex($0))" } ?? "")) { () throws(Refusal) in
            try createGuestMemoryImpl(name: name, size: size, backing: backing, hugepageSize: hugepageSize)
        }
    }

    public func releaseGuestMemory(_ memory: GuestMemory) {
        callQuietly("MUNMAP", .releaseGuestMemory(memory), detail: "user_va=\(hex(memory.userVA)) size=\(hex(memory.size))" + (memory.file.map { " memfd=\($0.fd)" } ?? "")) {
            releaseGuestMemoryImpl(memory)
        }
    }

    // MARK: sysfs reads

    public func pciDevices() throws(KernelCallError) -> [SysfsPCIDevice] {
        try call("SYSFS_READ_PCI_DEVICES", nil, detail: "/sys/bus/pci/devices") { () throws(Refusal) in
            state.devices.values.sorted { $0.address < $1.address }.map(sysfsView)
        }
    }

    public func pciDevice(_ address: PCIAddress) throws(KernelCallError) -> SysfsPCIDevice? {
        try call("SYSFS_READ_PCI_DEVICE", nil, detail: "/sys/bus/pci/devices/\(address)") { () throws(Refusal) in
            state.devices[address].map(sysfsView)
        }
    }

    public func iommuGroupMembers(_ group: Int) throws(KernelCallError) -> [PCIAddress] {
        try call("SYSFS_READ_IOMMU_GROUP", nil, detail: "/sys/kernel/iommu_groups/\(group)/devices") { () throws(Refusal) in
            try iommuGroupMembersImpl(group)
        }
    }

    public func iommuNames() throws(KernelCallError) -> [String] {
        try call("SYSFS_READ_IOMMU_NAMES", nil, detail: "/sys/class/iommu") { () throws(Refusal) in
            state.iommus.map(\.name).sorted()
        }
    }

    public func reservedRegions(group: Int) throws(KernelCallError) -> [(start: UInt64, last: UInt64, type: String)] {
        try call("SYSFS_READ_RESERVED_REGIONS", nil, detail: "/sys/kernel/iommu_groups/\(group)/reserved_regions") { () throws(Refusal) in
            try reservedRegionsImpl(group: group)
        }
    }

    public func driverLoaded(_ name: String) throws(KernelCallError) -> Bool {
        try call("SYSFS_READ_DRIVER", nil, detail: "/sys/bus/pci/drivers/\(name)") { () throws(Refusal) in
            isDriverLoaded(name)
        }
    }

    // MARK: sysfs binding writes

    public func writeDriverOverride(_ address: PCIAddress, _ driver: String?) throws(KernelCallError) {
        try call("SYSFS_DRIVER_OVERRIDE", .writeDriverOverride(address: address, driver: driver),
                 detail: "/sys/bus/pci/devices/\(address)/driver_override <- \(driver ?? "(clear)")") { () throws(Refusal) in
            try writeDriverOverrideImpl(address, driver)
        }
    }

    public func unbindDriver(_ address: PCIAddress, driver: String) throws(KernelCallError) {
        try call("SYSFS_UNBIND", .unbindDriver(address: address, driver: driver),
                 detail: "/sys/bus/pci/drivers/\(driver)/unbind <- \(address)") { () throws(Refusal) in
            try unbindDriverImpl(address, driver: driver)
        }
    }

    public func driversProbe(_ address: PCIAddress) throws(KernelCallError) {
        try call("SYSFS_DRIVERS_PROBE", .driversProbe(address: address), detail: "/sys/bus/pci/drivers_probe <- \(address)") { () throws(Refusal) in
            try driversProbeImpl(address)
        }
    }

    // MARK: ownership

    public func chownVfioDevice(index: Int, uid: UInt32, gid: UInt32) throws(KernelCallError) {
        try call("CHOWN_VFIO_DEVICE", .chownVfioDevice(index: index, uid: uid, gid: gid),
                 detail: "/dev/vfio/devices/vfio\(index) -> \(uid):\(gid)") { () throws(Refusal) in
            try chownImpl(index: index, uid: uid, gid: gid)
        }
    }

    public func vfioDeviceOwner(index: Int) throws(KernelCallError) -> (uid: UInt32, gid: UInt32)? {
        try call("STAT_VFIO_DEVICE", nil, detail: "/dev/vfio/devices/vfio\(index)") { () throws(Refusal) in
            guard hasVfioCdev, let device = deviceWithVfioIndex(index) else { return nil }
            return (device.owner.uid, device.owner.gid)
        }
    }
}
