import Foundation
import Testing
import VsmmuKernel
@testable import VsmmuLinux
import VsmmuModel
@testable import VsmmuSim
import VsmmuTestSupport

/// Discovery reads an SMMU through a device that has no driver (bound to vfio-pci for the
/// probe, then given back), and never moves a device that has one. Run on the Linux backend
/// over a simulated kernel (SimBackedTransport, SimSysfs).
/// This machine's files, except that closing an fd also closes the simulated fd the
/// transport mapped it to (discovery closes and reopens fds, and numbers are reused).
final class ForgettingFiles: HostFiles, @unchecked Sendable {
    let local = LocalHostFiles()
    weak var transport: SimBackedTransport?
    var location: String { local.location }
    var processIdentity: String { local.processIdentity }
    func systemName() -> (release: String, hostname: String) { local.systemName() }
    func open(_ path: String, flags: Int32) throws(KernelCallError) -> Int32 { try local.open(path, flags: flags) }
    func close(_ fd: Int32) {
        if let t = transport, let s = t.fds.removeValue(forKey: fd) { t.sim.closeFile(s) }
        local.close(fd)
    }
    func read(_ path: String) throws(KernelCallError) -> [UInt8] { try local.read(path) }
    func readLink(_ path: String) throws(KernelCallError) -> String { try local.readLink(path) }
    func listDirectory(_ path: String) throws(KernelCallError) -> [String] { try local.listDirectory(path) }
    func write(_ path: String, _ data: [UInt8]) throws(KernelCallError) { try local.write(path, data) }
    func memfd(name: String, size: UInt64, flags: UInt32) throws(KernelCallError) -> Int32 { try local.memfd(name: name, size: size, flags: flags) }
    func status(_ path: String) -> FileStatus? { local.status(path) }
    func chown(_ path: String, uid: UInt32, gid: UInt32) throws(KernelCallError) { try local.chown(path, uid: uid, gid: gid) }
    func mapAnonymous(size: UInt64, hugepageLog2: UInt32?) throws(KernelCallError) -> UInt64 { try local.mapAnonymous(size: size, hugepageLog2: hugepageLog2) }
    func unmap(address: UInt64, size: UInt64) { local.unmap(address: address, size: size) }
    func heldFiles() throws(KernelCallError) -> [HeldFile] { try local.heldFiles() }
}

struct DriverlessProbeTests {
    func linux(over sim: SimulatedKernel) throws -> (LinuxKernel, SimBackedTransport, String) {
        let dev = NSTemporaryDirectory() + "vsmmu-dev-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dev + "/vfio/devices", withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: dev + "/iommu", contents: nil)
        for i in 0..<8 { _ = FileManager.default.createFile(atPath: dev + "/vfio/devices/vfio\(i)", contents: nil) }
        let transport = SimBackedTransport(sim: sim)
        let files = ForgettingFiles()
        files.transport = transport
        return (LinuxKernel(transport: transport, sysfs: SimSysfs(sim: sim), devRoot: dev, files: files), transport, dev)
    }

    @Test func smmuFeaturesAreReadThroughADriverlessDeviceWhichIsGivenBack() throws {
        let host = try HostDescription.load(path: path("examples/hosts/arm-limited.yaml"))
        let sim = SimulatedKernel(host: host, environment: [:])
        let (k, transport, dev) = try linux(over: sim)
        defer { try? FileManager.default.removeItem(atPath: dev); for (real, _) in transport.fds { close(real) } }

        let r = try HostDiscovery(kernel: k).describe(probeDriverless: true)
        for want in host.iommus {
            let got = try #require(r.host.iommus.first { $0.name == want.name })
            #expect(got.unknown == [], "\(want.name)")
            #expect(got.nesting == want.nesting, "\(want.name)")
            #expect(got.coherent == want.coherent, "\(want.name)")
            #expect(got.oas == want.oas, "\(want.name)")
        }
        #expect(r.notes.filter { $0.contains("which had no driver: bound to vfio-pci for the probe") }.count == 3, "\(r.notes)")
        for d in try sim.pciDevices() {
            #expect(d.driver == nil, "\(d.address) left on \(d.driver ?? "-")")
            #expect(d.driverOverride == nil, "\(d.address) override \(d.driverOverride ?? "-")")
        }
    }

    @Test func withoutTheProbeTheFeaturesAreUnknownAndNothingIsWritten() throws {
        let host = try HostDescription.load(path: path("examples/hosts/arm-limited.yaml"))
        let sim = SimulatedKernel(host: host, environment: [:])
        let (k, transport, dev) = try linux(over: sim)
        defer { try? FileManager.default.removeItem(atPath: dev); for (real, _) in transport.fds { close(real) } }
        sim.traceEnabled = true
        let r = try HostDiscovery(kernel: k).describe(probeDriverless: false)
        #expect(r.host.iommus.allSatisfy { $0.unknown.contains("nesting") && $0.unknown.contains("coherent") })
        #expect(sim.trace.filter { $0.op.hasPrefix("SYSFS_") && !$0.op.hasPrefix("SYSFS_READ") }.isEmpty, "\(sim.trace.map(\.op))")
    }

    @Test func aDeviceWithADriverIsNeverMovedForAProbe() throws {
        // Grace, with every device on a driver of its own (none on vfio-pci, none free).
        var host = try HostDescription.load(path: path("examples/hosts/grace-2smmu-cmdqv.yaml"))
        host.pciDevices = host.pciDevices.map { d in
            var d = d
            if d.driver == nil || d.driver == "vfio-pci" { d.driver = "nvme" }
            return d
        }
        let sim = SimulatedKernel(host: host, environment: [:])
        let (k, transport, dev) = try linux(over: sim)
        defer { try? FileManager.default.removeItem(atPath: dev); for (real, _) in transport.fds { close(real) } }
        let drivers = Dictionary(uniqueKeysWithValues: try sim.pciDevices().map { ($0.address, $0.driver) })
        let r = try HostDiscovery(kernel: k).describe(probeDriverless: true)
        #expect(r.host.iommus.filter { $0.type == .armSMMUv3 }.allSatisfy { $0.unknown.contains("nesting") })
        for d in try sim.pciDevices() { #expect(d.driver == drivers[d.address] ?? nil) }
        #expect(r.notes.contains { $0.contains("no device behind it is bound to vfio-pci or free of a driver") })
    }
}

extension DriverlessProbeTests {
    /// docs/contract.md §3: a device with no driver has its own ATS, PASID width and CANWBS
    /// read through the driverless probe, and is given back to no driver.
    @Test func perDeviceFactsAreReadThroughADriverlessDevice() throws {
        var host = try HostDescription.load(path: path("examples/hosts/arm-limited.yaml"))
        let a = try #require(host.pciDevices.firstIndex { $0.driver == nil && $0.iommu != nil && host.iommu(named: $0.iommu!)?.coherent == true })
        host.pciDevices[a].ats = false
        host.pciDevices[a].pasidWidth = 0
        host.pciDevices[a].canwbs = false
        let address = host.pciDevices[a].address
        let sim = SimulatedKernel(host: host, environment: [:])
        let (k, transport, dev) = try linux(over: sim)
        defer { try? FileManager.default.removeItem(atPath: dev); for (real, _) in transport.fds { close(real) } }
        let r = try HostDiscovery(kernel: k).describe(probeDriverless: true)
        let got = try #require(r.host.device(at: address))
        #expect(got.ats == false && got.pasidWidth == 0 && got.canwbs == false && got.unknown == [], "\(got)")
        #expect(try sim.pciDevice(address)?.driver == nil)
        #expect(r.notes.contains { $0.hasPrefix("\(address): its ATS, PASID width and CANWBS read") })
    }
}
