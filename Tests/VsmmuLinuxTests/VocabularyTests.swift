import Foundation
import CVsmmuUAPI
import Testing
import VsmmuKernel
import VsmmuTestSupport
@testable import VsmmuLinux
@testable import VsmmuSim

/// The kernel-call vocabulary against the C shim, and the two backends against each other.

@Test func everyIoctlOfTheVocabularyHasTheShimsRequestNumber() {
    let shim: [KernelCall: Int] = [
        .destroy: Int(VSMMU_IOMMU_DESTROY), .ioasAlloc: Int(VSMMU_IOMMU_IOAS_ALLOC),
        .ioasIovaRanges: Int(VSMMU_IOMMU_IOAS_IOVA_RANGES), .ioasMap: Int(VSMMU_IOMMU_IOAS_MAP),
        .ioasMapFile: Int(VSMMU_IOMMU_IOAS_MAP_FILE), .ioasUnmap: Int(VSMMU_IOMMU_IOAS_UNMAP),
        .hwptAlloc: Int(VSMMU_IOMMU_HWPT_ALLOC), .getHwInfo: Int(VSMMU_IOMMU_GET_HW_INFO),
        .hwptInvalidate: Int(VSMMU_IOMMU_HWPT_INVALIDATE), .viommuAlloc: Int(VSMMU_IOMMU_VIOMMU_ALLOC),
        .vdeviceAlloc: Int(VSMMU_IOMMU_VDEVICE_ALLOC), .veventqAlloc: Int(VSMMU_IOMMU_VEVENTQ_ALLOC),
        .hwQueueAlloc: Int(VSMMU_IOMMU_HW_QUEUE_ALLOC), .testCmd: Int(VSMMU_IOMMU_TEST_CMD),
        .bindIommufd: Int(VSMMU_VFIO_DEVICE_BIND_IOMMUFD), .attach: Int(VSMMU_VFIO_DEVICE_ATTACH_IOMMUFD_PT),
        .detach: Int(VSMMU_VFIO_DEVICE_DETACH_IOMMUFD_PT), .deviceGetInfo: Int(VSMMU_VFIO_DEVICE_GET_INFO),
    ]
    for (call, number) in shim { #expect(call.request.map(Int.init) == number, "\(call)") }
    // Names are unique and findable; the vocabulary's ioctls all carry a number.
    #expect(Set(KernelCall.allCases.map(\.name)).count == KernelCall.allCases.count)
    for call in KernelCall.allCases { #expect(KernelCall(name: call.name) == call) }
    #expect(KernelCall.allCases.filter { $0.request != nil }.allSatisfy { $0.name.hasPrefix("IOMMU_") || $0.name.hasPrefix("VFIO_") })
}

/// A call the kernel refuses is described the same way by both backends (the uAPI
/// struct's field names): the Linux backend over a transport that answers ENOENT, the
/// simulated kernel for IDs that do not exist.
@Test func bothBackendsDescribeARefusedCallAlike() throws {
    let sim = SimulatedKernel(host: try HostDescription.load(path: packageRoot + "/examples/hosts/grace-2smmu-cmdqv.yaml"), environment: [:])
    let ctx = try sim.openIommufd()
    let t = RecordingTransport()
    t.answer = { _, _ in -Errno.ENOENT.rawValue }
    let linux = IoctlCalls(transport: t)
    func pair(_ a: () throws(KernelCallError) -> Void, _ b: () throws(KernelCallError) -> Void) -> (KernelCallError?, KernelCallError?) {
        var x: KernelCallError?, y: KernelCallError?
        do { try a() } catch { x = error }
        do { try b() } catch { y = error }
        return (x, y)
    }
    let cases: [(KernelCallError?, KernelCallError?)] = [
        pair({ () throws(KernelCallError) in _ = try linux.vdeviceAlloc(ctx.fd, viommuID: 9, devID: 8, virtID: 0x1100) },
             { () throws(KernelCallError) in _ = try sim.vdeviceAlloc(ctx, viommuID: 9, devID: 8, virtID: 0x1100) }),
        pair({ () throws(KernelCallError) in _ = try linux.veventqAlloc(ctx.fd, viommuID: 9, type: .armSMMUv3, depth: 128) },
             { () throws(KernelCallError) in _ = try sim.veventqAlloc(ctx, viommuID: 9, type: .armSMMUv3, depth: 128) }),
        pair({ () throws(KernelCallError) in _ = try linux.hwQueueAlloc(ctx.fd, viommuID: 9, type: .tegra241CMDQV, index: 0, iova: 0x1000, length: 0x1000) },
             { () throws(KernelCallError) in _ = try sim.hwQueueAlloc(ctx, viommuID: 9, type: .tegra241CMDQV, index: 0, iova: 0x1000, length: 0x1000) }),
        pair({ () throws(KernelCallError) in _ = try linux.ioasUnmap(ctx.fd, ioas: 9, iova: 0, length: 0x1000) },
             { () throws(KernelCallError) in _ = try sim.ioasUnmap(ctx, ioas: 9, iova: 0, length: 0x1000) }),
        pair({ () throws(KernelCallError) in _ = try linux.ioasIovaRanges(ctx.fd, ioas: 9) },
             { () throws(KernelCallError) in _ = try sim.ioasIovaRanges(ctx, ioas: 9) }),
    ]
    for (l, s) in cases {
        guard let l, let s else { Issue.record("a call did not fail: \(String(describing: l)) / \(String(describing: s))"); continue }
        #expect(l.kernelCall == s.kernelCall)
        // The simulated kernel adds its reason after the arguments; the real one cannot.
        // IOVA_RANGES: the real call also says how many ranges its buffer holds.
        let simArguments = String(s.detail.prefix { $0 != ":" })
        #expect(l.detail == simArguments || l.detail.hasPrefix(simArguments + " num_iovas="), "\(l.detail) vs \(simArguments)")
        #expect(l.detail.contains("_id=") || l.detail.contains("ioas_id="))
    }
}

/// The hardware-info encoder (the simulated kernel's) and decoder (`vsmmu host`'s, the
/// executor's) agree on every fact a host description carries.
@Test(arguments: ["grace-2smmu-cmdqv", "arm-limited", "intel-vtd"])
func hardwareInfoEncodesAndDecodesTheHostsFacts(host name: String) throws {
    let host = try HostDescription.load(path: packageRoot + "/examples/hosts/\(name).yaml")
    for iommu in host.iommus {
        let f: IOMMUFeatures?
        switch iommu.type {
        case .armSMMUv3:
            let info = ARMSMMUv3HWInfo(host: iommu)
            #expect(ARMSMMUv3HWInfo(info.bytes) == info)
            f = IOMMUFeatures.armSMMUv3(info.bytes, maxPasidLog2: 0, capabilities: iommu.ats ? [] : .pciATSNotSupported)
            #expect(f?.coherent == (iommu.coherent ? true : nil))
        case .intelVTd:
            let info = IntelVTdHWInfo(host: iommu)
            #expect(IntelVTdHWInfo(info.bytes) == info)
            f = IOMMUFeatures.intelVTd(info.bytes)
            #expect(f?.coherent == true)
        default:
            continue
        }
        #expect(f?.nesting == iommu.nesting, "\(iommu.name)")
        #expect(f?.ats == iommu.ats)
        #expect(f?.pasid == iommu.pasid)
        #expect(f?.oas == iommu.oas)
        if iommu.pasid { #expect(f?.ssidSize == iommu.ssidSize) }
        if iommu.type == .armSMMUv3 { #expect(f?.ril == iommu.ril) }
    }
    let tegra = Tegra241CMDQVHWInfo(version: 1, log2VCMDQs: 3, log2VSIDs: 4)
    #expect(Tegra241CMDQVHWInfo(tegra.bytes) == tegra)
    #expect(tegra.vcmdqs == 8)
}

@Test func uapiValuesKeepTheirCNames() throws {
    #expect(HWPTAllocFlags([.nestParent, .dirtyTracking]).description == "NEST_PARENT|DIRTY_TRACKING")
    #expect(HWPTAllocFlags(rawValue: 0x11).description == "NEST_PARENT|0x10")
    #expect(IOASMapFlags().description == "0")
    #expect(VIOMMUType.tegra241CMDQV.name == "TEGRA241_CMDQV")
    #expect(HWInfoType(rawValue: 0x77).name == "0x77")
    #expect(VEventQType.selftest.rawValue == 0xbeefbeef)
    // Saved as the bare numbers (holdings, the simulated kernel's state, plan files).
    let encoder = JSONEncoder()
    encoder.outputFormatting = .sortedKeys
    let json = try encoder.encode(Saved())
    #expect(String(decoding: json, as: UTF8.self) == #"{"flags":3,"type":2,"types":[1]}"#)
    #expect(try JSONDecoder().decode(Saved.self, from: json) == Saved())
}

private struct Saved: Codable, Equatable {
    var flags: HWPTAllocFlags = [.nestParent, .dirtyTracking]
    var type: VIOMMUType = .tegra241CMDQV
    var types: [VEventQType] = [.armSMMUv3]
}

/// Every ioctl of the vocabulary is on vsmmu-remote's list (its C table is the one place
/// a new call could be forgotten without the compiler noticing): a request the executor
/// knows fails its size check (EINVAL), an unknown one is ENOTTY.
@Test func theRemoteExecutorServesEveryIoctlOfTheVocabulary() throws {
    let e = try SpawnedExecutor()
    let k = LinuxKernel(remote: e.remote)
    let ctx = try k.openIommufd()
    defer { k.close(ctx) }
    let notYetMade: Set<KernelCall> = [.option]
    for call in KernelCall.allCases where call.request != nil && !notYetMade.contains(call) {
        var empty: [UInt8] = []
        let r = empty.withUnsafeMutableBytes { e.remote.ioctl(ctx.fd, call.request!, $0) }
        #expect(r != -Errno.ENOTTY.rawValue, "\(call) is not on vsmmu-remote's list (Sources/vsmmu-remote/main.c)")
    }
}
