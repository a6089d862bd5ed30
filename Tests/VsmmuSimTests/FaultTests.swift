import Testing
import VsmmuKernel
@testable import VsmmuSim

// VSMMU_SIM_FAIL, VSMMU_SIM_DELAY_MS, call counting and the trace (docs/contract.md §6).

@Suite struct FaultTests {
    @Test func parsesFailSpecs() throws {
        let rules = try SimulatedKernel.parseFailSpec("IOMMU_VIOMMU_ALLOC:ENOMEM, VFIO_DEVICE_BIND_IOMMUFD#2:EBUSY,SYSFS_UNBIND:16")
        #expect(rules == [
            FailRule(op: "IOMMU_VIOMMU_ALLOC", nth: nil, errno: .ENOMEM),
            FailRule(op: "VFIO_DEVICE_BIND_IOMMUFD", nth: 2, errno: .EBUSY),
            FailRule(op: "SYSFS_UNBIND", nth: nil, errno: .EBUSY),
        ])
        #expect(try SimulatedKernel.parseFailSpec("").isEmpty)
        for bad in ["IOMMU_VIOMMU_ALLOC", "IOMMU_VIOMMU_ALLOC:ENOPE", "NOT_AN_OP:EBUSY", "IOMMU_DESTROY#0:EBUSY",
                    "IOMMU_DESTROY#x:EBUSY", "IOMMU_DESTROY:EBUSY,,IOMMU_IOAS_ALLOC:EIO", ":EBUSY", "IOMMU_DESTROY:EBUSY:EIO"] {
            #expect(throws: SimConfigurationError.self) { try SimulatedKernel.parseFailSpec(bad) }
        }
        do {
            _ = try SimulatedKernel.parseFailSpec("IOMMU_IOAS_ALOC:EBUSY")
        } catch {
            #expect(error.message.contains("IOMMU_IOAS_ALOC"))
        }
    }

    @Test func nthCallFailsOnceWithoutChangingState() throws {
        let k = makeKernel(environment: ["VSMMU_SIM_FAIL": "VFIO_DEVICE_BIND_IOMMUFD#2:EBUSY"])
        k.traceEnabled = true
        let fd = try k.openIommufd()
        let (_, first) = try k.openAndBind(Fixture.gpuVfio, to: fd)
        let cdev = try k.openVfioDevice(index: try k.vfioIndex(Fixture.gpuVfio2))
        let before = k.mutatingCalls
        var failure: KernelCallError?
        do { _ = try k.bindIommufd(cdev, iommufd: fd) } catch { failure = error }
        #expect(failure?.errno == .EBUSY)
        #expect(failure?.call == "VFIO_DEVICE_BIND_IOMMUFD")
        #expect(k.mutatingCalls == before)
        #expect(k.trace.last?.injected == true)
        // Nothing happened: the same fd binds on the third call and gets the next ID.
        let second = try k.bindIommufd(cdev, iommufd: fd)
        #expect((first, second) == (1, 2))
        #expect(k.mutatingCalls == before + 1)
        #expect(k.trace.map(\.op).filter { $0 == "VFIO_DEVICE_BIND_IOMMUFD" }.count == 3)
    }

    /// The per-kind counters `#N` reads: one slot per call kind, in vocabulary order; every
    /// call counts (refused and injected ones too), each in its own kind's slot.
    @Test func callsAreCountedPerKind() throws {
        #expect(KernelCall.allCases.enumerated().allSatisfy { $0.offset == $0.element.ordinal })
        let k = makeKernel(environment: ["VSMMU_SIM_FAIL": "IOMMU_IOAS_ALLOC#2:ENOMEM"])
        let fd = try k.openIommufd()
        _ = try k.ioasAlloc(fd)
        #expect(errnoOf { try k.ioasAlloc(fd) } == .ENOMEM)
        #expect(errnoOf { try k.destroy(fd, id: 99) } == .ENOENT)
        k.close(fd)
        #expect(k.callCount(.ioasAlloc) == 2)
        #expect(k.callCount(.destroy) == 1)
        #expect(k.callCount(.openIommufd) == 1)
        #expect(k.callCount(.closeIommufd) == 1)
        #expect(k.callCount(.hwptAlloc) == 0)
    }

    @Test func ruleWithoutCountFailsEveryCall() throws {
        let k = makeKernel(environment: ["VSMMU_SIM_FAIL": "IOMMU_IOAS_ALLOC:ENOMEM"])
        let fd = try k.openIommufd()
        #expect(errnoOf { try k.ioasAlloc(fd) } == .ENOMEM)
        #expect(errnoOf { try k.ioasAlloc(fd) } == .ENOMEM)
        #expect(k.objects(1).isEmpty)
        k.failRules = []
        #expect(try k.ioasAlloc(fd) == 1)
    }

    @Test func readsAreNotMutatingAndRefusalsAreTraced() throws {
        let k = makeKernel()
        k.traceEnabled = true
        _ = try k.pciDevices()
        _ = try k.iommuNames()
        #expect(k.mutatingCalls == 0)
        let fd = try k.openIommufd()
        #expect(errnoOf { try k.destroy(fd, id: 5) } == .ENOENT)
        #expect(k.mutatingCalls == 2)
        #expect(k.trace.map(\.op) == ["SYSFS_READ_PCI_DEVICES", "SYSFS_READ_IOMMU_NAMES", "OPEN_IOMMUFD", "IOMMU_DESTROY"])
        #expect(k.trace.last?.errno == .ENOENT)
        #expect(k.trace.last?.injected == false)
        #expect(k.trace.last?.detail == "fd=3 id=5")
    }

    @Test func badEnvironmentIsReportedNotFatal() throws {
        let k = makeKernel(environment: ["VSMMU_SIM_FAIL": "garbage", "VSMMU_SIM_DELAY_MS": "5"])
        #expect(k.configurationError != nil)
        #expect(k.failRules.isEmpty)
        _ = try k.openIommufd()
        let delayed = makeKernel(environment: ["VSMMU_SIM_DELAY_MS": "2"])
        #expect(delayed.delayMS == 2)
        #expect(makeKernel(environment: ["VSMMU_SIM_DELAY_MS": "-1"]).configurationError != nil)
        let directory = temporaryDirectory()
        #expect(throws: SimConfigurationError.self) {
            _ = try SimStore.open(directory: directory, initialHost: Fixture.host, codec: JSONHostCodec(),
                                  environment: ["VSMMU_SIM_FAIL": "IOMMU_DESTROY"])
        }
    }
}
