import VsmmuKernel
import VsmmuModel

extension ObservedState {
    /// A digest of everything observed: a saved plan is refused when it changed. The text
    /// digested is written piece by piece into the hash, numbers and addresses digit by
    /// digit (no text of the whole host, nor of any number, is built). The text is the one
    /// string interpolation gave before: a saved plan keeps its fingerprint (FingerprintTests).
    public var fingerprint: String {
        var f = FNV1a()
        for a in sysfs.keys.sorted() {
            let d = sysfs[a]!
            f += a; f += " "; f += d.driver ?? "-"; f += " "; f += d.driverOverride ?? "-"; f += " "
            if let i = d.vfioDevIndex { f += i } else { f += "-" }
            f += " "
            if let g = d.iommuGroup { f += g } else { f += "-" }
            f += "\n"
        }
        f += "dead "; f += Fingerprint.list(deadGuests.sorted()); f += " lost "; f += Fingerprint.list(lostDevices.sorted())
        f += " owners "; Fingerprint.list(owners, into: &f); f += "\n"
        Fingerprint.canonical(holdings, into: &f)
        return f.hex
    }
}

/// FNV-1a over UTF-8 text fed in pieces: the same digest as over the pieces joined.
/// Numbers, booleans and addresses are fed as the text their `description` is.
struct FNV1a {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325

    @inline(__always) mutating func byte(_ b: UInt8) { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }

    static func += (f: inout FNV1a, s: String) {
        var s = s
        s.withUTF8 { for b in $0 { f.byte(b) } }
    }

    /// Decimal, as `description` writes it.
    static func += <T: BinaryInteger>(f: inout FNV1a, v: T) {
        if v < 0 { f.byte(0x2d) }
        f.decimal(UInt64(v.magnitude))
    }

    static func += (f: inout FNV1a, b: Bool) { f += b ? "true" : "false" }

    /// `0000:09:01.0`, as `PCIAddress.description` writes it.
    static func += (f: inout FNV1a, a: PCIAddress) {
        f.hex(UInt64(a.domain), digits: 4); f.byte(0x3a); f.hex(UInt64(a.bus), digits: 2); f.byte(0x3a)
        f.hex(UInt64(a.slot), digits: 2); f.byte(0x2e); f.decimal(UInt64(a.function))
    }

    static func += (f: inout FNV1a, s: DeviceSource) {
        switch s {
        case .pci(let a): f += a
        case .selftest(let n): f += "selftest:"; f += n
        }
    }

    mutating func decimal(_ v: UInt64) {
        var p: UInt64 = 1
        while v / p >= 10 { p &*= 10 }
        repeat {
            byte(0x30 &+ UInt8(truncatingIfNeeded: (v / p) % 10))
            p /= 10
        } while p > 0
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
        f += "["
        var first = true
        for (k, v) in owners.sorted(by: { $0.key < $1.key }) {
            if !first { f += ", " }
            first = false
            f += "(key: "; f += k; f += ", value: "; f += v; f += ")"
        }
        f += "]"
    }

    static func fnv1a(_ s: String) -> String {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in s.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        let hexed = String(h, radix: 16)
        return String(repeating: "0", count: 16 - hexed.count) + hexed
    }

    /// A stable text form of the holdings (dictionary order fixed), fed to `f`.
    static func canonical(_ h: Holdings, into f: inout FNV1a) {
        for (a, d) in h.originalDrivers.sorted(by: { $0.key < $1.key }) { f += "orig "; f += a; f += " "; f += d ?? "-"; f += "\n" }
        for (g, r) in h.running.sorted(by: { $0.key < $1.key }) {
            f += "running "; f += g; f += " pid "; f += r.pid; f += " "; f += r.startTime ?? 0; f += " "; f += r.vmm.rawValue; f += "\n"
        }
        for (name, g) in h.guests.sorted(by: { $0.key < $1.key }) {
            f += "guest "; f += name; f += " fd "; f += g.iommufd.fd; f += " ioas "
            if let i = g.ioas { f += i } else { f += "-" }
            f += " uncertain "; f += g.uncertain; f += "\n"
            for (n, d) in g.devices.sorted(by: { $0.key < $1.key }) {
                f += " dev "; f += n; f += " "; f += d.source; f += " "; f += d.cdev?.fd ?? -1; f += " "; f += d.vfioIndex ?? -1
                f += " "; f += d.mockStdev ?? 0; f += " "; f += d.devID; f += " "; f += d.attached ?? 0; f += " "; f += d.owner ?? 0; f += "\n"
            }
            for (n, s) in g.stage2.sorted(by: { $0.key < $1.key }) { f += " s2 "; f += n; f += " "; f += s.hwpt; f += " "; f += s.nestParent; f += "\n" }
            for (n, m) in g.memory.sorted(by: { $0.key < $1.key }) {
                f += " mem "; f += n; f += " "; f += m.iova; f += " "; f += m.length; f += " "; f += m.backing.rawValue; f += " "
                f += m.mapped; f += " "; f += m.memory.userVA; f += " "; f += m.memory.file?.fd ?? -1; f += "\n"
            }
            for (n, v) in g.vsmmus.sorted(by: { $0.key < $1.key }) {
                f += " vsmmu "; f += n; f += " "; f += v.physical; f += " "; f += v.viommu; f += " "; f += v.viommuType.rawValue
                f += " "; f += v.abortHWPT ?? 0; f += " "; f += v.bypassHWPT ?? 0; f += "\n"
                for (t, q) in v.eventQueues.sorted(by: { $0.key < $1.key }) { f += "  evq "; f += t.rawValue; f += " "; f += q.id; f += " "; f += q.fd.fd; f += "\n" }
                for (d, vd) in v.vdevices.sorted(by: { $0.key < $1.key }) { f += "  vdev "; f += d; f += " "; f += vd.id; f += " "; f += vd.virtID; f += "\n" }
            }
        }
    }
}
