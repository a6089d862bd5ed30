import Foundation
import Glibc
import Testing
@testable import VsmmuLinux

@Test func memlockIsCheckedUnlessCAPIPCLock() {
    #expect(Preflight.memlockProblem(pinning: 16 << 30, limit: 8 << 20, ipcLock: false)?.contains("RLIMIT_MEMLOCK is 8 MiB") == true)
    #expect(Preflight.memlockProblem(pinning: 16 << 30, limit: 8 << 20, ipcLock: true) == nil)
    #expect(Preflight.memlockProblem(pinning: 16 << 30, limit: UInt64(bitPattern: -1), ipcLock: false) == nil)
    #expect(Preflight.memlockProblem(pinning: 4 << 20, limit: 8 << 20, ipcLock: false) == nil)
}

@Test func capIPCLockIsReadFromTheEffectiveSet() {
    #expect(Preflight.hasIPCLock(status: "Name:\tx\nCapEff:\t0000000000004000\n"))
    #expect(!Preflight.hasIPCLock(status: "Name:\tx\nCapEff:\t0000000000000000\n"))
    #expect(Preflight.hasIPCLock(status: "CapEff:\t000001ffffffffff\n"))
    #expect(!Preflight.hasIPCLock(status: nil))
}

@Test func missingDeviceNodesAreNamed() {
    let d = NSTemporaryDirectory() + "vsmmu-pre-\(UUID().uuidString)"
    defer { try? FileManager.default.removeItem(atPath: d) }
    let sys = d + "/sys"
    #expect(Preflight.accessProblem(devRoot: d, sysfsRoot: sys)?.contains("CONFIG_IOMMUFD") == true)
    try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
    _ = FileManager.default.createFile(atPath: d + "/iommu", contents: nil)
    #expect(Preflight.accessProblem(devRoot: d, sysfsRoot: sys)?.contains("CONFIG_VFIO_DEVICE_CDEV") == true)
    // no device on vfio-pci yet: no /dev/vfio/devices, but the vfio-dev class is there
    try? FileManager.default.createDirectory(atPath: sys + "/class/vfio-dev", withIntermediateDirectories: true)
    #expect(Preflight.accessProblem(devRoot: d, sysfsRoot: sys) == nil)
    try? FileManager.default.removeItem(atPath: sys)
    try? FileManager.default.createDirectory(atPath: d + "/vfio/devices", withIntermediateDirectories: true)
    #expect(Preflight.accessProblem(devRoot: d, sysfsRoot: sys) == nil)
}

@Test func anFdIsClosedOnceEvenIfClosedTwice() throws {
    let dev = NSTemporaryDirectory() + "vsmmu-dev-\(UUID().uuidString)"
    defer { try? FileManager.default.removeItem(atPath: dev) }
    try FileManager.default.createDirectory(atPath: dev + "/vfio/devices", withIntermediateDirectories: true)
    _ = FileManager.default.createFile(atPath: dev + "/iommu", contents: nil)
    let k = LinuxKernel(sysfsRoot: "/nonexistent", devRoot: dev)
    let a = try k.openIommufd()
    k.close(a)
    // the number is reused by the next open; a stale second close must not close it
    let other = open("/dev/null", O_RDONLY)
    defer { close(other) }
    #expect(other == a.fd)
    k.close(a)
    #expect(fcntl(other, F_GETFD) != -1, "the second close closed someone else's fd")
}
