/// A PCI address `domain:bus:slot.function` (e.g. `0000:09:01.0`), parsed strictly.
/// It is the only value from user input that may ever become part of a sysfs path,
/// so its canonical text form has a fixed shape: 4 hex, ':', 2 hex, ':', 2 hex, '.', 1 digit.
public struct PCIAddress: Hashable, Comparable, Sendable, Codable, CustomStringConvertible {
    public let domain: UInt16
    public let bus: UInt8
    public let slot: UInt8      // 0...31
    public let function: UInt8  // 0...7

    public init?(domain: UInt16, bus: UInt8, slot: UInt8, function: UInt8) {
        guard slot < 32, function < 8 else { return nil }
        self.domain = domain
        self.bus = bus
        self.slot = slot
        self.function = function
    }

    /// Why a string is not a PCI address; nil when it is one.
    public static func problem(with text: String) -> String? {
        let bytes = Array(text.utf8)
        guard bytes.count == 12 else {
            return "expected domain:bus:slot.function such as 0000:09:01.0 (12 characters), got \(bytes.count) characters"
        }
        func hex(_ range: Range<Int>) -> Bool {
            range.allSatisfy { i in
                let c = bytes[i]
                return (c >= 48 && c <= 57) || (c >= 97 && c <= 102) || (c >= 65 && c <= 70)
            }
        }
        guard hex(0..<4), bytes[4] == 58, hex(5..<7), bytes[7] == 58, hex(8..<10), bytes[10] == 46,
              bytes[11] >= 48, bytes[11] <= 57
        else {
            return "expected domain:bus:slot.function in hexadecimal such as 0000:09:01.0"
        }
        let slot = UInt8(String(decoding: bytes[8..<10], as: UTF8.self), radix: 16)!
        if slot > 31 { return "slot \(slot) is out of range (0x00-0x1f)" }
        if bytes[11] > 55 { return "function \(bytes[11] - 48) is out of range (0-7)" }
        return nil
    }

    public init?(_ text: String) {
        guard PCIAddress.problem(with: text) == nil else { return nil }
        let b = Array(text.utf8)
        func hx(_ r: Range<Int>) -> UInt16 { UInt16(String(decoding: b[r], as: UTF8.self), radix: 16)! }
        self.init(domain: hx(0..<4), bus: UInt8(hx(5..<7)), slot: UInt8(hx(8..<10)), function: b[11] - 48)
    }

    /// Canonical lower-case form, e.g. `0000:09:01.0`: the sysfs directory name.
    /// Written byte by byte: it names every sysfs path and keys every fingerprint, so it is
    /// on the hot path of each plan (radix conversions and interpolation cost 20× more).
    public var description: String {
        String(unsafeUninitializedCapacity: 12) { b in
            let digits: StaticString = "0123456789abcdef"
            func hex(_ v: UInt16, _ shift: UInt16) -> UInt8 { digits.utf8Start[Int((v >> shift) & 0xf)] }
            b[0] = hex(domain, 12); b[1] = hex(domain, 8); b[2] = hex(domain, 4); b[3] = hex(domain, 0); b[4] = 58
            b[5] = hex(UInt16(bus), 4); b[6] = hex(UInt16(bus), 0); b[7] = 58
            b[8] = hex(UInt16(slot), 4); b[9] = hex(UInt16(slot), 0); b[10] = 46
            b[11] = 48 + function & 7
            return 12
        }
    }

    /// devfn as the PCI spec packs it: slot << 3 | function.
    public var devfn: UInt8 { slot << 3 | function }

    /// domain:bus:devfn in one number, in address order (slot < 32 and function < 8).
    var packed: UInt32 { UInt32(domain) << 16 | UInt32(bus) << 8 | UInt32(devfn) }

    public static func < (a: PCIAddress, b: PCIAddress) -> Bool { a.packed < b.packed }

    /// One combine of the packed number: sets and dictionaries of 10,000 addresses are hashed
    /// on every plan and observation, and four combines cost four times one.
    public func hash(into hasher: inout Hasher) { hasher.combine(packed) }

    public init(from decoder: Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let v = PCIAddress(text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "bad PCI address \(text)"))
        }
        self = v
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }
}
