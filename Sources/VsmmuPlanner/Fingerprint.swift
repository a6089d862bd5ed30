import VsmmuKernel
import VsmmuModel

extension ObservedState {
    /// A digest of everything observed: a saved plan is refused when it changed. The text
    /// digested is written piece by piece into the hash, numbers and addresses digit by
    /// digit (no text of the whole host, nor of any number, is built). The text is the one
    /// string interpolation gave before: a saved plan keeps its fingerprint (FingerprintTests).
    public var fingerprint: String {
        var f = FNV1a()
        forEachSorted(sysfs) { a, d in
            f += a; f.put(" "); f += d.driver ?? "-"; f.put(" "); f += d.driverOverride ?? "-"; f.put(" ")
            if let i = d.vfioDevIndex { f += i } else { f.put("-") }
            f.put(" ")
            if let g = d.iommuGroup { f += g } else { f.put("-") }
            f.put("\n")
        }
        f.put("dead "); f += Fingerprint.list(deadGuests.sorted()); f.put(" lost "); f += Fingerprint.list(lostDevices.sorted())
        f.put(" owners "); Fingerprint.list(owners, into: &f); f.put("\n")
        Fingerprint.canonical(holdings, into: &f)
        return f.hex
    }
}

/// FNV-1a over UTF-8 text fed in pieces: the same digest as over the pieces joined.
/// Numbers, booleans and addresses are fed as the text their `description` is.
struct FNV1a {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325

    @inline(__always) mutating func byte(_ b: UInt8) { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }

    @inline(__always) static func += (f: inout FNV1a, s: String) {
        if s.utf8.withContiguousStorageIfAvailable({ (buffer: UnsafeBufferPointer<UInt8>) -> Void in for b in buffer { f.byte(b) } }) == nil {
            for b in s.utf8 { f.byte(b) }
        }
    }

    /// A literal piece of the text (no String made or retained for it).
    @inline(__always) mutating func put(_ s: StaticString) {
        s.withUTF8Buffer { for b in $0 { byte(b) } }
    }

    /// Decimal, as `description` writes it.
    static func += <T: BinaryInteger>(f: inout FNV1a, v: T) {
        if v < 0 { f.byte(0x2d) }
        f.decimal(UInt64(v.magnitude))
    }

    static func += (f: inout FNV1a, b: Bool) { if b { f.put("true") } else { f.put("false") } }

    /// `0000:09:01.0`, as `PCIAddress.description` writes it.
    static func += (f: inout FNV1a, a: PCIAddress) {
        f.hex(UInt64(a.domain), digits: 4); f.byte(0x3a); f.hex(UInt64(a.bus), digits: 2); f.byte(0x3a)
        f.hex(UInt64(a.slot), digits: 2); f.byte(0x2e); f.decimal(UInt64(a.function))
    }

    static func += (f: inout FNV1a, s: DeviceSource) {
        switch s {
        case .pci(let a): f += a
        case .selftest(let n): f.put("selftest:"); f += n
        }
    }

    /// Digits made least significant first on the stack (divisions by the constant 10
    /// only), hashed most significant first.
    mutating func decimal(_ v: UInt64) {
        if v < 10 { byte(0x30 &+ UInt8(truncatingIfNeeded: v)); return }
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 20) { digits in
            var i = 20, x = v
            repeat {
                i -= 1
                digits[i] = 0x30 &+ UInt8(truncatingIfNeeded: x % 10)
                x /= 10
            } while x > 0
            for j in i..<20 { byte(digits[j]) }
        }
    }

    /// Lower-case hexadecimal, zero-padded to `digits`.
    mutating func hex(_ v: UInt64, digits: Int) {
        for i in stride(from: digits - 1, through: 0, by: -1) {
            let n = UInt8(truncatingIfNeeded: (v >> UInt64(4 * i)) & 0xf)
            byte(n < 10 ? 0x30 &+ n : 0x57 &+ n)
        }
    }

    var hex: String {
        let hexed = String(h, radix: 16)
        return String(repeating: "0", count: 16 - hexed.count) + hexed
    }
}

/// Calls `body` with each entry in key order, from the dictionary's own storage: its
/// indices are sorted in a temporary buffer (no sorted copy of the entries is made and freed,
/// no key is hashed again).
@inline(__always)
func forEachSorted<K: Comparable, V>(_ d: [K: V], _ body: (K, V) -> Void) {
    switch d.count {
    case 0: return
    case 1: let e = d[d.startIndex]; body(e.key, e.value)
    default:
        withUnsafeTemporaryAllocation(of: Dictionary<K, V>.Index.self, capacity: d.count) { buffer in
            var order = buffer
            _ = order.initialize(from: d.indices)
            order.sort { d[$0].key < d[$1].key }
            for i in order { let e = d[i]; body(e.key, e.value) }
            order.deinitialize()
        }
    }
}

enum Fingerprint {
    /// `"\(array)"` of strings, written out: the same text without the runtime's
    /// reflection-driven printing (half of a converged re-plan's time at 10,000 devices).
    static func list(_ items: [String]) -> String {
        "[" + items.map(\.debugDescription).joined(separator: ", ") + "]"
    }

    /// `"\(owners.sorted { $0.key < $1.key })"`, written out the same way.
    static func list(_ owners: [Int: UInt32]) -> String {
        "[" + owners.sorted { $0.key < $1.key }.map { "(key: \($0.key), value: \($0.value))" }.joined(separator: ", ") + "]"
    }

    /// The same text as `list(owners)`, fed to `f`.
    static func list(_ owners: [Int: UInt32], into f: inout FNV1a) {
        f.put("[")
        var first = true
        forEachSorted(owners) { k, v in
            if !first { f.put(", ") }
            first = false
            f.put("(key: "); f += k; f.put(", value: "); f += v; f.put(")")
        }
        f.put("]")
    }

    static func fnv1a(_ s: String) -> String {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in s.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        let hexed = String(h, radix: 16)
        return String(repeating: "0", count: 16 - hexed.count) + hexed
    }

    /// A stable text form of the holdings (dictionary order fixed), fed to `f`.
    static func canonical(_ h: Holdings, into f: inout FNV1a) {
        forEachSorted(h.originalDrivers) { a, d in f.put("orig "); f += a; f.put(" "); f += d ?? "-"; f.put("\n") }
        forEachSorted(h.running) { g, r in
            f.put("running "); f += g; f.put(" pid "); f += r.pid; f.put(" "); f += r.startTime ?? 0; f.put(" "); f += r.vmm.rawValue; f.put("\n")
        }
        forEachSorted(h.guests) { name, g in
            f.put("guest "); f += name; f.put(" fd "); f += g.iommufd.fd; f.put(" ioas ")
            if let i = g.ioas { f += i } else { f.put("-") }
            f.put(" uncertain "); f += g.uncertain; f.put("\n")
            forEachSorted(g.devices) { n, d in
                f.put(" dev "); f += n; f.put(" "); f += d.source; f.put(" "); f += d.cdev?.fd ?? -1; f.put(" "); f += d.vfioIndex ?? -1
                f.put(" "); f += d.mockStdev ?? 0; f.put(" "); f += d.devID; f.put(" "); f += d.attached ?? 0; f.put(" "); f += d.owner ?? 0; f.put("\n")
            }
            forEachSorted(g.stage2) { n, s in f.put(" s2 "); f += n; f.put(" "); f += s.hwpt; f.put(" "); f += s.nestParent; f.put("\n") }
            forEachSorted(g.memory) { n, m in
                f.put(" mem "); f += n; f.put(" "); f += m.iova; f.put(" "); f += m.length; f.put(" "); f += m.backing.rawValue; f.put(" ")
                f += m.mapped; f.put(" "); f += m.memory.userVA; f.put(" "); f += m.memory.file?.fd ?? -1; f.put("\n")
            }
            forEachSorted(g.vsmmus) { n, v in
                f.put(" vsmmu "); f += n; f.put(" "); f += v.physical; f.put(" "); f += v.viommu; f.put(" "); f += v.viommuType.rawValue
                f.put(" "); f += v.abortHWPT ?? 0; f.put(" "); f += v.bypassHWPT ?? 0; f.put("\n")
                forEachSorted(v.eventQueues) { t, q in f.put("  evq "); f += t.rawValue; f.put(" "); f += q.id; f.put(" "); f += q.fd.fd; f.put("\n") }
                forEachSorted(v.vdevices) { d, vd in f.put("  vdev "); f += d; f.put(" "); f += vd.id; f.put(" "); f += vd.virtID; f.put("\n") }
            }
        }
    }
}
