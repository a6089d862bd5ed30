import Foundation
import VsmmuTestSupport
import Testing
@testable import VsmmuExecutor
import VsmmuKernel
import VsmmuModel
import VsmmuPlanner

/// The journal's own encoder writes what JSONDecoder reads back as the value it encoded,
/// and the same JSON document as Foundation's JSONEncoder (keys aside from their order).
private func roundTrips<T: Codable & Equatable>(_ value: T, _ what: String, decodesBack: Bool = true) throws {
    let e = JournalEncoder()
    try e.append(value)
    let mine = Data(e.bytes)
    if decodesBack { #expect(try JSONDecoder().decode(T.self, from: mine) == value, "\(what): \(String(decoding: mine, as: UTF8.self))") }
    let theirs = try JSONEncoder().encode(value)
    let a = try JSONSerialization.jsonObject(with: mine, options: .fragmentsAllowed) as? NSObject
    let b = try JSONSerialization.jsonObject(with: theirs, options: .fragmentsAllowed) as? NSObject
    #expect(a == b, "\(what): \(String(decoding: mine, as: UTF8.self)) vs \(String(decoding: theirs, as: UTF8.self))")
}

/// A done record with hand-written patches: the same document as JSONEncoder's, and it
/// decodes back to the patch (all but "had no driver", below).
private func outcomeRoundTrips(_ p: HoldingPatch, decodesBack: Bool = true) throws {
    let e = JournalEncoder()
    try e.appendOutcome(seq: 7, [p, p])
    let mine = Data(e.bytes)
    if decodesBack {
        #expect(try JSONDecoder().decode(JournalRecord.self, from: mine).patches == [p, p], "\(p): \(String(decoding: mine, as: UTF8.self))")
    }
    let theirs = try JSONEncoder().encode(JournalRecord(seq: 7, phase: .done, patches: [p, p]))
    let a = try JSONSerialization.jsonObject(with: mine) as? NSObject
    let b = try JSONSerialization.jsonObject(with: theirs) as? NSObject
    #expect(a == b, "\(p): \(String(decoding: mine, as: UTF8.self)) vs \(String(decoding: theirs, as: UTF8.self))")
}

/// Every example's apply and destroy, journaled and not checkpointed: the holdings replayed
/// from the journal equal the ones the executor built in memory.
@Test(arguments: exampleTopologies.map(\.topology))
func holdingsReplayedFromTheJournalEqualTheExecutors(example: String) throws {
    let h = try Harness(host: exampleHost(example))
    let t = try h.example(example)
    for destroying in [false, true] {
        let p = try h.plan(t, destroying: destroying)
        try h.store.saveAllocations(p.allocations)
        try Executor(port: h.sim, store: h.store, batch: 16).run(p)
        let replayed = try StateStore(directory: h.dir)
        #expect(replayed.interrupted.isEmpty)
        #expect(replayed.holdings == h.store.holdings, "destroying \(destroying)")
        #expect(destroying || !h.store.holdings.guests.isEmpty)
        // The snapshots (written by the same encoder) read back too.
        try h.store.checkpoint()
        let reopened = try StateStore(directory: h.dir)
        #expect(reopened.holdings == h.store.holdings)
        #expect(reopened.allocations == h.store.allocations)
    }
}

/// Every step of every example's apply and destroy plans, every patch those steps made,
/// and the holdings they built.
@Test(arguments: exampleTopologies.map(\.topology))
func theJournalEncoderWritesWhatJSONDecoderReadsBack(example: String) throws {
    let h = try Harness(host: exampleHost(example))
    let t = try h.example(example)
    var plans = [try h.plan(t)]
    try h.apply(t)
    try roundTrips(h.store.holdings, "holdings")
    plans.append(try h.plan(t, destroying: true))
    for p in plans {
        for op in p.operations { try roundTrips(op, "step \(op.index) \(op.call)") }
    }
}

@Test func theJournalEncoderEscapesStringsAndWritesEveryPatchKind() throws {
    try roundTrips("quote \" backslash \\ newline \n tab \t bell \u{7} é ü 漢", "string")
    try roundTrips([UInt64.max, 0, 1 << 40], "numbers")
    try roundTrips([Int64.min, -1], "negative numbers")
    try roundTrips([1.5, 0, -2.25, 1_733_230_000.125, 1e300], "doubles")
    let a = PCIAddress("0000:09:01.0")!
    let patches: [HoldingPatch] = [
        .guest("g", nil), .ioas("g", 3), .ioas("g", nil),
        .device("g", "d", DeviceHolding(source: .pci(a), cdev: nil, vfioIndex: 2, mockStdev: nil, devID: 7)),
        .stage2("g", "s", Stage2Holding(hwpt: 4, nestParent: true)),
        .vsmmu("g", "v", VSMMUHolding(physical: "smmu0", viommu: 9, viommuType: .armSMMUv3)),
        .originalDriver(a, .some("nvidia")), .originalDriver(a, nil),
        .originalDriverUnknown(a), .originalDriverNone(a), .running("g", nil),
    ]
    let vsmmu = { () -> VSMMUHolding in
        var v = VSMMUHolding(physical: "smmu \"0\"", viommu: 9, viommuType: .armSMMUv3)
        v.abortHWPT = 10
        v.vdevices = ["gpu0": VDeviceHolding(id: 11, virtID: 0x108), "gpu1": VDeviceHolding(id: 12, virtID: UInt64.max)]
        v.eventQueues = [.armSMMUv3: EventQueueHolding(id: 13, fd: KernelFile(fd: 14))]
        return v
    }()
    var device = DeviceHolding(source: .pci(a), cdev: DeviceHandle(fd: 5), vfioIndex: 2, mockStdev: 3, devID: 7)
    device.attached = 8
    device.owner = 1000
    let more: [HoldingPatch] = [
        .vsmmu("g", "v", vsmmu), .vsmmu("g", "v", nil), .device("g", "d", device), .device("g", "d", nil), .stage2("g", "s", nil),
        .stage2("g", "s", Stage2Holding(hwpt: 4, nestParent: false)), .guest("g", GuestHolding(iommufd: IommufdHandle(fd: 3), holder: "pid 1")),
        .memory("g", "ram0", MemoryHolding(memory: GuestMemory(file: KernelFile(fd: 6), userVA: 0, size: 1 << 34), backing: .hugetlbfs, iova: 1 << 30, length: 1 << 34, mapped: true)),
        .memory("g", "ram1", MemoryHolding(memory: GuestMemory(file: nil, userVA: 0x7f00_0000_0000, size: 4096), backing: .anonymous, iova: 0, length: 4096, mapped: false)),
        .memory("g", "ram1", nil), .guest("g", { var g = GuestHolding(iommufd: IommufdHandle(fd: 3)); g.ioas = 1; g.devices = ["d": device]; g.vsmmus = ["v": vsmmu]; return g }()),
    ]
    for p in patches + more {
        try roundTrips(p, "\(p)")
        try outcomeRoundTrips(p)
    }
    try outcomeRoundTrips(.originalDriver(a, .some(nil)), decodesBack: false)
    // "Had no driver" as .some(nil) is written as null, as JSONEncoder writes it, and so
    // reads back as "forget": the executor journals it as originalDriverNone instead.
    try roundTrips(HoldingPatch.originalDriver(a, .some(nil)), "no original driver", decodesBack: false)
}

/// holdings.json written out by hand is the document JSONEncoder writes, and reads back.
private func holdingsRoundTrip(_ h: Holdings, _ what: String) throws {
    let e = JournalEncoder()
    try e.appendHoldings(h)
    let mine = Data(e.bytes)
    #expect(try JSONDecoder().decode(Holdings.self, from: mine) == h, "\(what): \(String(decoding: mine, as: UTF8.self))")
    let theirs = try JSONEncoder().encode(h)
    let a = try JSONSerialization.jsonObject(with: mine) as? NSObject
    let b = try JSONSerialization.jsonObject(with: theirs) as? NSObject
    #expect(a == b, "\(what): \(String(decoding: mine, as: UTF8.self)) vs \(String(decoding: theirs, as: UTF8.self))")
}

@Test(arguments: exampleTopologies.map(\.topology))
func theHoldingsSnapshotIsWhatJSONEncoderWrites(example: String) throws {
    let h = try Harness(host: exampleHost(example))
    try h.apply(try h.example(example))
    #expect(!h.store.holdings.guests.isEmpty)
    try holdingsRoundTrip(h.store.holdings, example)
}

@Test func theHoldingsSnapshotWritesEveryField() throws {
    let a = PCIAddress("0000:09:01.0")!, b = PCIAddress("0000:0a:00.0")!
    var h = Holdings()
    try holdingsRoundTrip(h, "empty")
    var g = GuestHolding(iommufd: IommufdHandle(fd: 3), holder: "simulated \"process\" 0")
    g.ioas = 2
    g.uncertain = true
    var d = DeviceHolding(source: .pci(a), cdev: DeviceHandle(fd: 5), vfioIndex: 2, mockStdev: nil, devID: 7)
    d.attached = 8
    d.owner = 107
    g.devices = ["gpu0": d, "mock": DeviceHolding(source: .selftest(1), cdev: nil, vfioIndex: nil, mockStdev: 3, devID: 4)]
    g.stage2 = ["smmu0": Stage2Holding(hwpt: 9, nestParent: true)]
    g.memory = ["ram0": MemoryHolding(memory: GuestMemory(file: KernelFile(fd: 6), userVA: 0, size: 1 << 34), backing: .memfd, iova: 0x4000_0000, length: 1 << 34, mapped: true),
                "ram1": MemoryHolding(memory: GuestMemory(file: nil, userVA: 0x7f00_0000_0000, size: 1 << 21), backing: .anonymous, iova: 0, length: 1 << 21, mapped: false)]
    var v = VSMMUHolding(physical: "smmu0", viommu: 10, viommuType: .armSMMUv3)
    v.abortHWPT = 11
    v.bypassHWPT = 12
    v.vdevices = ["gpu0": VDeviceHolding(id: 13, virtID: 0x108)]
    v.eventQueues = [.armSMMUv3: EventQueueHolding(id: 14, fd: KernelFile(fd: 15))]
    g.vsmmus = ["smmu0": v]
    h.guests = ["vm0": g, "vm1": GuestHolding(iommufd: IommufdHandle(fd: 20))]
    h.originalDrivers = [a: "nvidia", b: String?.none]
    h.unknownOriginalDrivers = [b]
    h.running = ["vm2": RunningGuest(pid: 42, startTime: 7, command: ["qemu", "-x"], vmm: .qemu, since: 1.5, devices: ["gpu": a])]
    try holdingsRoundTrip(h, "full")
}

/// The hand-written holdings know every stored property of the types they write: one
/// added to a type fails here until JournalEncoder writes it (and the test above sets it).
@Test func theHandWrittenHoldingsKnowEveryField() {
    func fields(_ v: Any) -> Int { Mirror(reflecting: v).children.count }
    let a = PCIAddress("0000:09:01.0")!
    #expect(fields(Holdings()) == 5)
    #expect(fields(GuestHolding(iommufd: IommufdHandle(fd: 3))) == 8)
    #expect(fields(DeviceHolding(source: .pci(a), cdev: nil, vfioIndex: nil, mockStdev: nil, devID: 1)) == 7)
    #expect(fields(Stage2Holding(hwpt: 1, nestParent: true)) == 2)
    #expect(fields(MemoryHolding(memory: GuestMemory(file: nil, userVA: 0, size: 0), backing: .memfd, iova: 0, length: 0, mapped: false)) == 5)
    #expect(fields(GuestMemory(file: nil, userVA: 0, size: 0)) == 3)
    #expect(fields(VSMMUHolding(physical: "p", viommu: 1, viommuType: .armSMMUv3)) == 7)
    #expect(fields(EventQueueHolding(id: 1, fd: KernelFile(fd: 1))) == 2)
    #expect(fields(VDeviceHolding(id: 1, virtID: 0)) == 2)
}

/// The encoder's buffer grows from any size without losing or reordering a byte.
@Test func theJournalEncoderBufferGrows() throws {
    let long = String(repeating: "gpu\"\\\n漢", count: 300)
    let numbers = (0..<500).map { UInt64($0) * 0x1_0000_0001 }
    let e = JournalEncoder(capacity: 16)
    try e.append(long)
    e.appendRaw(10)
    try e.append(numbers)
    let lines = e.bytes.split(separator: 10)
    #expect(lines.count == 2)
    #expect(try JSONDecoder().decode(String.self, from: Data(lines[0])) == long)
    #expect(try JSONDecoder().decode([UInt64].self, from: Data(lines[1])) == numbers)
    #expect(e.count == e.bytes.count)
}

/// Escaping finds every character JSON must escape wherever it sits (the plain runs are
/// skipped a word at a time), and leaves the rest, multi-byte UTF-8 included, as it is.
@Test func theJournalEncoderEscapesAtEveryPosition() throws {
    for special in ["\"", "\\", "\n", "\u{1}", "\u{1F}", "\t"] {
        for length in 0..<20 {
            for at in 0...length {
                var chars = Array(repeating: Character("a"), count: length)
                chars.insert(Character(special), at: at)
                if length > 3 { chars[length / 2] = "é" }
                let s = String(chars) + " ~\u{7F}漢"
                let e = JournalEncoder()
                try e.append(s)
                #expect(try JSONDecoder().decode(String.self, from: Data(e.bytes)) == s, "\(s.debugDescription)")
            }
        }
    }
}
