import Foundation
import VsmmuKernel

/// The simulated Linux kernel: a digital twin of iommufd, the VFIO cdev interface and
/// the sysfs binding files, implementing `KernelPort` with the errnos and check order of
/// docs/kernel-interface.md. Used by tests and by `--host` runs without hardware.
///
/// Every call goes through one funnel (`call`, SimFaults.swift) that applies
/// VSMMU_SIM_DELAY_MS and VSMMU_SIM_FAIL, counts mutating calls, traces, and appends
/// mutating calls to the redo log when the kernel is backed by a `SimStore`.
///
/// Not thread-safe: one kernel per thread/task, like one process's view of the kernel.
public final class SimulatedKernel: KernelPort {
    // Unchecked exclusivity on the properties every call touches: one kernel is used by one
    // thread and no access to them overlaps another; the runtime's checks were a tenth of
    // an apply (docs/live-speed.md §5).
    @exclusivity(unchecked) var state: SimState
    /// Calls answered per kind, by `KernelCall.ordinal` (VSMMU_SIM_FAIL's `#N` counts them).
    @exclusivity(unchecked) var callCounts = [Int](repeating: 0, count: KernelCall.allCases.count)
    @exclusivity(unchecked) var mutatingCallCount = 0
    var store: SimStore?
    /// Derived lookup structures over `state` (never persisted; SimIndexes.swift).
    let indexes = SimIndexes()
    /// The uevent sockets and inotify watches open on this kernel (SimChangeFeed.swift).
    let uevents = SimUevents()

    /// The fault-injection rules in force (from VSMMU_SIM_FAIL unless set directly).
    @exclusivity(unchecked) public var failRules: [FailRule]
    /// Milliseconds slept before every call (VSMMU_SIM_DELAY_MS).
    @exclusivity(unchecked) public var delayMS: Int
    /// A bad VSMMU_SIM_FAIL / VSMMU_SIM_DELAY_MS seen by `init`; those settings are then
    /// ignored. `SimStore.open` throws it instead.
    public let configurationError: SimConfigurationError?
    /// Record every call in `trace`.
    @exclusivity(unchecked) public var traceEnabled = false
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
        // Sorted by moving positions, not the devices' facts (a sixth of a converged
        // re-plan at 10,000 devices when the devices themselves were sorted).
        let order = devices.indices.sorted { devices[$0].address < devices[$1].address }
        return HostDescription(name: state.hostName, kernel: state.kernel, iommus: state.iommus,
                               pciDevices: order.map { devices[$0] })
    }

    /// Writes the state to the store (host.yaml, kernel.json) and truncates the redo
    /// log. A kernel without a store has nothing to save.
    /// Takes in what was edited in sim/host.yaml since this kernel last wrote it (the
    /// agent asks before each request). Returns whether anything was.
    public func reloadHostFile() throws -> Bool {
        guard let store else { return false }
        return try store.reloadHostEdits(into: self)
    }

    public func save() throws {
        guard let store else { return }
        if let persistenceError { throw SimStoreError("the redo log could not be written earlier: \(persistenceError)") }
        try store.save(self)
    }

    /// The holding process exits: every fd it holds closes (cdevs, event fds, memfds,
    /// iommufd handles) and its guest memory is unmapped, so the kernel destroys every
    /// iommufd object (docs/kernel-interface.md §4.4). Host-level state (drivers, overrides, vfio indexes,
    /// owners) stays (docs/kernel-interface.md §9.6).
    public func simulateProcessExit() {
        callQuietly(.processExit, .processExit) { processExitImpl(); return nil }
    }

    // MARK: iommufd context

    public func openIommufd() throws(KernelCallError) -> IommufdHandle {
        try call(.openIommufd, .openIommufd) { () throws(Refusal) in
            IommufdHandle(fd: try openIommufdImpl())
        }
    }

    public func close(_ iommufd: IommufdHandle) {
        callQuietly(.closeIommufd(fd: iommufd.fd), .close(fd: iommufd.fd)) { closeFD(iommufd.fd) }
    }

    // MARK: iommufd ioctls

    public func destroy(_ fd: IommufdHandle, id: ObjectID) throws(KernelCallError) {
        try call(.destroy(fd: fd.fd, id: id), .destroy(fd: fd.fd, id: id)) { () throws(Refusal) in
            try destroyImpl(fd.fd, id: id)
        }
    }

    public func ioasAlloc(_ fd: IommufdHandle) throws(KernelCallError) -> ObjectID {
        try call(.ioasAlloc(fd: fd.fd), .ioasAlloc(fd: fd.fd)) { () throws(Refusal) in
            try ioasAllocImpl(fd.fd)
        }
    }

    public func ioasIovaRanges(_ fd: IommufdHandle, ioas: ObjectID) throws(KernelCallError) -> (ranges: [IovaRange], alignment: UInt64) {
        try call(.ioasIovaRanges(fd: fd.fd, ioas: ioas, numIovas: nil), nil) { () throws(Refusal) in
            try ioasIovaRangesImpl(fd.fd, ioas: ioas)
        }
    }

    public func ioasMap(_ fd: IommufdHandle, ioas: ObjectID, flags: IOASMapFlags, source: MapSource, length: UInt64, iova: UInt64) throws(KernelCallError) -> UInt64 {
        try call(.ioasMap(fd: fd.fd, ioas: ioas, flags: flags, source: source, length: length, iova: iova),
                 .ioasMap(fd: fd.fd, ioas: ioas, flags: flags, source: source, length: length, iova: iova)) { () throws(Refusal) in
            try ioasMapImpl(fd.fd, ioas: ioas, flags: flags, source: source, length: length, iova: iova)
        }
    }

    public func ioasUnmap(_ fd: IommufdHandle, ioas: ObjectID, iova: UInt64, length: UInt64) throws(KernelCallError) -> UInt64 {
        try call(.ioasUnmap(fd: fd.fd, ioas: ioas, iova: iova, length: length), .ioasUnmap(fd: fd.fd, ioas: ioas, iova: iova, length: length)) { () throws(Refusal) in
            try ioasUnmapImpl(fd.fd, ioas: ioas, iova: iova, length: length)
        }
    }

    public func hwptAlloc(_ fd: IommufdHandle, flags: HWPTAllocFlags, devID: ObjectID, ptID: ObjectID, dataType: HWPTDataType, data: [UInt8]) throws(KernelCallError) -> ObjectID {
        try call(.hwptAlloc(fd: fd.fd, flags: flags, devID: devID, ptID: ptID, dataType: dataType, dataLength: data.count),
                 .hwptAlloc(fd: fd.fd, flags: flags, devID: devID, ptID: ptID, dataType: dataType, data: data)) { () throws(Refusal) in
            try hwptAllocImpl(fd.fd, flags: flags, devID: devID, ptID: ptID, dataType: dataType, data: data)
        }
    }

    public func getHwInfo(_ fd: IommufdHandle, devID: ObjectID, requestType: HWInfoType?) throws(KernelCallError) -> HwInfo {
        try call(.getHwInfo(fd: fd.fd, devID: devID, requestType: requestType), nil) { () throws(Refusal) in
            try hwInfoImpl(fd.fd, devID: devID, requestType: requestType)
        }
    }

    public func viommuAlloc(_ fd: IommufdHandle, type: VIOMMUType, devID: ObjectID, hwptID: ObjectID, data: [UInt8]) throws(KernelCallError) -> (id: ObjectID, dataOut: [UInt8]) {
        try call(.viommuAlloc(fd: fd.fd, type: type, devID: devID, hwptID: hwptID, dataLength: data.count),
                 .viommuAlloc(fd: fd.fd, type: type, devID: devID, hwptID: hwptID, data: data)) { () throws(Refusal) in
            try viommuAllocImpl(fd.fd, type: type, devID: devID, hwptID: hwptID, data: data)
        }
    }

    public func hwptInvalidate(_ fd: IommufdHandle, hwptID: ObjectID, dataType: InvalidateDataType, entryLen: UInt32, entryNum: UInt32, entries: [UInt8]) throws(KernelCallError) -> UInt32 {
        try call(.hwptInvalidate(fd: fd.fd, hwptID: hwptID, dataType: dataType, entryLen: entryLen, entryNum: entryNum), nil) { () throws(Refusal) in
            try hwptInvalidateImpl(fd.fd, hwptID: hwptID, dataType: dataType, entryLen: entryLen, entryNum: entryNum, entries: entries)
        }
    }

    public func vdeviceAlloc(_ fd: IommufdHandle, viommuID: ObjectID, devID: ObjectID, virtID: UInt64) throws(KernelCallError) -> ObjectID {
        try call(.vdeviceAlloc(fd: fd.fd, viommuID: viommuID, devID: devID, virtID: virtID),
                 .vdeviceAlloc(fd: fd.fd, viommuID: viommuID, devID: devID, virtID: virtID)) { () throws(Refusal) in
            try vdeviceAllocImpl(fd.fd, viommuID: viommuID, devID: devID, virtID: virtID)
        }
    }

    public func veventqAlloc(_ fd: IommufdHandle, viommuID: ObjectID, type: VEventQType, depth: UInt32) throws(KernelCallError) -> (id: ObjectID, eventFD: KernelFile) {
        try call(.veventqAlloc(fd: fd.fd, viommuID: viommuID, type: type, depth: depth),
                 .veventqAlloc(fd: fd.fd, viommuID: viommuID, type: type, depth: depth)) { () throws(Refusal) in
            try veventqAllocImpl(fd.fd, viommuID: viommuID, type: type, depth: depth)
        }
    }

    /// close(2) of the event fd (any fd number is closed with its own semantics, as
    /// close(2) would).
    public func closeEventFD(_ fd: IommufdHandle, _ eventFD: KernelFile) {
        callQuietly(.closeEventFD(fd: eventFD.fd), .close(fd: eventFD.fd)) { closeFD(eventFD.fd) }
    }

    public func hwQueueAlloc(_ fd: IommufdHandle, viommuID: ObjectID, type: HWQueueType, index: UInt32, iova: UInt64, length: UInt64) throws(KernelCallError) -> ObjectID {
        try call(.hwQueueAlloc(fd: fd.fd, viommuID: viommuID, type: type, index: index, iova: iova, length: length),
                 .hwQueueAlloc(fd: fd.fd, viommuID: viommuID, type: type, index: index, iova: iova, length: length)) { () throws(Refusal) in
            try hwQueueAllocImpl(fd.fd, viommuID: viommuID, type: type, index: index, iova: iova, length: length)
        }
    }

    // MARK: selftest mock devices

    public func iommuOption(_ fd: IommufdHandle, option: IommuOption, objectID: ObjectID, set value: UInt64?) throws(KernelCallError) -> UInt64 {
        // A GET changes nothing, but IOMMU_OPTION is one call: logged either way (replay is a no-op).
        try call(.option(fd: fd.fd, option: option, objectID: objectID, value: value),
                 .iommuOption(fd: fd.fd, option: option.rawValue, objectID: objectID, value: value ?? UInt64.max)) { () throws(Refusal) in
            try iommuOptionImpl(fd.fd, option: option.rawValue, objectID: objectID, set: value)
        }
    }

    public func deviceHolders(_ address: PCIAddress) throws(KernelCallError) -> [FileHolder] {
        // The Linux backend reads the device (its vfio index and group) before it walks
        // /proc: the same read here keeps the two call sequences alike.
        guard try pciDevice(address) != nil else { return [] }
        return try call(.procFDScan(address), nil) { () throws(Refusal) in deviceHoldersImpl(address) }
    }

    public func mockDomain(_ fd: IommufdHandle, ptID: ObjectID) throws(KernelCallError) -> MockDevice {
        try call(.mockDomain(fd: fd.fd, ptID: ptID), .mockDomain(fd: fd.fd, ptID: ptID)) { () throws(Refusal) in
            try mockDomainImpl(fd.fd, ptID: ptID)
        }
    }

    public func mockDomainReplace(_ fd: IommufdHandle, stdevID: ObjectID, ptID: ObjectID) throws(KernelCallError) -> ObjectID {
        try call(.mockDomainReplace(fd: fd.fd, stdevID: stdevID, ptID: ptID), .mockDomainReplace(fd: fd.fd, stdevID: stdevID, ptID: ptID)) { () throws(Refusal) in
            try mockDomainReplaceImpl(fd.fd, stdevID: stdevID, ptID: ptID)
        }
    }

    // MARK: VFIO cdev

    public func openVfioDevice(index: Int) throws(KernelCallError) -> DeviceHandle {
        try call(.openVfioDevice(index: index), .openVfioDevice(index: index)) { () throws(Refusal) in
            DeviceHandle(fd: try openVfioDeviceImpl(index: index))
        }
    }

    public func bindIommufd(_ dev: DeviceHandle, iommufd: IommufdHandle) throws(KernelCallError) -> ObjectID {
        try call(.bindIommufd(dev: dev.fd, iommufd: iommufd.fd), .bind(dev: dev.fd, iommufd: iommufd.fd)) { () throws(Refusal) in
            try bindImpl(dev.fd, iommufd: iommufd.fd)
        }
    }

    public func attach(_ dev: DeviceHandle, ptID: ObjectID) throws(KernelCallError) -> ObjectID {
        try call(.attach(dev: dev.fd, ptID: ptID), .attach(dev: dev.fd, ptID: ptID)) { () throws(Refusal) in
            try attachImpl(dev.fd, ptID: ptID)
        }
    }

    public func detach(_ dev: DeviceHandle) throws(KernelCallError) {
        try call(.detach(dev: dev.fd), .detach(dev: dev.fd)) { () throws(Refusal) in
            try detachImpl(dev.fd)
        }
    }

    public func close(_ dev: DeviceHandle) {
        callQuietly(.closeVfioDevice(fd: dev.fd), .close(fd: dev.fd)) { closeFD(dev.fd) }
    }

    // MARK: guest memory

    public func createGuestMemory(name: String, size: UInt64, backing: GuestMemoryBacking, hugepageSize: UInt64?) throws(KernelCallError) -> GuestMemory {
        try call(.createGuestMemory(name: name, size: size, backing: backing, hugepageSize: hugepageSize),
                 .createGuestMemory(name: name, size: size, backing: backing, hugepageSize: hugepageSize)) { () throws(Refusal) in
            try createGuestMemoryImpl(name: name, size: size, backing: backing, hugepageSize: hugepageSize)
        }
    }

    public func releaseGuestMemory(_ memory: GuestMemory) {
        callQuietly(.releaseGuestMemory(memory), .releaseGuestMemory(memory)) {
            releaseGuestMemoryImpl(memory)
        }
    }

    // MARK: sysfs reads

    public func pciDevices() throws(KernelCallError) -> [SysfsPCIDevice] {
        try call(.readPCIDevices, nil) { () throws(Refusal) in
            state.devices.values.sorted { $0.address < $1.address }.map(sysfsView)
        }
    }

    public func pciDevice(_ address: PCIAddress) throws(KernelCallError) -> SysfsPCIDevice? {
        try call(.readPCIDevice(address), nil) { () throws(Refusal) in
            state.devices[address].map(sysfsView)
        }
    }

    public func iommuGroupMembers(_ group: Int) throws(KernelCallError) -> [PCIAddress] {
        try call(.readIOMMUGroup(group), nil) { () throws(Refusal) in
            try iommuGroupMembersImpl(group)
        }
    }

    public func iommuNames() throws(KernelCallError) -> [String] {
        try call(.readIOMMUNames, nil) { () throws(Refusal) in
            state.iommus.map(\.name).sorted()
        }
    }

    public func reservedRegions(group: Int) throws(KernelCallError) -> [(start: UInt64, last: UInt64, type: String)] {
        try call(.readReservedRegions(group: group), nil) { () throws(Refusal) in
            try reservedRegionsImpl(group: group)
        }
    }

    public func driverLoaded(_ name: String) throws(KernelCallError) -> Bool {
        try call(.readDriver(name), nil) { () throws(Refusal) in
            isDriverLoaded(name)
        }
    }

    // MARK: sysfs binding writes

    public func writeDriverOverride(_ address: PCIAddress, _ driver: String?) throws(KernelCallError) {
        try call(.writeDriverOverride(address: address, driver: driver), .writeDriverOverride(address: address, driver: driver)) { () throws(Refusal) in
            try writeDriverOverrideImpl(address, driver)
        }
    }

    public func unbindDriver(_ address: PCIAddress, driver: String) throws(KernelCallError) {
        try call(.unbindDriver(address: address, driver: driver), .unbindDriver(address: address, driver: driver)) { () throws(Refusal) in
            try unbindDriverImpl(address, driver: driver)
        }
    }

    public func driversProbe(_ address: PCIAddress) throws(KernelCallError) {
        try call(.driversProbe(address: address), .driversProbe(address: address)) { () throws(Refusal) in
            try driversProbeImpl(address)
        }
    }

    // MARK: ownership

    public func chownVfioDevice(index: Int, uid: UInt32, gid: UInt32) throws(KernelCallError) {
        try call(.chownVfioDevice(index: index, uid: uid, gid: gid), .chownVfioDevice(index: index, uid: uid, gid: gid)) { () throws(Refusal) in
            try chownImpl(index: index, uid: uid, gid: gid)
        }
    }

    public func vfioDeviceOwner(index: Int) throws(KernelCallError) -> (uid: UInt32, gid: UInt32)? {
        try call(.statVfioDevice(index: index), nil) { () throws(Refusal) in
            guard hasVfioCdev, let device = deviceWithVfioIndex(index) else { return nil }
            return (device.owner.uid, device.owner.gid)
        }
    }
}
