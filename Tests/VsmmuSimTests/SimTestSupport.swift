import Foundation
import Testing
import VsmmuKernel
@testable import VsmmuSim

// Fixtures and helpers shared by the simulated-kernel tests.

func pci(_ text: String) -> PCIAddress {
    guard let address = PCIAddress(text) else { preconditionFailure("bad test PCI address \(text)") }
    return address
}

let msiWindow = ReservedRegion(start: 0x800_0000, size: 0x10_0000, type: "msi")

func smmu(_ name: String, nesting: Bool = true, coherent: Bool = true, ats: Bool = true, oas: Int = 48,
          cmdqv: Int? = nil, regions: [ReservedRegion] = [msiWindow]) -> HostIOMMU {
    HostIOMMU(name: name, type: .armSMMUv3, nesting: nesting, coherent: coherent, ats: ats, ril: true, pasid: true,
              ssidSize: 20, oas: oas, reservedRegions: regions, cmdqvVCMDQs: cmdqv)
}

func device(_ address: String, driver: String?, group: Int?, iommu: String?, classCode: UInt32 = 0x030200) -> HostPCIDevice {
    HostPCIDevice(address: pci(address), vendor: 0x10de, device: 0x2342, classCode: classCode, driver: driver,
                  iommuGroup: group, iommu: iommu, numaNode: 0)
}

enum Fixture {
    static let smmuA = "smmu3.0x0000000016000000"
    static let smmuB = "smmu3.0x0000000017000000"
    static let smmuNoNest = "smmu3.0x0000000018000000"
    static let smmuNonCoherent = "smmu3.0x0000000019000000"
    static let smmuCMDQV = "smmu3.0x000000001a000000"
    static let dmar = "dmar0"

    static let gpuNative = pci("0000:09:00.0")    // nvidia, group 10, smmuA
    static let gpuVfio = pci("0000:09:01.0")      // vfio-pci, group 11, smmuA   -> vfio0
    static let gpuVfio2 = pci("0000:09:02.0")     // vfio-pci, group 17, smmuA   -> vfio1
    static let nicB = pci("0000:0a:00.0")         // vfio-pci, group 12, smmuB   -> vfio2
    static let devNoNest = pci("0000:0b:00.0")    // vfio-pci, group 13           -> vfio3
    static let devNonCoherent = pci("0000:0c:00.0") // vfio-pci, group 14          -> vfio4
    static let devCMDQV = pci("0000:0d:00.0")     // vfio-pci, group 15           -> vfio5
    static let groupVfio = pci("0000:0e:00.0")    // vfio-pci, group 16, smmuA   -> vfio6
    static let groupHost = pci("0000:0e:00.1")    // snd_hda_intel, group 16, smmuA
    static let vtdDev = pci("0000:10:00.0")       // vfio-pci, group 20, dmar0   -> vfio7
    static let rootPort = pci("0000:00:01.0")     // pcieport bridge, group 30, smmuA

    static let host = HostDescription(
        name: "grace-test",
        kernel: KernelFacts(release: "7.2.13", iommufd: true, vfioCdev: true),
        iommus: [
            smmu(smmuA), smmu(smmuB, oas: 44), smmu(smmuNoNest, nesting: false),
            smmu(smmuNonCoherent, coherent: false), smmu(smmuCMDQV, cmdqv: 4),
            HostIOMMU(name: dmar, type: .intelVTd, nesting: true, coherent: true, ats: false, ril: false, pasid: false,
                      ssidSize: 0, oas: 48, reservedRegions: [ReservedRegion(start: 0xFEE0_0000, size: 0x10_0000, type: "msi")],
                      cmdqvVCMDQs: nil),
        ],
        pciDevices: [
            device("0000:09:00.0", driver: "nvidia", group: 10, iommu: smmuA),
            device("0000:09:01.0", driver: "vfio-pci", group: 11, iommu: smmuA),
            device("0000:09:02.0", driver: "vfio-pci", group: 17, iommu: smmuA),
            device("0000:0a:00.0", driver: "vfio-pci", group: 12, iommu: smmuB),
            device("0000:0b:00.0", driver: "vfio-pci", group: 13, iommu: smmuNoNest),
            device("0000:0c:00.0", driver: "vfio-pci", group: 14, iommu: smmuNonCoherent),
            device("0000:0d:00.0", driver: "vfio-pci", group: 15, iommu: smmuCMDQV),
            device("0000:0e:00.0", driver: "vfio-pci", group: 16, iommu: smmuA),
            device("0000:0e:00.1", driver: "snd_hda_intel", group: 16, iommu: smmuA),
            device("0000:10:00.0", driver: "vfio-pci", group: 20, iommu: dmar),
            device("0000:00:01.0", driver: "pcieport", group: 30, iommu: smmuA, classCode: 0x060400),
        ])

    static let selftestHost = HostDescription(
        name: "lab",
        kernel: KernelFacts(release: "7.2.13", iommufd: true, vfioCdev: true),
        iommus: [HostIOMMU(name: "selftest", type: .selftest, nesting: true, coherent: true, ats: false, ril: false,
                           pasid: false, ssidSize: 0, oas: 48, reservedRegions: [], cmdqvVCMDQs: nil)],
        pciDevices: [])
}

/// A kernel over the fixture host with no environment influence.
func makeKernel(_ host: HostDescription = Fixture.host, environment: [String: String] = [:]) -> SimulatedKernel {
    SimulatedKernel(host: host, environment: environment)
}

/// The errno a call fails with, nil when it succeeds. (Untyped `throws`: #expect
/// rewrites the closure's body, which loses typed throws.) Any other error is errno -1.
func errnoOf<T>(_ body: () throws -> T) -> Errno? {
    do {
        _ = try body()
        return nil
    } catch let error as KernelCallError {
        return error.errno
    } catch {
        return Errno(-1)
    }
}

extension SimulatedKernel {
    func vfioIndex(_ address: PCIAddress) throws -> Int {
        guard let index = try pciDevice(address)?.vfioDevIndex else {
            throw SimConfigurationError("\(address) has no vfio index")
        }
        return index
    }

    /// Opens the cdev of a vfio-pci device and binds it.
    func openAndBind(_ address: PCIAddress, to iommufd: IommufdHandle) throws -> (handle: DeviceHandle, devID: ObjectID) {
        let handle = try openVfioDevice(index: try vfioIndex(address))
        return (handle, try bindIommufd(handle, iommufd: iommufd))
    }
}

/// vSTE bytes (two little-endian words).
func vste(_ word0: UInt64, _ word1: UInt64 = 0) -> [UInt8] { le64Bytes(word0) + le64Bytes(word1) }

let rw: IOASMapFlags = [.fixedIOVA, .readable, .writeable]

/// The bring-up of docs/kernel-interface.md §0 on one ARM device: IOAS, S2, attach, guest RAM (memfd) mapped by MAP_FILE,
/// vIOMMU, vDevice, vEVENTQ, bypass nested HWPT attached.
struct ArmRig {
    let kernel: SimulatedKernel
    let iommufd: IommufdHandle
    let device: DeviceHandle
    let devID: ObjectID
    let ioas: ObjectID
    let s2: ObjectID
    let memory: GuestMemory
    let viommu: ObjectID
    let vdevice: ObjectID
    let veventq: ObjectID
    let eventFD: KernelFile
    let bypass: ObjectID

    init(kernel: SimulatedKernel = makeKernel(), address: PCIAddress = Fixture.gpuVfio) throws {
        self.kernel = kernel
        iommufd = try kernel.openIommufd()
        (device, devID) = try kernel.openAndBind(address, to: iommufd)
        ioas = try kernel.ioasAlloc(iommufd)
        s2 = try kernel.hwptAlloc(iommufd, flags: HWPTAllocFlags.nestParent, devID: devID, ptID: ioas, dataType: 0, data: [])
        _ = try kernel.attach(device, ptID: s2)
        memory = try kernel.createGuestMemory(name: "ram0", size: 0x4000_0000, backing: .memfd, hugepageSize: nil)
        // memfd memory has no VA in this process: it goes into the IOAS by MAP_FILE (docs/kernel-interface.md §2.7).
        let ramFile = try #require(memory.file)
        _ = try kernel.ioasMap(iommufd, ioas: ioas, flags: rw, source: .file(ramFile, offset: 0), length: memory.size, iova: 0x4000_0000)
        viommu = try kernel.viommuAlloc(iommufd, type: VIOMMUType.armSMMUv3, devID: devID, hwptID: s2, data: []).id
        vdevice = try kernel.vdeviceAlloc(iommufd, viommuID: viommu, devID: devID, virtID: 0x100)
        (veventq, eventFD) = try kernel.veventqAlloc(iommufd, viommuID: viommu, type: VEventQType.armSMMUv3, depth: 64)
        bypass = try kernel.hwptAlloc(iommufd, flags: 0, devID: devID, ptID: viommu, dataType: HWPTDataType.armSMMUv3, data: vste(0x9))
        _ = try kernel.attach(device, ptID: bypass)
    }
}

/// host.yaml as JSON, for tests (the project supplies the YAML codec).
struct JSONHostCodec: HostFileCodec {
    func decode(_ text: String, path: String) throws -> HostDescription {
        try JSONDecoder().decode(HostDescription.self, from: Data(text.utf8))
    }
    func encode(_ host: HostDescription) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
        return (try? encoder.encode(host)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
    }
}

func temporaryDirectory() -> String {
    NSTemporaryDirectory() + "vsmmu-sim-test-" + UUID().uuidString
}
