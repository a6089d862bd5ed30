import Foundation
import Testing
import VsmmuKernel
@testable import VsmmuSim

// Persistence (docs/contract.md §6): snapshot + redo log, kill -9 semantics, host.yaml drift.

extension SimState {
    /// The state without the bookkeeping that a save changes.
    var comparable: SimState {
        var copy = self
        copy.appliedSequence = 0
        copy.savedHost = nil
        return copy
    }
}

@Suite struct StoreTests {
    let codec = JSONHostCodec()

    @Test func killedProcessLeavesExactlyTheCompletedCalls() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var expected: SimState?
        var ids: [ObjectID] = []
        do {
            let k = try SimStore.open(directory: directory, initialHost: Fixture.host, codec: codec, environment: [:])
            #expect(FileManager.default.fileExists(atPath: directory + "/host.yaml"))
            #expect(FileManager.default.fileExists(atPath: directory + "/kernel.json"))
            try k.writeDriverOverride(Fixture.gpuNative, "vfio-pci")
            try k.unbindDriver(Fixture.gpuNative, driver: "nvidia")
            try k.driversProbe(Fixture.gpuNative)
            let rig = try ArmRig(kernel: k)
            ids = [rig.devID, rig.ioas, rig.s2, rig.viommu, rig.vdevice, rig.veventq, rig.bypass]
            try k.destroy(rig.iommufd, id: rig.vdevice)
            #expect(errnoOf { try k.destroy(rig.iommufd, id: rig.viommu) } == .EBUSY)
            expected = k.state.comparable
            // No save(): the object is dropped as if the process were killed.
        }
        let log = try String(contentsOfFile: directory + "/calls.log", encoding: .utf8)
        #expect(log.split(separator: "\n").count >= 15)
        let reopened = try SimStore.open(directory: directory, initialHost: Fixture.host, codec: codec, environment: [:])
        #expect(reopened.state.comparable == expected)
        #expect(reopened.mutatingCalls == 0)
        #expect(try reopened.pciDevice(Fixture.gpuNative)?.driver == "vfio-pci")
        // The log was folded into the snapshot.
        #expect(try String(contentsOfFile: directory + "/calls.log", encoding: .utf8).isEmpty)
        // Same IDs and fds: the freed vDevice ID is the next one handed out.
        let fd = IommufdHandle(fd: 3)
        #expect(try reopened.ioasAlloc(fd) == ids[4])
        #expect(try reopened.openIommufd().fd == 7)
    }

    @Test func replayIgnoresFaultInjectionAndATornLastLine() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        do {
            let k = try SimStore.open(directory: directory, initialHost: Fixture.host, codec: codec, environment: [:])
            let fd = try k.openIommufd()
            _ = try k.ioasAlloc(fd)
            _ = try k.ioasAlloc(fd)
        }
        // A kill in the middle of write(2).
        let handle = try Foundation.FileHandle(forWritingTo: URL(fileURLWithPath: directory + "/calls.log"))
        handle.seekToEndOfFile()
        handle.write(Data("{\"seq\":4,\"call\":{\"ioasAl".utf8))
        handle.closeFile()
        let k = try SimStore.open(directory: directory, initialHost: Fixture.host, codec: codec,
                                  environment: ["VSMMU_SIM_FAIL": "IOMMU_IOAS_ALLOC#1:ENOMEM"])
        #expect(k.objects(1).map(\.id) == [1, 2])
        // The first live call is the first one counted by fault injection.
        #expect(errnoOf { try k.ioasAlloc(IommufdHandle(fd: 3)) } == .ENOMEM)
        #expect(try k.ioasAlloc(IommufdHandle(fd: 3)) == 3)
    }

    @Test func saveAndOpenRoundTrip() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let k = try SimStore.open(directory: directory, initialHost: Fixture.host, codec: codec, environment: [:])
        let rig = try ArmRig(kernel: k)
        try k.chownVfioDevice(index: 0, uid: 64055, gid: 64055)
        try k.save()
        let expected = k.state.comparable
        let reopened = try SimStore.open(directory: directory, initialHost: Fixture.host, codec: codec, environment: [:])
        #expect(reopened.state.comparable == expected)
        #expect(reopened.currentHost == k.currentHost)
        // The held objects are still there.
        #expect(errnoOf { try reopened.destroy(rig.iommufd, id: rig.viommu) } == .EBUSY)
        #expect(try reopened.vfioDeviceOwner(index: 0).map(\.uid) == 64055)
        // Saving again and reopening changes nothing.
        try reopened.save()
        let again = try SimStore.open(directory: directory, initialHost: Fixture.host, codec: codec, environment: [:])
        #expect(again.state.comparable == expected)
    }

    @Test func hostYAMLEditsWinOnOpen() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let k = try SimStore.open(directory: directory, initialHost: Fixture.host, codec: codec, environment: [:])
        let rig = try ArmRig(kernel: k)
        // Calls after the last save are in the log only; the edit must not undo them.
        try k.writeDriverOverride(Fixture.gpuNative, "vfio-pci")
        try k.unbindDriver(Fixture.gpuNative, driver: "nvidia")
        try k.driversProbe(Fixture.gpuNative)
        // The user sets the passed-through GPU back to nvidia in host.yaml.
        let path = directory + "/host.yaml"
        var host = try codec.decode(String(contentsOfFile: path, encoding: .utf8), path: path)
        guard let index = host.pciDevices.firstIndex(where: { $0.address == Fixture.gpuVfio }) else {
            Issue.record("device missing from host.yaml"); return
        }
        host.pciDevices[index].driver = "nvidia"
        host.pciDevices.removeAll { $0.address == Fixture.devNoNest }
        try Data(codec.encode(host).utf8).write(to: URL(fileURLWithPath: path))

        let reopened = try SimStore.open(directory: directory, initialHost: Fixture.host, codec: codec, environment: [:])
        let gpu = try #require(try reopened.pciDevice(Fixture.gpuVfio))
        #expect(gpu.driver == "nvidia")
        #expect(gpu.vfioDevIndex == nil)
        #expect(try reopened.pciDevice(Fixture.devNoNest) == nil)
        // The logged calls survived: gpuNative is on vfio-pci.
        #expect(try reopened.pciDevice(Fixture.gpuNative)?.driver == "vfio-pci")
        // The open cdev was force-closed: device object gone, vDevice tombstoned.
        #expect(reopened.state.files[rig.device.fd] == nil)
        #expect(reopened.deviceObject(1, rig.devID) == nil)
        #expect(errnoOf { try reopened.destroy(rig.iommufd, id: rig.vdevice) } == .ENOENT)
        // Unbinding it later brings back nvidia as its native driver.
        try reopened.unbindDriver(Fixture.gpuVfio, driver: "nvidia")
        try reopened.driversProbe(Fixture.gpuVfio)
        #expect(try reopened.pciDevice(Fixture.gpuVfio)?.driver == "nvidia")
        #expect(reopened.currentHost.pciDevices.first { $0.address == Fixture.gpuVfio }?.driver == "nvidia")
    }

    @Test func snapshotIncludesWhatTheAgentHolds() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let k = try SimStore.open(directory: directory, initialHost: Fixture.host, codec: codec, environment: [:])
        _ = try ArmRig(kernel: k)
        k.simulateProcessExit()
        let reopened = try SimStore.open(directory: directory, initialHost: Fixture.host, codec: codec, environment: [:])
        #expect(reopened.state.contexts.isEmpty)
        #expect(reopened.state.files.isEmpty)
        #expect(try reopened.pciDevice(Fixture.gpuVfio)?.driver == "vfio-pci")
    }
}
