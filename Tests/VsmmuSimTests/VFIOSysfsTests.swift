import Foundation
import Testing
import VsmmuKernel
@testable import VsmmuSim

// VFIO cdev bind rules (docs/kernel-interface.md §3.3) and the sysfs binding writes (§8).

@Suite struct VFIOSysfsTests {
    @Test func initialSysfsFromTheHostDescription() throws {
        let k = makeKernel()
        let devices = try k.pciDevices()
        #expect(devices.map(\.address) == devices.map(\.address).sorted())
        #expect(devices.count == Fixture.host.pciDevices.count)
        // vfio-pci devices get indexes 0… in address order; others none.
        #expect(try k.vfioIndex(Fixture.gpuVfio) == 0)
        #expect(try k.vfioIndex(Fixture.gpuVfio2) == 1)
        #expect(try k.vfioIndex(Fixture.vtdDev) == 7)
        #expect(try k.pciDevice(Fixture.gpuNative)?.vfioDevIndex == nil)
        #expect(try k.pciDevice(Fixture.gpuNative)?.driverOverride == nil)
        #expect(try k.pciDevice(pci("0000:99:00.0")) == nil)
        #expect(try k.iommuGroupMembers(16) == [Fixture.groupVfio, Fixture.groupHost])
        #expect(errnoOf { try k.iommuGroupMembers(99) } == .ENOENT)
        let regions = try k.reservedRegions(group: 11)
        #expect(regions.count == 1)
        let msi = regions.first
        #expect(msi?.start == 0x800_0000 && msi?.last == 0x80F_FFFF && msi?.type == "msi")
        #expect(try k.iommuNames().count == Fixture.host.iommus.count)
        #expect(try k.driverLoaded("vfio-pci"))
        #expect(try k.driverLoaded("nvidia"))
        #expect(try !k.driverLoaded("pci-stub"))
        #expect(try k.vfioDeviceOwner(index: 0).map { [$0.uid, $0.gid] } == [0, 0])
        #expect(try k.vfioDeviceOwner(index: 40) == nil)
        #expect(k.hasIommufd && k.hasVfioCdev)
    }

    @Test func bindNeedsAViableGroup() throws {
        let k = makeKernel()
        let fd = try k.openIommufd()
        let cdev = try k.openVfioDevice(index: try k.vfioIndex(Fixture.groupVfio))
        // The sibling is on a host DMA driver.
        #expect(errnoOf { try k.bindIommufd(cdev, iommufd: fd) } == .EPERM)
        try k.unbindDriver(Fixture.groupHost, driver: "snd_hda_intel")
        let devID = try k.bindIommufd(cdev, iommufd: fd)
        #expect(devID == 1)
        // The group is owned by iommufd now: its native driver cannot take the sibling.
        #expect(errnoOf { try k.driversProbe(Fixture.groupHost) } == .EBUSY)
        #expect(try k.pciDevice(Fixture.groupHost)?.driver == nil)
        // Another iommufd cannot take the group either.
        let other = try k.openIommufd()
        try k.writeDriverOverride(Fixture.groupHost, "vfio-pci")
        try k.driversProbe(Fixture.groupHost)   // vfio-pci manages DMA itself: fine
        let sibling = try k.openVfioDevice(index: try k.vfioIndex(Fixture.groupHost))
        #expect(errnoOf { try k.bindIommufd(sibling, iommufd: other) } == .EPERM)
        // The same iommufd can (ownership is per owner); the group shares one attachment.
        _ = try k.bindIommufd(sibling, iommufd: fd)
        let ioas = try k.ioasAlloc(fd)
        let auto = try k.attach(cdev, ptID: ioas)
        let manual = try k.hwptAlloc(fd, flags: 0, devID: devID, ptID: ioas, dataType: 0, data: [])
        #expect(errnoOf { try k.attach(sibling, ptID: manual) } == .EINVAL)
        #expect(try k.attach(sibling, ptID: ioas) == auto)
        // A replace moves the whole group.
        #expect(try k.attach(cdev, ptID: manual) == manual)
        let members = k.objects(1).compactMap { entry -> ObjectID? in
            if case .device(let d) = entry.object { return d.attached }
            return nil
        }
        #expect(members == [manual, manual])
        // Closing every cdev releases the group: the host driver can come back.
        k.close(cdev)
        k.close(sibling)
        try k.unbindDriver(Fixture.groupHost, driver: "vfio-pci")
        try k.writeDriverOverride(Fixture.groupHost, nil)
        try k.driversProbe(Fixture.groupHost)
        #expect(try k.pciDevice(Fixture.groupHost)?.driver == "snd_hda_intel")
    }

    @Test func bindIsExclusiveAndChecksItsFds() throws {
        let k = makeKernel()
        let fd = try k.openIommufd()
        let index = try k.vfioIndex(Fixture.gpuVfio)
        let first = try k.openVfioDevice(index: index)
        let second = try k.openVfioDevice(index: index)
        // An unbound cdev answers EINVAL to everything but BIND.
        #expect(errnoOf { try k.attach(first, ptID: 1) } == .EINVAL)
        #expect(errnoOf { try k.bindIommufd(first, iommufd: IommufdHandle(fd: 77)) } == .EBADF)
        #expect(errnoOf { try k.bindIommufd(first, iommufd: IommufdHandle(fd: second.fd)) } == .EBADFD)
        _ = try k.bindIommufd(first, iommufd: fd)
        #expect(errnoOf { try k.bindIommufd(first, iommufd: fd) } == .EINVAL)     // this fd already bound
        #expect(errnoOf { try k.bindIommufd(second, iommufd: fd) } == .EINVAL)    // bound through another fd
        #expect(errnoOf { try k.bindIommufd(DeviceHandle(fd: fd.fd), iommufd: fd) } == .ENOTTY)
        #expect(errnoOf { try k.openVfioDevice(index: 55) } == .ENOENT)
        // After the first fd closes the device can be bound again.
        k.close(first)
        #expect(try k.bindIommufd(second, iommufd: fd) == 1)
    }

    @Test func safeMoveToVfioPciAndBack() throws {
        let k = makeKernel()
        let gpu = Fixture.gpuNative
        try k.writeDriverOverride(gpu, "vfio-pci")
        #expect(errnoOf { try k.unbindDriver(gpu, driver: "vfio-pci") } == .ENODEV)
        try k.unbindDriver(gpu, driver: "nvidia")
        #expect(try k.pciDevice(gpu)?.driver == nil)
        try k.driversProbe(gpu)
        let moved = try #require(try k.pciDevice(gpu))
        #expect(moved.driver == "vfio-pci")
        #expect(moved.vfioDevIndex == 8)      // lowest free (0…7 are taken)
        // Probing a bound device is a no-op.
        try k.driversProbe(gpu)
        #expect(try k.pciDevice(gpu)?.vfioDevIndex == 8)
        // Its cdev works.
        let fd = try k.openIommufd()
        let (cdev, _) = try k.openAndBind(gpu, to: fd)
        // Unbinding vfio-pci while a cdev is open would hang the writer: the simulation
        // refuses with an errno the real write never gives, and names who holds it.
        #expect(try k.deviceHolders(gpu).map(\.pid) == [getpid()])
        var detail = ""
        do { try k.unbindDriver(gpu, driver: "vfio-pci") } catch {
            #expect(error.errno == .EDEADLK)
            detail = error.detail
        }
        #expect(detail.contains("hang") && detail.contains("pid \(getpid())"))
        k.close(cdev)
        // The way back.
        try k.unbindDriver(gpu, driver: "vfio-pci")
        #expect(try k.pciDevice(gpu)?.vfioDevIndex == nil)
        try k.writeDriverOverride(gpu, nil)
        try k.driversProbe(gpu)
        let back = try #require(try k.pciDevice(gpu))
        #expect(back.driver == "nvidia")
        #expect(back.driverOverride == nil)
    }

    @Test func vfioIndexesAreLowestFreeAndOwnersResetOnRebind() throws {
        let k = makeKernel()
        try k.chownVfioDevice(index: 0, uid: 107, gid: 36)
        #expect(try k.vfioDeviceOwner(index: 0).map { [$0.uid, $0.gid] } == [107, 36])
        try k.unbindDriver(Fixture.gpuVfio, driver: "vfio-pci")
        #expect(try k.vfioDeviceOwner(index: 0) == nil)
        #expect(errnoOf { try k.chownVfioDevice(index: 0, uid: 1, gid: 1) } == .ENOENT)
        // gpuVfio's native driver is unknown (it was vfio-pci in the host): probe binds nothing.
        try k.driversProbe(Fixture.gpuVfio)
        #expect(try k.pciDevice(Fixture.gpuVfio)?.driver == nil)
        // Index 0 is free: the next vfio-pci bind takes it.
        try k.writeDriverOverride(Fixture.gpuNative, "vfio-pci")
        try k.unbindDriver(Fixture.gpuNative, driver: "nvidia")
        try k.driversProbe(Fixture.gpuNative)
        #expect(try k.vfioIndex(Fixture.gpuNative) == 0)
        #expect(try k.vfioDeviceOwner(index: 0).map { [$0.uid, $0.gid] } == [0, 0])
        // Rebinding gpuVfio to vfio-pci gets the next free index.
        try k.writeDriverOverride(Fixture.gpuVfio, "vfio-pci\n")
        #expect(try k.pciDevice(Fixture.gpuVfio)?.driverOverride == "vfio-pci")
        try k.driversProbe(Fixture.gpuVfio)
        #expect(try k.vfioIndex(Fixture.gpuVfio) == 8)
    }

    @Test func vfioPciRefusesBridgesButDrivesProbeSucceeds() throws {
        let k = makeKernel()
        try k.writeDriverOverride(Fixture.rootPort, "vfio-pci")
        try k.unbindDriver(Fixture.rootPort, driver: "pcieport")
        try k.driversProbe(Fixture.rootPort)
        #expect(try k.pciDevice(Fixture.rootPort)?.driver == nil)
        #expect(try k.pciDevice(Fixture.rootPort)?.vfioDevIndex == nil)
        try k.writeDriverOverride(Fixture.rootPort, "")
        try k.driversProbe(Fixture.rootPort)
        #expect(try k.pciDevice(Fixture.rootPort)?.driver == "pcieport")
    }

    @Test func sysfsWriteErrors() throws {
        let k = makeKernel()
        let unknown = pci("0000:77:00.0")
        #expect(errnoOf { try k.driversProbe(unknown) } == .ENODEV)
        #expect(errnoOf { try k.writeDriverOverride(unknown, "vfio-pci") } == .ENOENT)
        #expect(errnoOf { try k.unbindDriver(unknown, driver: "vfio-pci") } == .ENODEV)
        #expect(errnoOf { try k.unbindDriver(Fixture.gpuNative, driver: "no-such-driver") } == .ENOENT)
        #expect(errnoOf { try k.writeDriverOverride(Fixture.gpuNative, String(repeating: "x", count: 5000)) } == .EINVAL)
        // An override naming a driver that cannot drive the device: success, nothing bound.
        try k.writeDriverOverride(Fixture.gpuNative, "snd_hda_intel")
        try k.unbindDriver(Fixture.gpuNative, driver: "nvidia")
        try k.driversProbe(Fixture.gpuNative)
        #expect(try k.pciDevice(Fixture.gpuNative)?.driver == nil)
    }
}
