import Foundation
import Testing
import VsmmuKernel
@testable import VsmmuLinux
import VsmmuTestSupport

/// The real executor serving `--root <dir>` on one end of a socketpair (its stdin and
/// stdout); `sys` is a fake sysfs tree built as `<dir>/sys`, and `<dir>/dev` holds
/// a /dev/iommu that is a plain file.
final class SpawnedExecutor {
    let dir = NSTemporaryDirectory() + "vsmmu-remote-root-\(UUID().uuidString)"
    /// Inside --root: the executor never follows a link out of it.
    let sys: FakeSysfs
    let process = Process()
    let clientFD: Int32
    let remote: RemoteExecutor
    let endpoint: String

    init(timeout: Double = 10, extraArguments: [String] = []) throws {
        sys = FakeSysfs(root: dir + "/sys")
        let binary = try #require(vsmmuRemoteBinary, "vsmmu-remote is not built next to the tests (swift build builds it)")
        try FileManager.default.createDirectory(atPath: dir + "/dev/vfio/devices", withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: dir + "/dev/iommu", contents: nil)
        var sv: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &sv) == 0 else { throw Errno(errno) }
        let childEnd = FileHandle(fileDescriptor: sv[1], closeOnDealloc: false)
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["--root", dir] + extraArguments
        process.standardInput = childEnd
        process.standardOutput = childEnd
        process.standardError = FileHandle.nullDevice
        do { try process.run() } catch {
            _ = close(sv[0]); _ = close(sv[1])
            throw error
        }
        // Only the child holds its end now: when it dies, this side reads EOF.
        _ = close(sv[1])
        clientFD = sv[0]
        endpoint = "vsmmu-remote pid \(process.processIdentifier)"
        remote = try RemoteExecutor(readFD: clientFD, writeFD: clientFD, endpoint: endpoint, timeout: timeout)
    }

    deinit {
        remote.bye()
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        _ = close(clientFD)
        try? FileManager.default.removeItem(atPath: dir)
    }

    /// A device tree like the lab's: one SMMU, a GPU on nvidia, one on vfio-pci, a NIC.
    func populate() {
        sys.iommu("smmu3.0x0000000016000000")
        sys.device("0000:09:01.0", driver: "nvidia", group: 12, iommu: "smmu3.0x0000000016000000")
        sys.device("0000:09:02.0", driver: "vfio-pci", group: 13, iommu: "smmu3.0x0000000016000000", numa: "-1", vfio: 4, override: "vfio-pci")
        sys.device("0000:0a:00.0", cls: "0x020000", driver: nil, group: nil, iommu: nil)
        sys.file("kernel/iommu_groups/12/reserved_regions", "0x0000000008000000 0x00000000080fffff msi\n")
    }
}

@Test func theExecutorIsBuilt() {
    #expect(vsmmuRemoteBinary != nil, "vsmmu-remote is not built next to the tests (swift build builds it)")
}

@Test func sysfsThroughTheRemoteEqualsTheSameTreeReadLocally() throws {
    let e = try SpawnedExecutor()
    e.populate()
    let remote = LinuxKernel(remote: e.remote)
    let local = SysfsTree(root: e.sys.root)
    let expected = try local.pciAddresses().compactMap { local.device($0) }
    #expect(expected.count == 3)
    #expect(try remote.pciDevices() == expected)
    #expect(try remote.iommuGroupMembers(12) == local.groupMembers(12))
    #expect(try remote.iommuNames() == local.iommuNames())
    #expect(try remote.driverLoaded("vfio-pci") && !remote.driverLoaded("e1000e"))
    let regions = try remote.reservedRegions(group: 12)
    #expect(regions.count == 1 && regions[0].start == 0x800_0000 && regions[0].last == 0x80f_ffff && regions[0].type == "msi")

    // HostDiscovery over both: the same IOMMUs and devices (the host name is where it is reached)
    let localKernel = LinuxKernel(sysfsRoot: e.sys.root, devRoot: e.dir + "/no-dev")
    let viaRemote = try HostDiscovery(kernel: remote).describe().host
    let viaLocal = try HostDiscovery(kernel: localKernel).describe().host
    #expect(viaRemote.iommus == viaLocal.iommus)
    #expect(viaRemote.pciDevices == viaLocal.pciDevices)
    #expect(viaRemote.kernel.release == viaLocal.kernel.release)      // the same machine's uname -r
    #expect(viaRemote.name == e.endpoint)
}

@Test func aDriverOverrideWriteThroughTheRemoteLandsInTheFile() throws {
    let e = try SpawnedExecutor()
    e.populate()
    let k = LinuxKernel(remote: e.remote)
    try k.writeDriverOverride(pci("0000:09:01.0"), "vfio-pci")
    #expect(e.sys.read("bus/pci/devices/0000:09:01.0/driver_override") == "vfio-pci")
    try k.unbindDriver(pci("0000:09:01.0"), driver: "nvidia")
    #expect(e.sys.read("bus/pci/drivers/nvidia/unbind") == "0000:09:01.0")
    try k.driversProbe(pci("0000:09:01.0"))
    #expect(e.sys.read("bus/pci/drivers_probe") == "0000:09:01.0")
}

@Test func aWriteOutsideTheExecutorsListIsEACCES() throws {
    let e = try SpawnedExecutor()
    e.populate()
    for path in ["/sys/bus/pci/devices/0000:09:01.0/vendor", "/sys/bus/pci/devices/../devices/0000:09:01.0/driver_override"] {
        do { try e.remote.write(path, Array("x".utf8)); Issue.record("\(path) was written") } catch {
            #expect(error.errno == .EACCES)
            #expect(error.detail.contains(e.remote.location))
        }
    }
    #expect(e.sys.read("bus/pci/devices/0000:09:01.0/vendor") == "0x10de\n")
}

@Test func anIoctlOnAnFdTheExecutorDoesNotHoldIsEBADF() throws {
    let e = try SpawnedExecutor()
    do { _ = try IoctlCalls(transport: e.remote).ioasAlloc(999); Issue.record("no error") } catch {
        #expect(error.call == "IOMMU_IOAS_ALLOC")
        #expect(error.errno == .EBADF)
    }
}

@Test func aMemfdThroughTheRemoteIsAmongTheHeldFiles() throws {
    let e = try SpawnedExecutor()
    let k = LinuxKernel(remote: e.remote)
    let ctx = try k.openIommufd()
    let memory = try k.createGuestMemory(name: "vsmmu:g0.ram", size: 1 << 20, backing: .memfd, hugepageSize: nil)
    let file = try #require(memory.file)
    let held = try k.openFiles()
    #expect(held.contains(OpenFileInfo(fd: file.fd, kind: .memfd)))
    #expect(held.contains { $0.fd == ctx.fd })
    k.releaseGuestMemory(memory)
    #expect(try !k.openFiles().contains { $0.fd == file.fd })
    k.close(ctx)
    #expect(try k.openFiles().isEmpty)
}

@Test func killingTheExecutorIsAnErrorNamingItNotAHang() throws {
    let e = try SpawnedExecutor(timeout: 30)
    e.populate()
    let k = LinuxKernel(remote: e.remote)
    #expect(try k.pciDevices().count == 3)
    kill(e.process.processIdentifier, SIGKILL)
    e.process.waitUntilExit()
    let start = Date()
    do { _ = try k.pciDevices(); Issue.record("no error") } catch {
        #expect(error.errno == .EPIPE)
        #expect(error.detail.contains("remote executor at \(e.endpoint) closed the connection"))
    }
    do { _ = try k.openIommufd(); Issue.record("no error") } catch {
        #expect(error.call == "OPEN_IOMMUFD")
        #expect(error.detail.contains("remote executor at \(e.endpoint)"))
    }
    do { _ = try IoctlCalls(transport: e.remote).ioasAlloc(3); Issue.record("no error") } catch {
        #expect(error.errno == .EPIPE && error.detail.contains("closed the connection"))
    }
    #expect(Date().timeIntervalSince(start) < 5)
}

@Test func anExecutorBehindAUnixSocketIsReachedByAddress() throws {
    let binary = try #require(vsmmuRemoteBinary, "vsmmu-remote is not built next to the tests (swift build builds it)")
    let root = NSTemporaryDirectory() + "vsmmu-remote-root-\(UUID().uuidString)"
    let sys = FakeSysfs(root: root + "/sys")
    sys.device("0000:09:01.0", driver: "nvidia", group: 12, iommu: nil)
    defer { try? FileManager.default.removeItem(atPath: root) }
    let server = try UnixSocketExecutor(binary: binary, root: root)
    let remote = try RemoteExecutor(address: "unix:" + server.path)
    #expect(remote.location == "remote executor at unix:\(server.path)")
    #expect(try LinuxKernel(remote: remote).pciDevices().map(\.address) == [pci("0000:09:01.0")])
    remote.bye()

    #expect(throws: KernelCallError.self) { try RemoteExecutor(address: "/no/scheme") }
    do { _ = try RemoteExecutor(address: "unix:" + root + "/nobody-listens"); Issue.record("connected") } catch {
        #expect(error.detail.contains("unix:" + root + "/nobody-listens"))
    }
}

/// Polls WAIT until the child is no longer running (at most ~10 s).
private func finalStatus(_ remote: RemoteExecutor, _ pid: Int32) throws -> RemoteVMMStatus {
    for _ in 0..<200 {
        let s = try remote.vmmStatus(pid: pid)
        if s != .running { return s }
        usleep(50_000)
    }
    return .running
}

@Test func theExecutorStartsOnlyItsVMMWithTheFdsItHolds() throws {
    let e = try SpawnedExecutor(extraArguments: ["--vmm", "/bin/sh", "--vmm-log", NSTemporaryDirectory()])
    let iommufd = try e.remote.open("/dev/iommu", flags: O_RDWR)
    // The child sees the fd at the same number (else `test -e` fails: exit 9).
    let pid = try e.remote.spawnVMM(argv: ["/bin/sh", "-c", "test -e /proc/self/fd/\(iommufd) || exit 9; exit 7"], fds: [iommufd])
    #expect(pid > 0)
    #expect(try finalStatus(e.remote, pid) == .exited(7))

    #expect(throws: KernelCallError.self) { _ = try e.remote.spawnVMM(argv: ["/bin/bash", "-c", "true"], fds: []) }
    do { _ = try e.remote.spawnVMM(argv: ["/bin/sh"], fds: [999]); Issue.record("an fd not held was accepted") } catch { #expect(error.errno == .EBADF) }
    do { _ = try e.remote.spawnVMM(argv: ["/bin/dash"], fds: []); Issue.record("another program was started") } catch { #expect(error.errno == .EPERM) }
    do { _ = try e.remote.vmmStatus(pid: getpid()); Issue.record("WAIT answered for a foreign pid") } catch { #expect(error.errno == Errno(ESRCH)) }

    let sleeper = try e.remote.spawnVMM(argv: ["/bin/sh", "-c", "sleep 30"], fds: [])
    #expect(try e.remote.vmmStatus(pid: sleeper) == .running)
    kill(sleeper, SIGKILL)
    #expect(try finalStatus(e.remote, sleeper) == .exited(128 + SIGKILL))
}

@Test func withoutVmmTheExecutorRefusesToSpawn() throws {
    let e = try SpawnedExecutor()
    do { _ = try e.remote.spawnVMM(argv: ["/bin/sh", "-c", "true"], fds: []); Issue.record("SPAWN without --vmm") } catch { #expect(error.errno == .EPERM) }
}
