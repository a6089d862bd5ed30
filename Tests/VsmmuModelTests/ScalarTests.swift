import Testing
@testable import VsmmuModel
import VsmmuKernel

@Test(arguments: [
    ("0x40000000", UInt64(0x4000_0000)), ("1073741824", UInt64(1 << 30)), ("0b1010", UInt64(10)),
    ("16GiB", UInt64(16) << 30), ("4KiB", UInt64(4096)), ("0x10MiB", UInt64(16) << 20), ("1TiB", UInt64(1) << 40),
])
func sizesAndIntegersParse(text: String, expected: UInt64) throws {
    let v = try ScalarParser.parseSize(text).get()
    #expect(v == expected)
}

@Test(arguments: ["16GB", "16 GiB", "-1", "1.5GiB", "0x", "0b2", "18446744073709551616", "16777216TiB", "", "ten"])
func badSizesAreRefused(text: String) {
    #expect(throws: ScalarProblem.self) { try ScalarParser.parseSize(text).get() }
}

@Test(arguments: [
    ("0000:09:01.0", true), ("abcd:ff:1f.7", true), ("ABCD:FF:1F.7", true),
    ("0000:09:20.0", false), ("0000:09:01.8", false), ("0000:9:01.0", false), ("09:01.0", false),
    ("0000:09:01.0 ", false), ("0000:09:01.0/../..", false), ("0000:09:01:0", false), ("00000:09:01.0", false),
    ("0000:0g:01.0", false), ("../../etc/pas", false),
])
func pciAddressesAreParsedStrictly(text: String, valid: Bool) {
    #expect((PCIAddress(text) != nil) == valid)
    if valid { #expect(PCIAddress(text)!.description == text.lowercased()) }
}

@Test func pciAddressPacksDevfn() {
    let a = PCIAddress("0000:10:03.2")!
    #expect(a.devfn == (3 << 3 | 2))
    #expect(a.bus == 0x10)
}

@Test func unquotedPCIAddressAndOnAreTypedByTheirField() throws {
    let t = try parse(minimalHeader + """
      - name: vm1
        vsmmus:
          - name: s0
            ats: on
            ril: off
            ssidSize: 0x10
            oas: 44
            busNumber: 0b10000
            devices:
              - name: gpu0
                host: 0000:09:01.0
    """)
    let s = t.guests[0].vsmmus[0]
    #expect(s.ats == .on)
    #expect(s.ril == .off)
    #expect(s.ssidSize == .value(16))
    #expect(s.oas == .value(44))
    #expect(s.busNumber == 16)
    #expect(s.devices[0].host == .pci(PCIAddress("0000:09:01.0")!))
}

@Test func booleanWordsForSwitchesGetAHint() {
    let d = loadFailure(minimalHeader + "  - name: vm1\n    vsmmus:\n      - name: s0\n        ats: true\n")
    #expect(d.count == 1)
    #expect(d.first?.message.contains("'true' is not allowed") == true)
    #expect(d.first?.hint == "write on, off or auto")
    #expect(d.first?.mark == .init(line: 9, column: 14))
}

@Test func namesFollowTheRule() {
    for bad in ["VM1", "-vm", "vm_1", String(repeating: "a", count: 64), ""] {
        let d = loadFailure(minimalHeader + "  - name: \"\(bad)\"\n")
        #expect(d.first?.message.contains("not a valid name") == true, "\(bad)")
    }
    #expect(loadFailure(minimalHeader + "  - name: vm-1\n").isEmpty)
}

@Test func unknownKeySuggestsTheNearestKnownOne() {
    let d = loadFailure(minimalHeader + "  - name: vm1\n    memroy: []\n")
    #expect(d.first?.hint == "did you mean 'memory'?")
    #expect(d.first?.mark == .init(line: 7, column: 5))
}

@Test func missingRequiredKeysAreNamed() {
    let d = loadFailure("apiVersion: vsmmu/v1\nkind: Topology\n")
    #expect(d.map(\.message).contains("the document is missing the required key 'metadata'"))
    #expect(d.map(\.message).contains("the document is missing the required key 'guests'"))
}

@Test func wrongKindSaysWhatTheFileIs() {
    let d = loadFailure("apiVersion: vsmmu/v1\nkind: Host\n")
    #expect(d.count == 1)
    #expect(d.first?.message == "this is a Host file, expected kind Topology")
}

@Test func selftestDeviceSyntax() throws {
    let t = try parse(minimalHeader + "  - name: vm1\n    devices:\n      - { name: d, host: selftest:3 }\n")
    #expect(t.guests[0].devices[0].host == .selftest(3))
    let d = loadFailure(minimalHeader + "  - name: vm1\n    devices:\n      - { name: d, host: selftest:x }\n")
    #expect(d.first?.hint?.contains("selftest:N") == true)
}
