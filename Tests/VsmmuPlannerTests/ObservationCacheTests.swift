import Foundation
import Testing
import VsmmuExecutor
import VsmmuKernel
import VsmmuModel
import VsmmuPlanner
import VsmmuProvisioning
@testable import VsmmuSim

// An agent's observation over the change feed (docs/kernel-interface.md §12) must equal a
// full read after anything done behind vsmmu's back, and fall back to a full read whenever
// the feed cannot vouch for what changed.

private let gpu0 = PCIAddress("0000:09:01.0")!
private let gpu1 = PCIAddress("0000:09:02.0")!
private let spare = PCIAddress("0000:09:03.0")!        // no driver
private let nic = PCIAddress("0000:0a:00.0")!          // mlx5_core
private let vfioSpare = PCIAddress("0000:19:03.0")!    // vfio-pci, held by nobody
private let nvme = PCIAddress("0000:1a:00.0")!

/// A Grace host with the four-GPU topology applied, and an agent's cache over a feed that
/// has made its first (full) observation.
private final class Watched {
    let h: Harness
    let cache: ObservationCache
    var all: Set<PCIAddress> { Set(h.sim.currentHost.pciDevices.map(\.address)) }

    init(capacity: Int = 1 << 20, nodeCapacity: Int = 16_384) throws {
        h = try Harness(host: "examples/hosts/grace-2smmu-cmdqv.yaml")
        try h.apply(try h.example("two-vsmmus-four-gpus"))
        guard case .opened(let feed) = h.sim.openSimChangeFeed(capacity: capacity, nodeCapacity: nodeCapacity) else {
            throw Pipeline.Failure(message: "no feed on the simulated kernel")
        }
        cache = ObservationCache(feed: feed)
        _ = try observe()
        #expect(cache.last.everything != nil, "the first observation reads everything")
    }

    func observe() throws -> ObservedState {
        try ObservedState.observe(port: h.sim, holdings: h.store.holdings, addresses: all, cache: cache)
    }

    /// The cached observation and a full one, which must agree.
    func compare(_ what: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let cached = try observe()
        let full = try ObservedState.observe(port: h.sim, holdings: h.store.holdings, addresses: all)
        #expect(cached.sysfs == full.sysfs, "\(what): sysfs", sourceLocation: sourceLocation)
        #expect(cached.owners == full.owners, "\(what): owners", sourceLocation: sourceLocation)
        #expect(cached.deadGuests == full.deadGuests, "\(what): dead guests", sourceLocation: sourceLocation)
        #expect(cached.lostDevices == full.lostDevices, "\(what): lost devices", sourceLocation: sourceLocation)
        #expect(cached.fingerprint == full.fingerprint, "\(what): fingerprint", sourceLocation: sourceLocation)
    }

    func index(_ a: PCIAddress) -> Int { h.sim.state.devices[a]!.vfioIndex! }

    /// Edits the host description as a user editing sim/host.yaml would.
    func editHost(_ change: (inout HostDescription) -> Void) {
        let base = h.sim.currentHost
        var edited = base
        change(&edited)
        h.sim.applyHostEdits(base: base, edited: edited)
    }
}

enum BehindOurBack: String, CaseIterable, CustomStringConvertible {
    case unbindFromVfio, bindToAnotherDriver, chownOfAHeldCdev, driverOverrideWrite, deviceRemoved,
         heldDeviceRemoved, deviceAddedBack, contextLost, vfioRebindNewIndex, groupChanged, nothing
    var description: String { rawValue }
}

@Test(arguments: BehindOurBack.allCases)
func anIncrementalObservationEqualsAFullOne(_ change: BehindOurBack) throws {
    let w = try Watched()
    let sim = w.h.sim
    switch change {
    case .unbindFromVfio:
        try sim.unbindDriver(vfioSpare, driver: "vfio-pci")
    case .bindToAnotherDriver:
        try sim.unbindDriver(nic, driver: "mlx5_core")
        try sim.writeDriverOverride(nic, "vfio-pci")
        try sim.driversProbe(nic)
        #expect(sim.state.devices[nic]?.driver == "vfio-pci")
    case .chownOfAHeldCdev:
        try sim.chownVfioDevice(index: w.index(gpu0), uid: 4242, gid: 4242)
    case .driverOverrideWrite:
        try sim.writeDriverOverride(gpu1, "nvidia")
        try sim.writeDriverOverride(spare, "pci-stub")
    case .deviceRemoved:
        w.editHost { $0.pciDevices.removeAll { $0.address == nvme } }
    case .heldDeviceRemoved:
        w.editHost { $0.pciDevices.removeAll { $0.address == gpu1 } }
    case .deviceAddedBack:
        let nvmeHost = sim.currentHost.pciDevices.first { $0.address == nvme }!
        w.editHost { $0.pciDevices.removeAll { $0.address == nvme } }
        try w.compare("removed")
        w.editHost { $0.pciDevices.append(nvmeHost) }
    case .contextLost:
        sim.simulateProcessExit()
    case .vfioRebindNewIndex:
        let before = w.index(vfioSpare)
        try sim.unbindDriver(vfioSpare, driver: "vfio-pci")
        try sim.writeDriverOverride(spare, "vfio-pci")
        try sim.driversProbe(spare)   // takes the freed index
        try sim.writeDriverOverride(vfioSpare, "vfio-pci")
        try sim.driversProbe(vfioSpare)
        #expect(w.index(spare) == before && w.index(vfioSpare) != before)
    case .groupChanged:
        w.editHost { host in
            for i in host.pciDevices.indices where host.pciDevices[i].address == nvme { host.pciDevices[i].iommuGroup = 99 }
        }
    case .nothing:
        break
    }
    try w.compare("\(change)")
    #expect(w.cache.last.everything == nil, "an incremental observation")
    // Only what the kernel signalled is read whole; every present device's override is read.
    #expect(w.cache.last.devices <= 2, "\(change): \(w.cache.last.devices) devices read whole")
    if change == .nothing {
        #expect(w.cache.last.devices == 0 && w.cache.last.owners == 0)
        #expect(w.cache.last.overrides == w.all.count)
    }
}

@Test func aFeedThatOverflowsFallsBackToAFullRead() throws {
    let w = try Watched(capacity: 2)
    try w.h.sim.unbindDriver(vfioSpare, driver: "vfio-pci")   // remove of vfio-dev, unbind
    try w.h.sim.unbindDriver(nic, driver: "mlx5_core")        // one too many: ENOBUFS
    try w.compare("overflow")
    #expect(w.cache.last.everything?.contains("ENOBUFS") == true)
    #expect(w.cache.last.devices == w.all.count)
    // The feed goes on: the next observation is incremental again.
    try w.compare("after the overflow")
    #expect(w.cache.last.everything == nil)
}

@Test func anInotifyOverflowRereadsEveryOwner() throws {
    let w = try Watched(nodeCapacity: 0)
    try w.h.sim.chownVfioDevice(index: w.index(gpu0), uid: 4242, gid: 4242)
    try w.compare("inotify overflow")
    #expect(w.cache.last.everything == nil)
    #expect(w.cache.last.owners == w.h.sim.state.devices.values.filter { $0.vfioIndex != nil }.count)
}

@Test func aFeedWhoseProofNeverArrivesIsNotUsed() throws {
    let h = try Harness(host: "examples/hosts/grace-2smmu-cmdqv.yaml")
    h.sim.ueventsDelivered = false   // a network namespace of another user namespace
    guard case .unavailable(let why) = h.sim.openChangeFeed() else {
        Issue.record("a feed was opened though no uevent reaches it")
        return
    }
    #expect(why.contains("never arrived"))
}

/// What the simulated kernel signals is what the real one does (lab/README.md records it):
/// bind/unbind and the vfio-dev child's add/remove, IN_ATTRIB for a chown, nothing for a
/// driver_override write.
@Test func theSimulatedKernelSignalsWhatTheRealOneDoes() throws {
    let h = try Harness(host: "examples/hosts/grace-2smmu-cmdqv.yaml")
    guard case .opened(let feed) = h.sim.openChangeFeed() else { Issue.record("no feed"); return }
    #expect(feed.drain().everything != nil)
    try h.sim.writeDriverOverride(spare, "vfio-pci")
    #expect(feed.drain().isEmpty, "driver_override: no signal")
    try h.sim.driversProbe(spare)
    let index = h.sim.state.devices[spare]!.vfioIndex!
    var bound = KernelChanges(); bound.devices = [spare]; bound.cdevs = [index]
    #expect(feed.drain() == bound)
    try h.sim.chownVfioDevice(index: index, uid: 107, gid: 107)
    var chowned = KernelChanges(); chowned.cdevs = [index]
    #expect(feed.drain() == chowned)
    try h.sim.unbindDriver(spare, driver: "vfio-pci")
    #expect(feed.drain() == bound)
    #expect(feed.drain().isEmpty)
}

@Test func kernelUeventMessagesParseAndUdevsAreIgnored() {
    let bind = Array("bind@/devices/pci0000:00/0000:00:03.0\0ACTION=bind\0DEVPATH=/devices/pci0000:00/0000:00:03.0\0SUBSYSTEM=pci\0DRIVER=vfio-pci\0PCI_SLOT_NAME=0000:00:03.0\0SEQNUM=1234\0".utf8)
    #expect(Uevent.parse(bind) == Uevent(action: .bind, devpath: "/devices/pci0000:00/0000:00:03.0", subsystem: "pci"))
    let child = Array("add@/devices/pci0000:00/0000:00:01.0/0000:01:00.0/vfio-dev/vfio3\0ACTION=add\0DEVPATH=/devices/pci0000:00/0000:00:01.0/0000:01:00.0/vfio-dev/vfio3\0SUBSYSTEM=vfio-dev\0MAJOR=238\0MINOR=3\0DEVNAME=vfio/devices/vfio3\0SEQNUM=1235\0".utf8)
    var changes = KernelChanges()
    changes.take(Uevent.parse(child)!)
    #expect(changes.devices == [PCIAddress("0000:01:00.0")!] && changes.cdevs == [3])
    let proof = Array("change@/devices/virtual/misc/iommu\0ACTION=change\0DEVPATH=/devices/virtual/misc/iommu\0SUBSYSTEM=misc\0SYNTH_UUID=0f1e2d3c-0000-4000-8000-000000000001\0SEQNUM=9\0".utf8)
    #expect(Uevent.parse(proof)?.synthUUID == "0f1e2d3c-0000-4000-8000-000000000001")
    var ignored = KernelChanges()
    ignored.take(Uevent.parse(proof)!)
    #expect(ignored.isEmpty, "not a PCI device")
    // udev's own messages (group 2) start with "libudev": never taken for the kernel's.
    #expect(Uevent.parse(Array("libudev\0\u{fe}\u{ed}\u{ca}\u{fe}".utf8)) == nil)
}

/// Devices asked for again after observations that left them out: what changed meanwhile
/// (with or without a signal) is seen.
@Test func devicesAskedForAgainAreCurrent() throws {
    let w = try Watched()
    let few: Set<PCIAddress> = [gpu0, gpu1]
    _ = try ObservedState.observe(port: w.h.sim, holdings: w.h.store.holdings, addresses: few, cache: w.cache)
    try w.h.sim.writeDriverOverride(spare, "vfio-pci")        // no signal, not asked for now
    try w.h.sim.unbindDriver(vfioSpare, driver: "vfio-pci")   // signalled, not asked for now
    _ = try ObservedState.observe(port: w.h.sim, holdings: w.h.store.holdings, addresses: few, cache: w.cache)
    try w.compare("asked for again")
    #expect(w.cache.last.everything == nil)
    try w.compare("and once more")
    #expect(w.cache.last.devices == 0)
}

/// The agent's session keeps a cache only over a proven feed: with no uevent reaching it
/// (another user namespace's network namespace), every observation reads everything.
@Test func anAgentSessionWithoutUeventsReadsEverything() throws {
    let h = try Harness(host: "examples/hosts/grace-2smmu-cmdqv.yaml")
    let session = Session(port: h.sim, sim: h.sim, stateDir: h.dir)
    h.sim.ueventsDelivered = false
    #expect(session.watchChanges().contains("no change signal"))
    #expect(session.observations == nil)
    h.sim.ueventsDelivered = true
    #expect(session.watchChanges().contains("change signals: uevents proven"))
    #expect(session.observations != nil)
}
