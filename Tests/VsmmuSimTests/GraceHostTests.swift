import Testing
import VsmmuKernel
@testable import VsmmuSim

// A Grace-like host (issue 16): variant VFIO drivers, per-device GET_HW_INFO facts,
// CANWBS per master, 64 KiB pages, RLIMIT_MEMLOCK accounting.

enum GraceFixture {
    static let smmu = "smmu3.0x0000000016000000"
    static let gpu = pci("0000:09:00.0")         // nvidia → nvgrace_gpu_vfio_pci, ATS, 20-bit PASID
    static let gpuNoATS = pci("0000:09:01.0")    // on nvgrace_gpu_vfio_pci already, no ATS, no PASID
    static let nic = pci("0000:0a:00.0")         // mlx5_core → mlx5_vfio_pci, not CANWBS
    static let plain = pci("0000:0b:00.0")       // no driver, vfio-pci
    static let host = HostDescription(
        name: "gb200",
        kernel: KernelFacts(release: "7.2.13", iommufd: true, vfioCdev: true, pageSize: 65536),
        iommus: [GraceFixtureIOMMU.smmu],
        pciDevices: [
            HostPCIDevice(address: gpu, vendor: 0x10de, device: 0x2941, classCode: 0x030200, driver: "nvidia", iommuGroup: 10, iommu: smmu,
                          numaNode: 0, vfioDriver: "nvgrace_gpu_vfio_pci", ats: true, pasidWidth: 20, canwbs: true),
            HostPCIDevice(address: gpuNoATS, vendor: 0x10de, device: 0x2941, classCode: 0x030200, driver: "nvgrace_gpu_vfio_pci", iommuGroup: 11,
                          iommu: smmu, numaNode: 0, vfioDriver: "nvgrace_gpu_vfio_pci", ats: false, pasidWidth: 0, canwbs: true),
            HostPCIDevice(address: nic, vendor: 0x15b3, device: 0x101e, classCode: 0x020000, driver: "mlx5_core", iommuGroup: 12, iommu: smmu,
                          numaNode: 0, vfioDriver: "mlx5_vfio_pci", canwbs: false),
            HostPCIDevice(address: plain, vendor: 0x1af4, device: 0x1001, classCode: 0x010802, driver: nil, iommuGroup: 13, iommu: smmu, numaNode: 0),
        ])
}

enum GraceFixtureIOMMU {
    static let smmu = HostIOMMU(name: GraceFixture.smmu, type: .armSMMUv3, nesting: true, coherent: true, ats: true, ril: true, pasid: true,
                                ssidSize: 20, oas: 48, reservedRegions: [msiWindow], cmdqvVCMDQs: 4)
}

extension SimulatedKernel {
    /// driver_override, unbind, drivers_probe: what the planner's move does.
    func move(_ a: PCIAddress, to driver: String) throws {
        try writeDriverOverride(a, driver)
        if let current = try pciDevice(a)?.driver { try unbindDriver(a, driver: current) }
        try driversProbe(a)
    }
}

@Suite struct GraceHostTests {
    @Test func variantDriversAreVFIODriversWithCdevs() throws {
        let k = makeKernel(GraceFixture.host)
        // Already on the variant driver: a cdev from the start.
        #expect(try k.pciDevice(GraceFixture.gpuNoATS)?.vfioDevIndex != nil)
        try k.move(GraceFixture.gpu, to: "nvgrace_gpu_vfio_pci")
        let moved = try #require(try k.pciDevice(GraceFixture.gpu))
        #expect(moved.driver == "nvgrace_gpu_vfio_pci" && moved.vfioDevIndex != nil)
        let fd = try k.openIommufd()
        _ = try k.openAndBind(GraceFixture.gpu, to: fd)
        try k.move(GraceFixture.nic, to: "mlx5_vfio_pci")
        #expect(try k.pciDevice(GraceFixture.nic)?.driver == "mlx5_vfio_pci")
        // A variant driver's probe refuses a device it was not written for.
        try k.move(GraceFixture.plain, to: "nvgrace_gpu_vfio_pci")
        #expect(try k.pciDevice(GraceFixture.plain)?.driver == nil)
        try k.move(GraceFixture.plain, to: "vfio-pci")
        #expect(try k.pciDevice(GraceFixture.plain)?.vfioDevIndex != nil)
    }

    @Test func hwInfoAnswersThroughTheDevice() throws {
        let k = makeKernel(GraceFixture.host)
        try k.move(GraceFixture.gpu, to: "nvgrace_gpu_vfio_pci")
        let fd = try k.openIommufd()
        let (_, withATS) = try k.openAndBind(GraceFixture.gpu, to: fd)
        let (_, noATS) = try k.openAndBind(GraceFixture.gpuNoATS, to: fd)
        let a = try k.getHwInfo(fd, devID: withATS, requestType: nil)
        let b = try k.getHwInfo(fd, devID: noATS, requestType: nil)
        #expect(!a.capabilities.contains(.pciATSNotSupported) && a.maxPasidLog2 == 20)
        #expect(b.capabilities.contains(.pciATSNotSupported) && b.maxPasidLog2 == 0)
    }

    @Test func canwbsIsPerMasterAndACoherentStage2LocksIn() throws {
        let k = makeKernel(GraceFixture.host)
        try k.move(GraceFixture.nic, to: "mlx5_vfio_pci")
        let fd = try k.openIommufd()
        let ioas = try k.ioasAlloc(fd)
        let (_, gpuID) = try k.openAndBind(GraceFixture.gpuNoATS, to: fd)
        let (nic, nicID) = try k.openAndBind(GraceFixture.nic, to: fd)
        let s2 = try k.hwptAlloc(fd, flags: HWPTAllocFlags.nestParent, devID: gpuID, ptID: ioas, dataType: 0, data: [])
        // The stage-2 was made through a CANWBS GPU: the NIC may not join it.
        #expect(errnoOf { try k.attach(nic, ptID: s2) } == .EINVAL)
        // VIOMMU_ALLOC asks only dev_id: through the NIC it is refused.
        #expect(errnoOf { try k.viommuAlloc(fd, type: VIOMMUType.armSMMUv3, devID: nicID, hwptID: s2, data: []) } == .EOPNOTSUPP)
        #expect(try k.viommuAlloc(fd, type: VIOMMUType.armSMMUv3, devID: gpuID, hwptID: s2, data: []).id > 0)
        // A stage-2 made through the NIC takes the NIC; then a CANWBS GPU cannot upgrade it.
        let ioas2 = try k.ioasAlloc(fd)
        let s2nic = try k.hwptAlloc(fd, flags: HWPTAllocFlags.nestParent, devID: nicID, ptID: ioas2, dataType: 0, data: [])
        _ = try k.attach(nic, ptID: s2nic)
        try k.move(GraceFixture.gpu, to: "nvgrace_gpu_vfio_pci")
        let (gpu, _) = try k.openAndBind(GraceFixture.gpu, to: fd)
        #expect(errnoOf { try k.attach(gpu, ptID: s2nic) } == .EINVAL)
    }

    @Test func sixtyFourKiBPagesSetAlignmentAndTheSmallestMapping() throws {
        let k = makeKernel(GraceFixture.host)
        let fd = try k.openIommufd()
        let (dev, devID) = try k.openAndBind(GraceFixture.gpuNoATS, to: fd)
        let ioas = try k.ioasAlloc(fd)
        let s2 = try k.hwptAlloc(fd, flags: HWPTAllocFlags.nestParent, devID: devID, ptID: ioas, dataType: 0, data: [])
        _ = try k.attach(dev, ptID: s2)
        #expect(try k.ioasIovaRanges(fd, ioas: ioas).alignment == 65536)
        #expect(errnoOf { try k.createGuestMemory(name: "small", size: 0x1000, backing: .memfd, hugepageSize: nil) } == .EINVAL)
        let ram = try k.createGuestMemory(name: "ram", size: 0x20000, backing: .memfd, hugepageSize: nil)
        let file = try #require(ram.file)
        #expect(errnoOf { try k.ioasMap(fd, ioas: ioas, flags: rw, source: .file(file, offset: 0), length: 0x1000, iova: 0x4000_0000) } == .EINVAL)
        #expect(errnoOf { try k.ioasMap(fd, ioas: ioas, flags: rw, source: .file(file, offset: 0), length: 0x10000, iova: 0x4000_1000) } == .EINVAL)
        #expect(try k.ioasMap(fd, ioas: ioas, flags: rw, source: .file(file, offset: 0), length: 0x10000, iova: 0x4001_0000) == 0x4001_0000)
    }

    @Test func pinningIsChargedToRlimitMemlockPerUserOrPerProcess() throws {
        let k = makeKernel(GraceFixture.host)
        k.setMemlockLimit(1 << 30)
        let ram = try k.createGuestMemory(name: "ram", size: 3 << 29, backing: .memfd, hugepageSize: nil)
        let file = try #require(ram.file)
        func rig(perProcess: Bool, _ address: PCIAddress) throws -> (IommufdHandle, ObjectID, DeviceHandle, ObjectID) {
            let fd = try k.openIommufd()
            if perProcess { _ = try k.iommuOption(fd, option: .rlimitMode, objectID: 0, set: 1) }
            let (dev, devID) = try k.openAndBind(address, to: fd)
            return (fd, try k.ioasAlloc(fd), dev, devID)
        }
        // User mode: 768 MiB pinned at HWPT_ALLOC (mapped before, pinned lazily) fits.
        let (fdA, ioasA, _, devA) = try rig(perProcess: false, GraceFixture.gpuNoATS)
        _ = try k.ioasMap(fdA, ioas: ioasA, flags: rw, source: .file(file, offset: 0), length: 3 << 28, iova: 0x4000_0000)
        #expect(k.lockedBytes().user == 0)
        _ = try k.hwptAlloc(fdA, flags: HWPTAllocFlags.nestParent, devID: devA, ptID: ioasA, dataType: 0, data: [])
        #expect(k.lockedBytes().user == 3 << 28)
        // 512 MiB more for the same user: over 1 GiB, ENOMEM at map time (the IOAS has a HWPT).
        #expect(errnoOf { try k.ioasMap(fdA, ioas: ioasA, flags: rw, source: .file(file, offset: 3 << 28), length: 1 << 29, iova: 0x1_0000_0000) } == .ENOMEM)
        // Per-process mode (IOMMU_OPTION RLIMIT_MODE): its own budget, the same failure past it,
        // here at HWPT_ALLOC for what was mapped before.
        try k.move(GraceFixture.gpu, to: "nvgrace_gpu_vfio_pci")
        let (fdB, ioasB, _, devB) = try rig(perProcess: true, GraceFixture.gpu)
        _ = try k.ioasMap(fdB, ioas: ioasB, flags: rw, source: .file(file, offset: 0), length: 3 << 28, iova: 0x4000_0000)
        _ = try k.hwptAlloc(fdB, flags: HWPTAllocFlags.nestParent, devID: devB, ptID: ioasB, dataType: 0, data: [])
        #expect(k.lockedBytes() == (user: 3 << 28, process: 3 << 28))
        let ioasC = try k.ioasAlloc(fdB)
        _ = try k.ioasMap(fdB, ioas: ioasC, flags: rw, source: .file(file, offset: 0), length: 1 << 29, iova: 0x4000_0000)
        #expect(errnoOf { try k.hwptAlloc(fdB, flags: HWPTAllocFlags.nestParent, devID: devB, ptID: ioasC, dataType: 0, data: []) } == .ENOMEM)
        // CAP_IPC_LOCK (no limit): nothing is charged.
        k.setMemlockLimit(nil)
        #expect(try k.hwptAlloc(fdB, flags: HWPTAllocFlags.nestParent, devID: devB, ptID: ioasC, dataType: 0, data: []) > 0)
    }
}
