import Foundation
import Testing
import VsmmuKernel

/// A failure keeps what it failed on: the CLI prints the message, every cause below it
/// (down to the kernel call and its errno) and the hint.
@Test func theCLIPrintsAnErrorsChainDownToTheKernelCall() throws {
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let t = "examples/selftest.yaml", host = "examples/hosts/selftest.yaml"
    #expect(vsmmu(["apply", t, "--host", host, "--state-dir", dir, "--auto-approve"]).code == 0)
    // The plan's liveness read of the held context fails.
    let r = vsmmu(["plan", t, "--host", host, "--state-dir", dir], env: ["VSMMU_SIM_FAIL": "IOMMU_IOAS_IOVA_RANGES#1:EIO"])
    #expect(r.code == 1)
    #expect(r.stderr.contains("error: cannot read the kernel's state\n  caused by: IOMMU_IOAS_IOVA_RANGES [fd="), "\(r.stderr)")
    #expect(r.stderr.contains("EIO"))
}

@Test func anErrorsChainKeepsEveryCauseAndTheFirstHint() {
    let kernel = KernelCallError(.bindIommufd, .EBUSY, "fd=5 iommufd=3")
    let inner = VsmmuError("binding gpu0", kernel: kernel, hint: "close the group node")
    let outer = VsmmuError(.apply, "guest vm1", cause: inner)
    #expect(outer.chain == ["guest vm1", "binding gpu0", "VFIO_DEVICE_BIND_IOMMUFD [fd=5 iommufd=3]: EBUSY (device or resource busy)"])
    #expect(outer.description == "guest vm1: binding gpu0: VFIO_DEVICE_BIND_IOMMUFD [fd=5 iommufd=3]: EBUSY (device or resource busy)")
    #expect(outer.firstHint == "close the group node")
    #expect((inner.cause as? KernelCallError)?.kernelCall == .bindIommufd)
}
