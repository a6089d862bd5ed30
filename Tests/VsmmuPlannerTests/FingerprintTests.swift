import Foundation
import Testing
import VsmmuKernel
import VsmmuTestSupport
@testable import VsmmuPlanner

/// The fingerprint's lists are written out by hand (speed); a saved plan made before must
/// keep its fingerprint, so the text is the one string interpolation of the arrays gave.
@Test func fingerprintListsAreWrittenAsInterpolationWroteThem() {
    let names = ["vm-2", "vm1", "a\"b"]
    #expect(Fingerprint.list(names) == "\(names)")
    #expect(Fingerprint.list([String]()) == "\([String]())")
    let owners: [Int: UInt32] = [7: 0, 1: 1000, 12: 4_294_967_295]
    #expect(Fingerprint.list(owners) == "\(owners.sorted { $0.key < $1.key })")
    #expect(Fingerprint.list([Int: UInt32]()) == "\([Int: UInt32]().sorted { $0.key < $1.key })")
}

@Test func pciAddressTextIsItsCanonicalForm() {
    for (d, b, s, f) in [(0, 0, 0, 0), (0xffff, 0xff, 31, 7), (0xa0b1, 0x0c, 0x1a, 3)] as [(UInt16, UInt8, UInt8, UInt8)] {
        let a = PCIAddress(domain: d, bus: b, slot: s, function: f)!
        let expected = String(format: "%04x:%02x:%02x.%d", d, b, s, f)
        #expect(a.description == expected)
        #expect(PCIAddress(expected) == a)
    }
}

@Test func theHashFedInPiecesIsTheHashOfTheJoinedText() {
    let pieces = ["0000:09:01.0", " ", "vfio-pci", "\n", "dead [\"vm1\"]", " é ", ""]
    var f = FNV1a()
    for p in pieces { f += p }
    f += UInt64(42)
    #expect(f.hex == Fingerprint.fnv1a(pieces.joined() + "42"))
}

/// A plan's fingerprint is worked out when read (a drift check never reads it): it must be
/// the digest of what the plan was made from, whenever it is read, and a saved plan carries
/// it as text.
@Test func aPlansFingerprintIsItsObservationsDigestWhenReadAndSaved() throws {
    let h = try Harness(host: exampleHost("cmdqv"))
    let t = try h.example("cmdqv")
    try h.apply(t)
    let p = try h.plan(t)
    var addresses = Set<PCIAddress>()
    for g in t.guests { for d in g.allDevices { if let a = d.host.pciAddress { addresses.insert(a) } } }
    let observed = try ObservedState.observe(port: h.sim, holdings: h.store.holdings, addresses: addresses)
    #expect(p.fingerprint.count == 16)
    #expect(p.fingerprint == observed.fingerprint)

    // The kernel moves on: the plan keeps the digest of what it was made from.
    let address = addresses.sorted()[0]
    try h.sim.writeDriverOverride(address, nil)
    let moved = try ObservedState.observe(port: h.sim, holdings: h.store.holdings, addresses: addresses)
    #expect(moved.fingerprint != observed.fingerprint)
    #expect(p.fingerprint == observed.fingerprint)

    // Saved and read back: the text, under the same key.
    let json = try JSONEncoder().encode(p)
    let object = try JSONSerialization.jsonObject(with: json) as? [String: Any]
    #expect(object?["fingerprint"] as? String == observed.fingerprint)
    var back = try JSONDecoder().decode(Plan.self, from: json)
    #expect(back.fingerprint == observed.fingerprint)
    back.fingerprint = "0123456789abcdef"
    #expect(back.fingerprint == "0123456789abcdef")
}
