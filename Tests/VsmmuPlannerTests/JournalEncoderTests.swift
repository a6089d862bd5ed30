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
        .originalDriverUnknown(a), .running("g", nil),
    ]
    for p in patches { try roundTrips(p, "\(p)") }
    // "Had no driver" is written as null, as JSONEncoder writes it, and so reads back as
    // "forget": the synthesized format cannot tell String?? .some(nil) from nil.
    try roundTrips(HoldingPatch.originalDriver(a, .some(nil)), "no original driver", decodesBack: false)
}
