import Foundation
import Testing
import VsmmuExecutor
import VsmmuKernel
import VsmmuModel
import VsmmuPlanner
import VsmmuSim

/// A kernel port that forwards to the simulated kernel except where a test overrides a
/// call: a driver that ignores unbind, a driver_override that does not stick. These are
/// kernel behaviours the simulated kernel's rules never produce, and exactly what the
/// executor's read-back after each sysfs write is for (docs/kernel-interface.md §8, safe order).
final class OverridingPort: KernelPort {
    let inner: SimulatedKernel
    var unbindIsIgnored = false
    var driverOverrideIsIgnored = false
    init(_ inner: SimulatedKernel) { self.inner = inner }

    var hasIommufd: Bool { inner.hasIommufd }
    var hasVfioCdev: Bool { inner.hasVfioCdev }
    var mutatingCalls: Int { inner.mutatingCalls }
    var holderIdentity: String { inner.holderIdentity }
    func openIommufd() throws(KernelCallError) -> IommufdHandle { try inner.openIommufd() }
    func close(_ iommufd: IommufdHandle) { inner.close(iommufd) }
    func destroy(_ fd: IommufdHandle, id: ObjectID) throws(KernelCallError) { try inner.destroy(fd, id: id) }
    func ioasAlloc(_ fd: IommufdHandle) throws(KernelCallError) -> ObjectID { try inner.ioasAlloc(fd) }
    func ioasIovaRanges(_ fd: IommufdHandle, ioas: ObjectID) throws(KernelCallError) -> (ranges: [IovaRange], alignment: UInt64) {
        try inner.ioasIovaRanges(fd, ioas: ioas)
    }
    func ioasMap(_ fd: IommufdHandle, ioas: ObjectID, flags: IOASMapFlags, source: MapSource, length: UInt64, iova: UInt64) throws(KernelCallError) -> UInt64 {
        try inner.ioasMap(fd, ioas: ioas, flags: flags, source: source, length: length, iova: iova)
    }
    func ioasUnmap(_ fd: IommufdHandle, ioas: ObjectID, iova: UInt64, length: UInt64) throws(KernelCallError) -> UInt64 {
        try inner.ioasUnmap(fd, ioas: ioas, iova: iova, length: length)
    }
    func hwptAlloc(_ fd: IommufdHandle, flags: HWPTAllocFlags, devID: ObjectID, ptID: ObjectID, dataType: HWPTDataType, data: [UInt8]) throws(KernelCallError) -> ObjectID {
        try inner.hwptAlloc(fd, flags: flags, devID: devID, ptID: ptID, dataType: dataType, data: data)
    }
    func hwptInvalidate(_ fd: IommufdHandle, hwptID: ObjectID, dataType: InvalidateDataType, entryLen: UInt32, entryNum: UInt32, entries: [UInt8]) throws(KernelCallError) -> UInt32 {
        try inner.hwptInvalidate(fd, hwptID: hwptID, dataType: dataType, entryLen: entryLen, entryNum: entryNum, entries: entries)
    }
    func getHwInfo(_ fd: IommufdHandle, devID: ObjectID, requestType: HWInfoType?) throws(KernelCallError) -> HwInfo {
        try inner.getHwInfo(fd, devID: devID, requestType: requestType)
    }
    func viommuAlloc(_ fd: IommufdHandle, type: VIOMMUType, devID: ObjectID, hwptID: ObjectID, data: [UInt8]) throws(KernelCallError) -> (id: ObjectID, dataOut: [UInt8]) {
        try inner.viommuAlloc(fd, type: type, devID: devID, hwptID: hwptID, data: data)
    }
    func vdeviceAlloc(_ fd: IommufdHandle, viommuID: ObjectID, devID: ObjectID, virtID: UInt64) throws(KernelCallError) -> ObjectID {
        try inner.vdeviceAlloc(fd, viommuID: viommuID, devID: devID, virtID: virtID)
    }
    func veventqAlloc(_ fd: IommufdHandle, viommuID: ObjectID, type: VEventQType, depth: UInt32) throws(KernelCallError) -> (id: ObjectID, eventFD: KernelFile) {
        try inner.veventqAlloc(fd, viommuID: viommuID, type: type, depth: depth)
    }
    func closeEventFD(_ fd: IommufdHandle, _ eventFD: KernelFile) { inner.closeEventFD(fd, eventFD) }
    func hwQueueAlloc(_ fd: IommufdHandle, viommuID: ObjectID, type: HWQueueType, index: UInt32, iova: UInt64, length: UInt64) throws(KernelCallError) -> ObjectID {
        try inner.hwQueueAlloc(fd, viommuID: viommuID, type: type, index: index, iova: iova, length: length)
    }
    func mockDomain(_ fd: IommufdHandle, ptID: ObjectID) throws(KernelCallError) -> MockDevice { try inner.mockDomain(fd, ptID: ptID) }
    func iommuOption(_ fd: IommufdHandle, option: IommuOption, objectID: ObjectID, set value: UInt64?) throws(KernelCallError) -> UInt64 {
        try inner.iommuOption(fd, option: option, objectID: objectID, set: value)
    }
    func deviceHolders(_ address: PCIAddress) throws(KernelCallError) -> [FileHolder] { try inner.deviceHolders(address) }
    func mockDomainReplace(_ fd: IommufdHandle, stdevID: ObjectID, ptID: ObjectID) throws(KernelCallError) -> ObjectID {
        try inner.mockDomainReplace(fd, stdevID: stdevID, ptID: ptID)
    }
    func openVfioDevice(index: Int) throws(KernelCallError) -> DeviceHandle { try inner.openVfioDevice(index: index) }
    func bindIommufd(_ dev: DeviceHandle, iommufd: IommufdHandle) throws(KernelCallError) -> ObjectID { try inner.bindIommufd(dev, iommufd: iommufd) }
    func attach(_ dev: DeviceHandle, ptID: ObjectID) throws(KernelCallError) -> ObjectID { try inner.attach(dev, ptID: ptID) }
    func detach(_ dev: DeviceHandle) throws(KernelCallError) { try inner.detach(dev) }
    func close(_ dev: DeviceHandle) { inner.close(dev) }
    func createGuestMemory(name: String, size: UInt64, backing: GuestMemoryBacking, hugepageSize: UInt64?) throws(KernelCallError) -> GuestMemory {
        try inner.createGuestMemory(name: name, size: size, backing: backing, hugepageSize: hugepageSize)
    }
    func releaseGuestMemory(_ memory: GuestMemory) { inner.releaseGuestMemory(memory) }
    func pciDevices() throws(KernelCallError) -> [SysfsPCIDevice] { try inner.pciDevices() }
    func pciDevice(_ address: PCIAddress) throws(KernelCallError) -> SysfsPCIDevice? { try inner.pciDevice(address) }
    func iommuGroupMembers(_ group: Int) throws(KernelCallError) -> [PCIAddress] { try inner.iommuGroupMembers(group) }
    func iommuNames() throws(KernelCallError) -> [String] { try inner.iommuNames() }
    func reservedRegions(group: Int) throws(KernelCallError) -> [(start: UInt64, last: UInt64, type: String)] { try inner.reservedRegions(group: group) }
    func driverLoaded(_ name: String) throws(KernelCallError) -> Bool { try inner.driverLoaded(name) }
    func writeDriverOverride(_ address: PCIAddress, _ driver: String?) throws(KernelCallError) {
        if driverOverrideIsIgnored { return }
        try inner.writeDriverOverride(address, driver)
    }
    func unbindDriver(_ address: PCIAddress, driver: String) throws(KernelCallError) {
        if unbindIsIgnored { return }
        try inner.unbindDriver(address, driver: driver)
    }
    func driversProbe(_ address: PCIAddress) throws(KernelCallError) { try inner.driversProbe(address) }
    func openFiles() throws(KernelCallError) -> [OpenFileInfo] { try inner.openFiles() }
    func closeFile(_ fd: Int32) { inner.closeFile(fd) }
    func chownVfioDevice(index: Int, uid: UInt32, gid: UInt32) throws(KernelCallError) { try inner.chownVfioDevice(index: index, uid: uid, gid: gid) }
    func vfioDeviceOwner(index: Int) throws(KernelCallError) -> (uid: UInt32, gid: UInt32)? { try inner.vfioDeviceOwner(index: index) }
    func limitLockedMemory(_ bytes: UInt64?) throws(KernelCallError) { try inner.limitLockedMemory(bytes) }
}

private let readBackExample = "two-vsmmus-four-gpus"
private let readBackHost = "examples/hosts/grace-2smmu-cmdqv.yaml"

/// The executor reads back every sysfs binding write before the next one. A driver that
/// ignores unbind stops the apply at that step, with no change left behind: every device
/// keeps its driver and override, so nothing is half-moved to vfio-pci.
@Test func unbindThatDoesNotTakeStopsTheApplyAndLeavesDevicesWhereTheyWere() throws {
    let h = try Harness(host: readBackHost)
    let t = try h.example(readBackExample)
    let before = try h.sim.pciDevices().map { ($0.address, $0.driver, $0.driverOverride) }
    let p = try h.plan(t)
    let port = OverridingPort(h.sim)
    port.unbindIsIgnored = true
    var failure: Error?
    do { try Pipeline.apply(p, port: port, store: h.store) } catch { failure = error }
    let e = try #require(failure as? ApplyError)
    #expect(e.operation.call == "SYSFS_UNBIND" || e.description.contains("unbind"))
    #expect(e.message.contains("is still bound to nvidia"), "\(e.message)")
    #expect(e.errno == nil)
    #expect(e.hint?.contains("does not force") == true)
    #expect(!e.rollback.isEmpty, "the override written before the unbind is taken back")
    let after = try h.sim.pciDevices().map { ($0.address, $0.driver, $0.driverOverride) }
    #expect(after.map { "\($0.0) \($0.1 ?? "-") \($0.2 ?? "-")" } == before.map { "\($0.0) \($0.1 ?? "-") \($0.2 ?? "-")" })

    // Once the driver lets go, the next run converges.
    try h.apply(t)
    #expect(try h.plan(t).isEmpty)
}

/// A driver_override write that does not stick is caught before any unbind.
@Test func driverOverrideThatDoesNotStickStopsBeforeAnyUnbind() throws {
    let h = try Harness(host: readBackHost)
    let t = try h.example(readBackExample)
    let p = try h.plan(t)
    let port = OverridingPort(h.sim)
    port.driverOverrideIsIgnored = true
    h.sim.traceEnabled = true
    var failure: Error?
    do { try Pipeline.apply(p, port: port, store: h.store) } catch { failure = error }
    let e = try #require(failure as? ApplyError)
    #expect(e.message.contains("after writing driver_override"), "\(e.message)")
    #expect(e.message.contains("not 'vfio-pci'"), "\(e.message)")
    #expect(!h.sim.trace.contains { $0.op == "SYSFS_UNBIND" }, "no device was unbound")
    for d in try h.sim.pciDevices() where d.driver == "nvidia" { #expect(d.driverOverride == nil) }
    try h.apply(t)
    #expect(try h.plan(t).isEmpty)
}
