import Foundation
import Testing
import VsmmuKernel
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
