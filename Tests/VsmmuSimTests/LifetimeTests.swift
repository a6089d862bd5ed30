import Testing
import VsmmuKernel
@testable import VsmmuSim

// Object IDs (docs/kernel-interface.md §4.1), references and DESTROY (§4.2), tombstones (§4.5), fd lifetime (§4.4).

@Suite struct LifetimeTests {
    @Test func idsAreLowestFreeAcrossTypesAndFdsShareOneTable() throws {
        let k = makeKernel()
        let ifd = try k.openIommufd()
        #expect(ifd.fd == 3)
        let (cdev, devID) = try k.openAndBind(Fixture.gpuVfio, to: ifd)
        #expect(cdev.fd == 4)
        #expect(devID == 1)
        let ioasA = try k.ioasAlloc(ifd)
        let ioasB = try k.ioasAlloc(ifd)
        #expect((ioasA, ioasB) == (2, 3))
        try k.destroy(ifd, id: ioasA)
        // The freed ID 2 comes back as a HWPT: one ID space for every type.
        let s2 = try k.hwptAlloc(ifd, flags: HWPTAllocFlags.nestParent, devID: devID, ptID: ioasB, dataType: 0, data: [])
        #expect(s2 == 2)
        #expect(try k.ioasAlloc(ifd) == 4)
        // memfds and event fds take the lowest free fd numbers too.
        let memory = try k.createGuestMemory(name: "ram", size: 0x20_0000, backing: .memfd, hugepageSize: nil)
        #expect(memory.file?.fd == 5)
        k.close(cdev)
        let second = try k.openIommufd()
        #expect(second.fd == 4)
        // The second context has its own ID space.
        #expect(try k.ioasAlloc(second) == 1)
    }

    @Test func closingTheCdevTombstonesTheVDeviceForever() throws {
        let rig = try ArmRig()
        let k = rig.kernel
        #expect(rig.vdevice == 5)
        k.close(rig.device)
        // docs/kernel-interface.md §4.5: the vDevice was force-destroyed; its ID answers ENOENT and stays reserved.
        #expect(errnoOf { try k.destroy(rig.iommufd, id: rig.vdevice) } == .ENOENT)
        // The device ID itself is free again.
        #expect(try k.ioasAlloc(rig.iommufd) == rig.devID)
        var fresh: [ObjectID] = []
        for _ in 0..<4 { fresh.append(try k.ioasAlloc(rig.iommufd)) }
        #expect(!fresh.contains(rig.vdevice))
        #expect(fresh == [8, 9, 10, 11])
        // The tombstone no longer holds the vIOMMU: after the nested HWPT and the
        // vEVENTQ go, the vIOMMU can be destroyed.
        try k.destroy(rig.iommufd, id: rig.bypass)
        k.closeEventFD(rig.iommufd, rig.eventFD)
        try k.destroy(rig.iommufd, id: rig.veventq)
        try k.destroy(rig.iommufd, id: rig.viommu)
        #expect(errnoOf { try k.destroy(rig.iommufd, id: rig.vdevice) } == .ENOENT)
    }

    @Test func destroyIsBusyForEveryReferenceKind() throws {
        let rig = try ArmRig()
        let k = rig.kernel
        let fd = rig.iommufd
        // Device IDs are always held by VFIO.
        #expect(errnoOf { try k.destroy(fd, id: rig.devID) } == .EBUSY)
        // Attached device holds the nested HWPT.
        #expect(errnoOf { try k.destroy(fd, id: rig.bypass) } == .EBUSY)
        // The nested HWPT, vDevice and vEVENTQ each hold the vIOMMU.
        #expect(errnoOf { try k.destroy(fd, id: rig.viommu) } == .EBUSY)
        _ = try k.attach(rig.device, ptID: rig.s2)
        try k.destroy(fd, id: rig.bypass)
        #expect(errnoOf { try k.destroy(fd, id: rig.viommu) } == .EBUSY)   // vDevice, vEVENTQ
        try k.destroy(fd, id: rig.vdevice)
        #expect(errnoOf { try k.destroy(fd, id: rig.viommu) } == .EBUSY)   // vEVENTQ
        // An open vEVENTQ fd blocks its own DESTROY.
        #expect(errnoOf { try k.destroy(fd, id: rig.veventq) } == .EBUSY)
        k.closeEventFD(fd, rig.eventFD)
        try k.destroy(fd, id: rig.veventq)
        // The vIOMMU holds the S2 (besides the attached device).
        k.close(rig.device)
        #expect(errnoOf { try k.destroy(fd, id: rig.s2) } == .EBUSY)
        // The S2 holds the IOAS.
        #expect(errnoOf { try k.destroy(fd, id: rig.ioas) } == .EBUSY)
        try k.destroy(fd, id: rig.viommu)
        try k.destroy(fd, id: rig.s2)
        try k.destroy(fd, id: rig.ioas)
        #expect(errnoOf { try k.destroy(fd, id: rig.ioas) } == .ENOENT)
        #expect(errnoOf { try k.destroy(fd, id: 0) } == .ENOENT)
    }

    @Test func attachedDeviceHoldsAPagingHWPTAndNestedOnParentHoldsIt() throws {
        let k = makeKernel()
        let fd = try k.openIommufd()
        let (dev, devID) = try k.openAndBind(Fixture.vtdDev, to: fd)
        let ioas = try k.ioasAlloc(fd)
        let parent = try k.hwptAlloc(fd, flags: HWPTAllocFlags.nestParent, devID: devID, ptID: ioas, dataType: 0, data: [])
        _ = try k.attach(dev, ptID: parent)
        #expect(errnoOf { try k.destroy(fd, id: parent) } == .EBUSY)
        try k.detach(dev)
        // A VT-d nested HWPT allocated directly on the parent holds it.
        let nested = try k.hwptAlloc(fd, flags: 0, devID: devID, ptID: parent, dataType: HWPTDataType.vtdS1,
                                     data: [UInt8](repeating: 0, count: 24))
        #expect(errnoOf { try k.destroy(fd, id: parent) } == .EBUSY)
        try k.destroy(fd, id: nested)
        try k.destroy(fd, id: parent)
    }

    @Test func automaticHWPTVanishesWithItsLastDevice() throws {
        let k = makeKernel()
        let fd = try k.openIommufd()
        let (dev, devID) = try k.openAndBind(Fixture.gpuVfio, to: fd)
        let ioas = try k.ioasAlloc(fd)
        let auto = try k.attach(dev, ptID: ioas)
        #expect(auto == 3)
        #expect(auto != ioas)
        // Attaching to the IOAS again reuses the automatic HWPT (a no-op replace).
        #expect(try k.attach(dev, ptID: ioas) == auto)
        // A second device behind the same SMMU shares it.
        let (dev2, _) = try k.openAndBind(Fixture.gpuVfio2, to: fd)
        #expect(try k.attach(dev2, ptID: ioas) == auto)
        #expect(errnoOf { try k.destroy(fd, id: auto) } == .EBUSY)
        try k.detach(dev)
        #expect(errnoOf { try k.destroy(fd, id: auto) } == .EBUSY)
        try k.detach(dev2)
        #expect(errnoOf { try k.destroy(fd, id: auto) } == .ENOENT)
        // A manual HWPT is never picked by attach-to-IOAS (docs/kernel-interface.md §9.5).
        let manual = try k.hwptAlloc(fd, flags: 0, devID: devID, ptID: ioas, dataType: 0, data: [])
        let again = try k.attach(dev, ptID: ioas)
        #expect(again != manual)
        // Detach is idempotent.
        try k.detach(dev)
        try k.detach(dev)
    }

    @Test func uniquenessRulesGiveEEXIST() throws {
        let rig = try ArmRig()
        let k = rig.kernel
        let fd = rig.iommufd
        // A second vIOMMU on the same S2 is allowed (they share the VMID).
        let viommu2 = try k.viommuAlloc(fd, type: VIOMMUType.armSMMUv3, devID: rig.devID, hwptID: rig.s2, data: []).id
        // One vDevice per device, across all vIOMMUs.
        #expect(errnoOf { try k.vdeviceAlloc(fd, viommuID: rig.viommu, devID: rig.devID, virtID: 0x200) } == .EEXIST)
        #expect(errnoOf { try k.vdeviceAlloc(fd, viommuID: viommu2, devID: rig.devID, virtID: 0x200) } == .EEXIST)
        // virt_id unique per vIOMMU.
        let (_, dev2) = try k.openAndBind(Fixture.gpuVfio2, to: fd)
        #expect(errnoOf { try k.vdeviceAlloc(fd, viommuID: rig.viommu, devID: dev2, virtID: 0x100) } == .EEXIST)
        #expect(try k.vdeviceAlloc(fd, viommuID: viommu2, devID: dev2, virtID: 0x100) > 0)
        // One vEVENTQ per type per vIOMMU; another type is fine (types are not checked).
        #expect(errnoOf { try k.veventqAlloc(fd, viommuID: rig.viommu, type: VEventQType.armSMMUv3, depth: 8) } == .EEXIST)
        #expect(try k.veventqAlloc(fd, viommuID: rig.viommu, type: 77, depth: 8).id > 0)
        #expect(errnoOf { try k.veventqAlloc(fd, viommuID: rig.viommu, type: 0, depth: 8) } == .EOPNOTSUPP)
        #expect(errnoOf { try k.veventqAlloc(fd, viommuID: viommu2, type: 1, depth: 0) } == .EINVAL)
        #expect(errnoOf { try k.veventqAlloc(fd, viommuID: viommu2, type: 1, depth: 524_289) } == .EINVAL)
        #expect(errnoOf { try k.veventqAlloc(fd, viommuID: 999, type: 1, depth: 1) } == .ENOENT)
    }

    @Test func closingTheIommufdKeepsTheContextWhileCdevsAndEventFdsHoldIt() throws {
        let rig = try ArmRig()
        let k = rig.kernel
        k.close(rig.iommufd)
        #expect(k.state.contexts.count == 1)
        // The device stays attached and usable through its cdev.
        #expect(try k.attach(rig.device, ptID: rig.s2) == rig.s2)
        #expect(errnoOf { try k.ioasAlloc(rig.iommufd) } == .EBADF)
        k.close(rig.device)
        #expect(k.state.contexts.count == 1)   // the event fd still holds it
        k.closeEventFD(rig.iommufd, rig.eventFD)
        #expect(k.state.contexts.isEmpty)
        // Only the memfd is left open.
        #expect(k.state.files.count == 1)
    }

    @Test func processExitDestroysObjectsButKeepsHostState() throws {
        let rig = try ArmRig()
        let k = rig.kernel
        let index = try k.vfioIndex(Fixture.gpuVfio)
        try k.chownVfioDevice(index: index, uid: 107, gid: 107)
        try k.writeDriverOverride(Fixture.gpuVfio, "vfio-pci")
        k.simulateProcessExit()
        #expect(k.state.contexts.isEmpty)
        #expect(k.state.files.isEmpty)
        #expect(k.state.memories.isEmpty)
        let sysfs = try #require(try k.pciDevice(Fixture.gpuVfio))
        #expect(sysfs.driver == "vfio-pci")
        #expect(sysfs.vfioDevIndex == index)
        #expect(sysfs.driverOverride == "vfio-pci")
        let owner = try k.vfioDeviceOwner(index: index)
        #expect(owner?.uid == 107 && owner?.gid == 107)
        // A new process starts from fd 3 and ID 1 again.
        let fd = try k.openIommufd()
        #expect(fd.fd == 3)
        let (_, devID) = try k.openAndBind(Fixture.gpuVfio, to: fd)
        #expect(devID == 1)
    }
}
