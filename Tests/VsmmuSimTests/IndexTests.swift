import Foundation
import Testing
import VsmmuKernel
@testable import VsmmuSim

// The derived indexes (SimIndexes.swift) must always equal indexes rebuilt from the
// state, whatever the sequence of calls, snapshot loads, log replays and host.yaml edits.

@Suite struct IndexTests {
    let codec = JSONHostCodec()

    /// xorshift64: a fixed, seedable sequence.
    struct Sequence {
        var state: UInt64
        mutating func next(_ bound: Int) -> Int {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17
            return Int(state % UInt64(bound))
        }
    }

    func expectConsistent(_ k: SimulatedKernel, _ step: String, sourceLocation: SourceLocation = #_sourceLocation) {
        let problems = k.indexes.inconsistencies(with: k.state)
        #expect(problems.isEmpty, "after \(step): \(problems)", sourceLocation: sourceLocation)
    }

    @Test func indexesMatchTheStateThroughARandomWorkload() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var k = try SimStore.open(directory: directory, initialHost: Fixture.host, codec: codec, environment: [:])
        var random = Sequence(state: 0x1234_5678_9abc_def1)
        var ids: [ObjectID] = [1, 2, 3]
        var memories: [GuestMemory] = []
        let addresses = Fixture.host.pciDevices.map(\.address)
        func fd() -> Int32 { Int32(3 + random.next(12)) }
        func id() -> ObjectID { ids[random.next(ids.count)] }
        for step in 0..<1500 {
            let op = random.next(16)
            switch op {
            case 0: _ = try? k.openIommufd()
            case 1: k.closeFile(fd())
            case 2: _ = try? k.openVfioDevice(index: random.next(10))
            case 3, 4: if let d = try? k.bindIommufd(DeviceHandle(fd: fd()), iommufd: IommufdHandle(fd: fd())) { ids.append(d) }
            case 5: if let h = try? k.attach(DeviceHandle(fd: fd()), ptID: id()) { ids.append(h) }
            case 6: if let i = try? k.ioasAlloc(IommufdHandle(fd: fd())) { ids.append(i) }
            case 7:
                if let h = try? k.hwptAlloc(IommufdHandle(fd: fd()), flags: HWPTAllocFlags.nestParent, devID: id(), ptID: id(), dataType: 0, data: []) {
                    ids.append(h)
                }
            case 8:
                let backing: GuestMemoryBacking = random.next(2) == 0 ? .anonymous : .memfd
                if let m = try? k.createGuestMemory(name: "ram", size: UInt64(1 + random.next(4)) << 21, backing: backing, hugepageSize: nil) {
                    memories.append(m)
                }
            case 9:
                guard !memories.isEmpty else { continue }
                let m = memories[random.next(memories.count)]
                let source: MapSource = m.file.map { .file($0, offset: 0) } ?? .userVA(m.userVA)
                _ = try? k.ioasMap(IommufdHandle(fd: fd()), ioas: id(), flags: rw, source: source, length: m.size, iova: UInt64(1 + random.next(8)) << 30)
            case 10:
                guard !memories.isEmpty else { continue }
                k.releaseGuestMemory(memories.remove(at: random.next(memories.count)))
            case 11: _ = try? k.ioasUnmap(IommufdHandle(fd: fd()), ioas: id(), iova: 0, length: UInt64.max)
            case 12: try? k.destroy(IommufdHandle(fd: fd()), id: id())
            case 13:
                let address = addresses[random.next(addresses.count)]
                switch random.next(3) {
                case 0: try? k.writeDriverOverride(address, ["vfio-pci", "pci-stub", nil][random.next(3)])
                case 1: try? k.unbindDriver(address, driver: ["vfio-pci", "nvidia", "pci-stub", "snd_hda_intel"][random.next(4)])
                default: try? k.driversProbe(address)
                }
            case 14:
                if random.next(10) == 0 { k.simulateProcessExit(); memories = [] } else { try? k.chownVfioDevice(index: random.next(10), uid: 107, gid: 107) }
            default:
                // Reopen: from the snapshot (save) or by replaying the log (kill), at times
                // after a host.yaml edit (drift).
                let mode = random.next(3)
                if mode != 1 { try k.save() }
                if mode == 2 {
                    let path = directory + "/host.yaml"
                    var host = try codec.decode(String(contentsOfFile: path, encoding: .utf8), path: path)
                    let i = random.next(host.pciDevices.count)
                    host.pciDevices[i].driver = ["vfio-pci", "nvidia", nil][random.next(3)]
                    if random.next(3) == 0 { host.pciDevices[random.next(host.pciDevices.count)].iommuGroup = 16 }
                    try Data(codec.encode(host).utf8).write(to: URL(fileURLWithPath: path))
                }
                k = try SimStore.open(directory: directory, initialHost: Fixture.host, codec: codec, environment: [:])
            }
            expectConsistent(k, "step \(step) (op \(op))")
        }
    }

    /// host.yaml moving a device onto vfio-pci gives it the lowest free vfio index (this
    /// used to trip Swift's exclusivity check: the index was computed inside the write).
    @Test func driftOntoVfioPciTakesTheLowestFreeIndex() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let k = try SimStore.open(directory: directory, initialHost: Fixture.host, codec: codec, environment: [:])
        #expect(try k.vfioIndex(Fixture.nicB) == 2)
        try k.unbindDriver(Fixture.nicB, driver: "vfio-pci")   // frees vfio2
        try k.save()
        let path = directory + "/host.yaml"
        var host = try codec.decode(String(contentsOfFile: path, encoding: .utf8), path: path)
        let gpu = try #require(host.pciDevices.firstIndex { $0.address == Fixture.gpuNative })
        host.pciDevices[gpu].driver = "vfio-pci"
        try Data(codec.encode(host).utf8).write(to: URL(fileURLWithPath: path))
        let reopened = try SimStore.open(directory: directory, initialHost: Fixture.host, codec: codec, environment: [:])
        #expect(try reopened.pciDevice(Fixture.gpuNative)?.vfioDevIndex == 2)
        #expect(try reopened.vfioDeviceOwner(index: 2)?.uid == 0)
        expectConsistent(reopened, "reopen")
    }

    /// Freed fds and vfio indexes below the high-water mark are handed out lowest first.
    @Test func freedNumbersAreReusedLowestFirst() throws {
        let k = makeKernel()
        let fds = try (0..<6).map { _ in try k.openIommufd().fd }
        #expect(fds == [3, 4, 5, 6, 7, 8])
        k.closeFile(7)
        k.closeFile(4)
        k.closeFile(5)
        #expect(try k.openIommufd().fd == 4)
        #expect(try k.openIommufd().fd == 5)
        #expect(try k.openIommufd().fd == 7)
        #expect(try k.openIommufd().fd == 9)
        try k.unbindDriver(Fixture.devNonCoherent, driver: "vfio-pci")   // vfio4
        try k.unbindDriver(Fixture.gpuVfio2, driver: "vfio-pci")         // vfio1
        try k.writeDriverOverride(Fixture.gpuNative, "vfio-pci")
        try k.unbindDriver(Fixture.gpuNative, driver: "nvidia")
        try k.driversProbe(Fixture.gpuNative)
        #expect(try k.vfioIndex(Fixture.gpuNative) == 1)
        // Devices first seen on vfio-pci have no native driver: the override brings them back.
        try k.writeDriverOverride(Fixture.devNonCoherent, "vfio-pci")
        try k.writeDriverOverride(Fixture.gpuVfio2, "vfio-pci")
        try k.driversProbe(Fixture.devNonCoherent)
        #expect(try k.vfioIndex(Fixture.devNonCoherent) == 4)
        try k.driversProbe(Fixture.gpuVfio2)
        #expect(try k.vfioIndex(Fixture.gpuVfio2) == 8)
        expectConsistent(k, "rebinding")
    }
}
