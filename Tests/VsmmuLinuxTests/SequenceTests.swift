import Foundation
import VsmmuTestSupport
import Glibc
import Testing
import VsmmuExecutor
import VsmmuKernel
@testable import VsmmuLinux
import VsmmuModel
import VsmmuPlanner
@testable import VsmmuSim
import VsmmuYAML

/// An ioctl layer that decodes each request from its bytes — with offsets written from
/// docs/kernel-interface.md, independently of the C header — performs it on a simulated
/// kernel, and writes the results back. Real fds opened by the Linux backend (stand-in
/// device nodes, real memfds) are mapped to the simulated process's fds on first use.
final class SimBackedTransport: IoctlTransport {
    let sim: SimulatedKernel
    var fds: [Int32: Int32] = [:]       // real fd -> simulated fd
    var vas: [UInt64: UInt64] = [:]     // real anonymous VA -> simulated VA
    init(sim: SimulatedKernel) { self.sim = sim }

    func simFD(_ real: Int32) throws(KernelCallError) -> Int32 {
        if let s = fds[real] { return s }
        let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(real)")) ?? ""
        let s: Int32
        if target.hasSuffix("/iommu") {
            s = try sim.openIommufd().fd
        } else if let r = target.range(of: "/vfio/devices/vfio"), let n = Int(target[r.upperBound...]) {
            s = try sim.openVfioDevice(index: n).fd
        } else if target.hasPrefix("/memfd:") {
            var st = stat()
            fstat(real, &st)
            s = try sim.createGuestMemory(name: "mirror", size: UInt64(st.st_size), backing: .memfd, hugepageSize: nil).file!.fd
        } else {
            throw KernelCallError("TEST", .EBADF, "unknown fd \(real) -> \(target)")
        }
        fds[real] = s
        return s
    }

    func ioctl(_ fd: Int32, _ request: UInt32, _ b: UnsafeMutableRawBufferPointer) -> Int32 {
        func u32(_ o: Int) -> UInt32 { b.load(fromByteOffset: o, as: UInt32.self) }
        func u64(_ o: Int) -> UInt64 { b.load(fromByteOffset: o, as: UInt64.self) }
        func put32(_ v: UInt32, _ o: Int) { b.storeBytes(of: v, toByteOffset: o, as: UInt32.self) }
        func put64(_ v: UInt64, _ o: Int) { b.storeBytes(of: v, toByteOffset: o, as: UInt64.self) }
        func bytes(_ ptr: UInt64, _ len: UInt32) -> [UInt8] {
            guard len > 0, let p = UnsafeRawPointer(bitPattern: UInt(ptr)) else { return [] }
            return Array(UnsafeRawBufferPointer(start: p, count: Int(len)))
        }
        do {
            let s = try simFD(fd)
            let ctx = IommufdHandle(fd: s)
            switch request {
            case 0x3B80: try sim.destroy(ctx, id: u32(4))
            case 0x3B81: put32(try sim.ioasAlloc(ctx), 8)
            case 0x3B84:
                let r = try sim.ioasIovaRanges(ctx, ioas: u32(4))
                let cap = u32(8)
                put32(UInt32(r.ranges.count), 8)
                put64(r.alignment, 24)
                if UInt32(r.ranges.count) > cap { return -Errno.EMSGSIZE.rawValue }
                let p = UnsafeMutableRawPointer(bitPattern: UInt(u64(16)))!
                for (i, x) in r.ranges.enumerated() { p.storeBytes(of: x.start, toByteOffset: i * 16, as: UInt64.self); p.storeBytes(of: x.last, toByteOffset: i * 16 + 8, as: UInt64.self) }
            case 0x3B85:
                let realVA = u64(16), len = u64(24)
                if vas[realVA] == nil { vas[realVA] = try sim.createGuestMemory(name: "mirror", size: len, backing: .anonymous, hugepageSize: nil).userVA }
                put64(try sim.ioasMap(ctx, ioas: u32(8), flags: .init(rawValue: u32(4)), source: .userVA(vas[realVA]!), length: len, iova: u64(32)), 32)
            case 0x3B8F:
                let mem = try simFD(Int32(bitPattern: u32(12)))
                put64(try sim.ioasMap(ctx, ioas: u32(8), flags: .init(rawValue: u32(4)), source: .file(KernelFile(fd: mem), offset: u64(16)), length: u64(24), iova: u64(32)), 32)
            case 0x3B86: put64(try sim.ioasUnmap(ctx, ioas: u32(4), iova: u64(8), length: u64(16)), 16)
            case 0x3B89:
                put32(try sim.hwptAlloc(ctx, flags: .init(rawValue: u32(4)), devID: u32(8), ptID: u32(12), dataType: .init(rawValue: u32(24)), data: bytes(u64(32), u32(28))), 16)
            case 0x3B8A:
                let info = try sim.getHwInfo(ctx, devID: u32(8), requestType: u32(4) & 1 != 0 ? HWInfoType(rawValue: u32(24)) : nil)
                let cap = Int(u32(12))
                if let p = UnsafeMutableRawPointer(bitPattern: UInt(u64(16))) {
                    for i in 0..<cap { p.storeBytes(of: i < info.data.count ? info.data[i] : 0, toByteOffset: i, as: UInt8.self) }
                }
                put32(UInt32(info.data.count), 12)
                put32(info.dataType.rawValue, 24)
                b.storeBytes(of: info.maxPasidLog2, toByteOffset: 28, as: UInt8.self)
                put64(info.capabilities.rawValue, 32)
            case 0x3B90:
                let r = try sim.viommuAlloc(ctx, type: .init(rawValue: u32(8)), devID: u32(12), hwptID: u32(16), data: bytes(u64(32), u32(24)))
                put32(r.id, 20)
            case 0x3B91: put32(try sim.vdeviceAlloc(ctx, viommuID: u32(4), devID: u32(8), virtID: u64(16)), 12)
            case 0x3B93:
                let r = try sim.veventqAlloc(ctx, viommuID: u32(8), type: .init(rawValue: u32(12)), depth: u32(16))
                let real = open("/dev/null", O_RDONLY | O_CLOEXEC)
                fds[real] = r.eventFD.fd
                put32(r.id, 20)
                put32(UInt32(bitPattern: real), 24)
            case 0x3BA0:
                switch u32(4) {
                case 2:
                    let m = try sim.mockDomain(ctx, ptID: u32(8))
                    put32(m.stdevID, 16); put32(m.hwptID, 20); put32(m.idevID, 24)
                case 10: put32(try sim.mockDomainReplace(ctx, stdevID: u32(8), ptID: u32(16)), 16)
                default: return -Errno.EOPNOTSUPP.rawValue
                }
            case 0x3B76:
                let ifd = try simFD(Int32(bitPattern: u32(8)))
                put32(try sim.bindIommufd(DeviceHandle(fd: s), iommufd: IommufdHandle(fd: ifd)), 12)
            case 0x3B77: put32(try sim.attach(DeviceHandle(fd: s), ptID: u32(8)), 8)
            case 0x3B78: try sim.detach(DeviceHandle(fd: s))
            default: return -Errno.ENOTTY.rawValue
            }
            return 0
        } catch {
            return -error.errno.rawValue
        }
    }
}

/// The simulated kernel's sysfs behind the Linux backend's sysfs seam.
struct SimSysfs: SysfsAccess {
    let sim: SimulatedKernel
    func pciAddresses() throws(KernelCallError) -> [PCIAddress] { try sim.pciDevices().map(\.address) }
    func device(_ a: PCIAddress) -> SysfsPCIDevice? { (try? sim.pciDevice(a)) ?? nil }
    func groupMembers(_ group: Int) -> [PCIAddress] { (try? sim.iommuGroupMembers(group)) ?? [] }
    func iommuNames() -> [String] { (try? sim.iommuNames()) ?? [] }
    func reservedRegions(group: Int) -> [(start: UInt64, last: UInt64, type: String)] { (try? sim.reservedRegions(group: group)) ?? [] }
    func driverLoaded(_ name: String) -> Bool { (try? sim.driverLoaded(name)) ?? false }
    func writeDriverOverride(_ a: PCIAddress, _ driver: String?) throws(KernelCallError) { try sim.writeDriverOverride(a, driver) }
    func unbind(_ a: PCIAddress, driver: String) throws(KernelCallError) { try sim.unbindDriver(a, driver: driver) }
    func driversProbe(_ a: PCIAddress) throws(KernelCallError) { try sim.driversProbe(a) }
}

/// The calls a kernel receives, with the process's own numbers (fds, VAs) blanked:
/// ioctls and sysfs writes only (opens, memfds and chown are file-level steps the
/// Linux backend does itself).
func comparable(_ trace: [SimCall]) -> [String] {
    trace.filter { $0.op.hasPrefix("IOMMU_") || $0.op.hasPrefix("VFIO_") || $0.op.hasPrefix("SYSFS_") }.map { c in
        let detail = c.detail.split(separator: " ").map { w -> String in
            for p in ["fd=", "memfd=", "user_va=", "iommufd="] where w.hasPrefix(p) { return p + "*" }
            return String(w)
        }.joined(separator: " ")
        return "\(c.op) \(detail) -> \(c.errno?.name ?? "ok")"
    }
}

@Test(arguments: exampleTopologies.map { ($0.topology, $0.host) })
func linuxBackendIssuesTheSameSequenceAsTheSimulatedKernelReceives(example: String, hostFile: String) throws {
    let host = try HostDescription.load(path: packageRoot + "/" + hostFile)
    let (topology, _) = try Topology.load(path: packageRoot + "/examples/\(example).yaml")

    func run(_ port: KernelPort, _ sim: SimulatedKernel) throws -> Plan {
        let dir = NSTemporaryDirectory() + "vsmmu-seq-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try StateStore(directory: dir)
        let v = Validator.validate(topology, host: sim.currentHost)
        #expect(v.isValid)
        let plan = try Pipeline.plan(topology, validation: v, port: port, host: sim.currentHost, store: store, simulated: true)
        try Pipeline.apply(plan, port: port, store: store)
        let again = try Pipeline.plan(topology, validation: v, port: port, host: sim.currentHost, store: store, simulated: true)
        #expect(again.isEmpty, "\(again.changes.map(\.address))")
        return plan
    }

    // (a) the simulated kernel driven directly
    let direct = SimulatedKernel(host: host, environment: [:])
    direct.traceEnabled = true
    let planA = try run(direct, direct)

    // (b) the Linux backend, its ioctls and sysfs going to another simulated kernel
    let mirror = SimulatedKernel(host: host, environment: [:])
    mirror.traceEnabled = true
    let dev = NSTemporaryDirectory() + "vsmmu-dev-\(UUID().uuidString)"
    defer { try? FileManager.default.removeItem(atPath: dev) }
    try FileManager.default.createDirectory(atPath: dev + "/vfio/devices", withIntermediateDirectories: true)
    _ = FileManager.default.createFile(atPath: dev + "/iommu", contents: nil)
    for i in 0..<64 { _ = FileManager.default.createFile(atPath: dev + "/vfio/devices/vfio\(i)", contents: nil) }
    let transport = SimBackedTransport(sim: mirror)
    let linux = LinuxKernel(transport: transport, sysfs: SimSysfs(sim: mirror), devRoot: dev)
    let planB = try run(linux, mirror)

    #expect(planA.operations == planB.operations)
    let a = comparable(direct.trace), b = comparable(mirror.trace)
    #expect(a.count > 10)
    #expect(a == b)
    if a != b, let i = zip(a, b).enumerated().first(where: { $0.element.0 != $0.element.1 })?.offset {
        Issue.record("first difference at call \(i):\n  sim:   \(a[i])\n  linux: \(b[i])")
    }
    for (real, _) in transport.fds { close(real) }
}
