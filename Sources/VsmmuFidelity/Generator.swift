/// Seeded generation of corpus cases (docs/fidelity.md): each seed gives one case, a call
/// sequence that walks the object graph as a buggy or hostile VMM would, a valid prefix
/// followed by a mix of valid calls and mutated ones: wrong ids, ids of the wrong type, stale
/// ids after DESTROY, DESTROY while referenced, misaligned and overflowing ranges, unknown
/// flags and data types, short and oversized driver data, duplicate virtual ids, another
/// context's ids, closes (of a cdev, an event fd, a context, the whole process) in the middle.
///
/// The text of a seed never changes unless this file does; a recording (`NAME.real`) holds
/// the fingerprint of the text it was made from, so a change here shows as one differing
/// line until the labs re-record.
public enum GeneratorProfile: String, CaseIterable, Sendable {
    /// The iommufd selftest mock (CONFIG_IOMMUFD_TEST): mock devices, selftest vIOMMU, HW queues.
    case selftest
    /// A VFIO cdev behind arm-smmu-v3 (the corpus's `device`): bind, attach, vSTEs,
    /// invalidation, the binding writes.
    case arm = "arm-smmuv3"
}

/// SplitMix64: small, fast, and the same on every platform.
struct SeededRandom {
    var state: UInt64
    init(seed: UInt64) { state = seed &* 0x9E37_79B9_7F4A_7C15 ^ 0xD1B5_4A32_D192_ED03 }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(max(n, 1))) }
    mutating func chance(_ percent: Int) -> Bool { below(100) < percent }
    mutating func pick<T>(_ items: [T]) -> T { items[below(items.count)] }
}

/// FNV-1a 64 over generated text.
struct Fingerprint {
    var value: UInt64 = 0xCBF2_9CE4_8422_2325
    mutating func add(_ text: String) {
        for byte in text.utf8 { value = (value ^ UInt64(byte)) &* 0x100_0000_01B3 }
    }
}

public struct Generator {
    public let profile: GeneratorProfile
    public let seed: UInt64

    public init(profile: GeneratorProfile, seed: UInt64) { self.profile = profile; self.seed = seed }

    /// The case's name for a seed: `s17` (selftest), `a17` (arm-smmuv3).
    public var caseName: String { (profile == .selftest ? "s" : "a") + "\(seed)" }

    /// The profile and seed a generated case's name stands for (`s17`, `a17`).
    public static func origin(ofCase name: String) -> (profile: GeneratorProfile, seed: UInt64)? {
        guard let first = name.first, let seed = UInt64(name.dropFirst()) else { return nil }
        switch first {
        case "s": return (.selftest, seed)
        case "a": return (.arm, seed)
        default: return nil
        }
    }

    /// `case NAME` on line 1, then one call per line: `CASE:LINE` in a recording is line
    /// LINE of this text.
    public func text() -> String {
        var walk = Walk(profile: profile, random: SeededRandom(seed: seed &+ (profile == .selftest ? 0 : 1 << 32)))
        walk.run()
        return "case \(caseName)\n" + walk.lines.map { "  " + $0 + "\n" }.joined()
    }
}

/// What the generator believes exists (it does not know the kernel's answers: a failed
/// call's name is ID 0 to the runner, which makes a wrong id of its own).
enum Kind: CaseIterable { case ioas, paging, parent, nested, viommu, vdevice, veventq, hwQueue, stdev, idev, mockHWPT }

struct Walk {
    let profile: GeneratorProfile
    var random: SeededRandom
    var lines: [String] = []
    var counter = 0
    var live: [(name: String, kind: Kind, context: String?)] = []
    var stale: [String] = []
    var contexts: [String] = []                  // extra contexts by name
    var memfds: [String] = []
    var buffers: [(name: String, size: UInt64)] = []
    var unmapped = false                         // no mmap after a munmap: it could land where the old one was
    var cdevs: [String] = []                     // open VFIO cdevs (arm)
    var eventqs: [String] = []
    var maps: [(ioas: String, iova: UInt64, length: UInt64)] = []
    var virts: [UInt64] = [0x10, 0x20]

    init(profile: GeneratorProfile, random: SeededRandom) { self.profile = profile; self.random = random }

    /// The name a call being written will bind: not yet usable in its own arguments.
    var pending: String?

    mutating func fresh() -> String { counter += 1; return "o\(counter)" }
    mutating func emit(_ line: String) { lines.append(line); pending = nil }

    // MARK: choosing ids

    func names(_ kinds: [Kind], context: String? = nil) -> [String] {
        live.filter { kinds.contains($0.kind) && $0.context == context && $0.name != pending }.map(\.name)
    }

    var anyLive: [String] { live.map(\.name).filter { $0 != pending } }

    /// An id for an argument that wants `kinds`: mostly a live one of those kinds, else a
    /// mutation (a number that is no object, another kind's id, a destroyed one).
    mutating func id(_ kinds: [Kind], valid percent: Int = 80, context: String? = nil) -> String {
        let good = names(kinds, context: context)
        if !good.isEmpty && random.chance(percent) { return random.pick(good) }
        switch random.below(4) {
        case 0: return random.pick(["0", "99", "0xffffffff", "\(counter + 3)"])
        case 1 where !stale.isEmpty: return random.pick(stale)
        case 2 where !anyLive.isEmpty: return random.pick(anyLive)
        default: return good.isEmpty ? (anyLive.isEmpty ? "1" : random.pick(anyLive)) : random.pick(good)
        }
    }

    /// ` fd=CTX` now and then when another context is open (its ids are not this one's).
    mutating func onContext() -> (arg: String, name: String?) {
        guard !contexts.isEmpty, random.chance(35) else { return ("", nil) }
        let c = random.pick(contexts)
        return (" fd=\(c)", c)
    }

    mutating func bind(_ kind: Kind, context: String?) -> String {
        let name = fresh(); live.append((name, kind, context)); pending = name; return name
    }

    // MARK: values

    mutating func flagsHWPT() -> String {
        random.pick(["0", "0", "NEST_PARENT", "NEST_PARENT", "DIRTY_TRACKING", "0x100", "0x5", "0x80000000"])
    }

    mutating func mapFlags() -> String {
        random.chance(75) ? "FIXED_READ_WRITE" : random.pick(["0x1", "0x3", "0x5", "0x17", "0x80000007", "0"])
    }

    mutating func length() -> UInt64 {
        random.chance(70) ? random.pick([0x1000, 0x2000, 0x10000, 0x200000])
            : random.pick([0, 0x800, 0x1800, 0xfff, 0xffffffffffffffff, 0xfffffffffffff000, 0x8000000000000000])
    }

    mutating func iova() -> UInt64 {
        random.chance(70) ? random.pick([0x100000, 0x200000, 0x1000000, 0x1200000, 0x40000000])
            : random.pick([0, 0x800, 0x1000400, 0x7ffff000, 0x80000000, 0xfffffffffffff000, 0xffffffffffffffff, 0x8000000])
    }

    func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }

    // MARK: the walk

    mutating func run() {
        validPrefix(upTo: 1 + random.below(9))
        let steps = profile == .selftest ? 5 + random.below(11) : 4 + random.below(7)
        for _ in 0..<steps { random.chance(35) ? build() : disturb() }
    }

    /// The first `depth` steps of a VMM's own path, every argument right: a context, a
    /// device, an IOAS with memory, a nest parent, a vIOMMU, a vDevice, a nested HWPT, a
    /// vEVENTQ (and a HW queue on the mock).
    mutating func validPrefix(upTo depth: Int) {
        let mock = profile == .selftest
        let ioas = bind(.ioas, context: nil); emit("\(ioas) = ioas_alloc")
        let idev: String
        if mock {
            let m = fresh(); emit("\(m) = mock_domain pt=\(ioas)")
            live += [(m + ".stdev", .stdev, nil), (m + ".idev", .idev, nil), (m + ".hwpt", .mockHWPT, nil)]
            idev = m + ".idev"
        } else {
            let d = fresh(); cdevs.append(d); emit("\(d) = device_open")
            idev = bind(.idev, context: nil); emit("\(idev) = bind dev=\(d)")
        }
        guard depth > 1 else { return }
        if random.chance(60) {
            let mem = fresh(); memfds.append(mem); emit("\(mem) = memfd size=0x400000")
            let iova: UInt64 = random.pick([0x1000000, 0x40000000])
            maps.append((ioas, iova, 0x200000))
            emit("map_file ioas=\(ioas) mem=\(mem) length=0x200000 iova=\(hex(iova)) flags=FIXED_READ_WRITE")
        }
        guard depth > 2 else { return }
        let parent = bind(.parent, context: nil); emit("\(parent) = hwpt_alloc dev=\(idev) pt=\(ioas) flags=NEST_PARENT")
        guard depth > 3 else { return }
        let v = bind(.viommu, context: nil); emit("\(v) = viommu_alloc type=\(mock ? "VIOMMU_SELFTEST" : "VIOMMU_ARM_SMMUV3") dev=\(idev) hwpt=\(parent)")
        guard depth > 4 else { return }
        let virt = random.pick(virts)
        let vd = bind(.vdevice, context: nil); emit("\(vd) = vdevice_alloc viommu=\(v) dev=\(idev) virt=\(hex(virt))")
        guard depth > 5 else { return }
        let nested = bind(.nested, context: nil)
        emit("\(nested) = hwpt_alloc dev=\(idev) pt=\(v) type=\(mock ? "DATA_SELFTEST data=hex:00000000" : "DATA_ARM_SMMUV3 data=le64:\(random.pick(["0x1", "0x9"])),0x0")")
        guard depth > 6 else { return }
        if mock {
            let stdev = idev.dropLast(".idev".count) + ".stdev"
            emit("mock_replace stdev=\(stdev) pt=\(nested)")
        } else {
            emit("attach dev=\(cdevs[0]) pt=\(nested)")
        }
        guard depth > 7 else { return }
        let q = bind(.veventq, context: nil); eventqs.append(q)
        emit("\(q) = veventq_alloc viommu=\(v) type=\(mock ? "VEVENTQ_SELFTEST" : "VEVENTQ_ARM_SMMUV3") depth=8")
        guard depth > 8, mock, let m = maps.first else { return }
        let hq = bind(.hwQueue, context: nil)
        emit("\(hq) = hw_queue_alloc viommu=\(v) type=HW_QUEUE_SELFTEST index=0 iova=\(hex(m.iova)) length=0x1000")
    }

    /// Calls that grow the graph, with valid arguments most of the time.
    mutating func build() {
        let ctx = onContext()
        switch random.below(profile == .selftest ? 12 : 11) {
        case 0, 1:
            let n = bind(.ioas, context: ctx.name); emit("\(n) = ioas_alloc\(ctx.arg)")
        case 2 where profile == .selftest:
            let n = fresh()
            emit("\(n) = mock_domain pt=\(id([.ioas, .paging, .parent], context: ctx.name))\(ctx.arg)")
            live += [(n + ".stdev", .stdev, ctx.name), (n + ".idev", .idev, ctx.name), (n + ".hwpt", .mockHWPT, ctx.name)]
        case 2:
            // arm: attach the cdev to an IOAS or an HWPT (or something else)
            guard let d = cdevs.last else { return build() }
            emit("attach dev=\(d) pt=\(id([.ioas, .paging, .parent, .nested, .viommu]))")
        case 3, 4:
            let flags = flagsHWPT()
            let kind: Kind = flags == "NEST_PARENT" ? .parent : .paging
            let n = bind(kind, context: ctx.name)
            emit("\(n) = hwpt_alloc dev=\(id([.idev], context: ctx.name)) pt=\(id([.ioas], context: ctx.name))" + (flags == "0" ? "" : " flags=\(flags)") + ctx.arg)
        case 5:
            let n = bind(.viommu, context: ctx.name)
            let type = random.chance(80) ? (profile == .selftest ? "VIOMMU_SELFTEST" : "VIOMMU_ARM_SMMUV3") : random.pick(["VIOMMU_SELFTEST", "VIOMMU_ARM_SMMUV3", "0x77", "0"])
            let data = random.chance(85) ? "" : " data=" + random.pick(["hex:00000000", "hex:0000000000000000", "hex:01"])
            emit("\(n) = viommu_alloc type=\(type) dev=\(id([.idev], context: ctx.name)) hwpt=\(id([.parent], context: ctx.name))\(data)\(ctx.arg)")
        case 6:
            let n = bind(.vdevice, context: ctx.name)
            let virt = random.chance(60) ? random.pick(virts) : random.pick([0x30, 0x1100, 0xffffffff, 0x100000000, 0xffffffffffffffff])
            if !virts.contains(virt) { virts.append(virt) }
            emit("\(n) = vdevice_alloc viommu=\(id([.viommu], context: ctx.name)) dev=\(id([.idev], context: ctx.name)) virt=\(hex(virt))\(ctx.arg)")
        case 7:
            let n = nested(ctx)
            _ = n
        case 8:
            let n = bind(.veventq, context: ctx.name); eventqs.append(n)
            let type = random.chance(80) ? (profile == .selftest ? "VEVENTQ_SELFTEST" : "VEVENTQ_ARM_SMMUV3") : random.pick(["0", "0x55", "VEVENTQ_SELFTEST", "VEVENTQ_ARM_SMMUV3"])
            let depth = random.chance(80) ? random.pick([1, 8, 64]) : random.pick([0, 0x80000, 0x80001, 0xffffffff])
            emit("\(n) = veventq_alloc viommu=\(id([.viommu], context: ctx.name)) type=\(type) depth=\(depth)\(ctx.arg)")
        case 9:
            memory(ctx)
        case 10:
            if profile == .selftest {
                let n = bind(.hwQueue, context: ctx.name)
                let ioasMaps = maps.map(\.iova)
                let iova = !ioasMaps.isEmpty && random.chance(70) ? random.pick(ioasMaps) &+ random.pick([0, 0x1000]) : iova()
                // at most one 4 KiB page, page-aligned or inside one page: a queue across a
                // page boundary depends on where the pages happen to be (lab/README.md)
                let (qiova, qlength): (UInt64, UInt64) = random.chance(80) ? (iova & ~0xfff, random.pick([0x1000, 0x1000, 0])) : ((iova & ~0xfff) | 0x800, 0x800)
                emit("\(n) = hw_queue_alloc viommu=\(id([.viommu], context: ctx.name)) type=\(random.chance(85) ? "HW_QUEUE_SELFTEST" : random.pick(["0", "0x1"])) index=\(random.pick([0, 0, 1, 2, 0xffffffff])) iova=\(hex(qiova)) length=\(hex(qlength))\(ctx.arg)")
            } else {
                hwInfo(ctx)
            }
        default:
            if profile == .selftest { hwInfo(ctx) } else { memory(ctx) }
        }
    }

    mutating func nested(_ ctx: (arg: String, name: String?)) -> String {
        let n = bind(.nested, context: ctx.name)
        let pt = id([.parent, .viommu], context: ctx.name)
        let data: String
        let type: String
        if profile == .selftest {
            type = random.chance(85) ? "DATA_SELFTEST" : random.pick(["DATA_ARM_SMMUV3", "0x9", "0"])
            data = random.chance(75) ? "hex:00000000" : random.pick(["hex:", "hex:0000", "hex:0000000000000000", "hex:00000000000000000000000000000000", "hex:07000000"])
        } else {
            type = random.chance(85) ? "DATA_ARM_SMMUV3" : random.pick(["DATA_SELFTEST", "0x9", "0"])
            // vSTE word 0: V (bit 0), Config (bits 3:1): abort 0x1, bypass 0x9, S1 0xb; others wrong
            let word0 = random.chance(70) ? random.pick(["0x1", "0x9", "0x0", "0xb"]) : random.pick(["0x3", "0xf", "0x8000000000000009", "0x19", "0x900000000000001"])
            data = random.chance(80) ? "le64:\(word0),0x0" : random.pick(["le64:\(word0)", "le64:\(word0),0x0,0x0", "le64:\(word0),0x0,0x0,0x0", "hex:", "le64:\(word0),0x1"])
        }
        let flags = random.chance(90) ? "" : " flags=" + random.pick(["NEST_PARENT", "0x100", "DIRTY_TRACKING"])
        emit("\(n) = hwpt_alloc dev=\(id([.idev], context: ctx.name)) pt=\(pt)\(flags) type=\(type) data=\(data)\(ctx.arg)")
        return n
    }

    mutating func hwInfo(_ ctx: (arg: String, name: String?)) {
        let type = random.chance(60) ? "" : " type=" + random.pick(["HW_INFO_SELFTEST", "HW_INFO_ARM_SMMUV3", "0x99", "0"])
        emit("hw_info dev=\(id([.idev], context: ctx.name))\(type)\(ctx.arg)")
    }

    /// memfd / mmap'd buffers and their maps into an IOAS.
    mutating func memory(_ ctx: (arg: String, name: String?)) {
        let choice = random.below(5)
        if choice == 0 && memfds.count < 2 {
            let n = fresh(); memfds.append(n); emit("\(n) = memfd size=\(hex(random.pick([0x200000, 0x400000])))"); return
        }
        if choice == 1 && buffers.count < 2 && !unmapped {
            let n = fresh(); let size: UInt64 = random.pick([0x200000, 0x400000])
            buffers.append((n, size)); emit("\(n) = mmap size=\(hex(size))"); return
        }
        if choice <= 2 && !memfds.isEmpty {
            let ioas = id([.ioas], context: ctx.name)
            let flags = mapFlags()
            let length = length()
            let iova = iova()
            let offset: UInt64 = random.chance(70) ? random.pick([0, 0x1000, 0x200000]) : random.pick([0x800, 0x3ff000, 0xfffffffffffff000, 0x400000])
            let n = fresh()
            if flags == "FIXED_READ_WRITE" { maps.append((ioas, iova, length)) }
            emit("\(n) = map_file ioas=\(ioas) mem=\(random.pick(memfds))" + (offset == 0 ? "" : " offset=\(hex(offset))") + " length=\(hex(length)) iova=\(hex(iova)) flags=\(flags)\(ctx.arg)")
            return
        }
        do {
            let ioas = id([.ioas], context: ctx.name)
            // FIXED only, or flags the kernel refuses before placing: an automatic IOVA for
            // user memory depends on where mmap put it
            let flags = random.chance(80) ? "FIXED_READ_WRITE" : random.pick(["0x1", "0x3", "0x5", "0x80000007", "0x0"])
            var length = length()
            let iova = iova()
            var source = ""
            if profile == .arm {
                // vsmmu-remote refuses (EFAULT) a user range outside the memory it mapped
                // before the kernel sees it: only whole ranges inside a buffer on arm
                guard !buffers.isEmpty else { return }
                let b = random.pick(buffers)
                length = random.pick([0x1000, 0x10000, 0x200000])
                let offset: UInt64 = random.pick([0, 0x1000, 0x100000]) % (b.size - length + 1)
                source = "buf=\(b.name)" + (offset == 0 ? "" : " offset=\(hex(offset & ~0xfff))")
            } else if !buffers.isEmpty && random.chance(85) {
                let offset: UInt64 = random.chance(75) ? random.pick([0, 0x1000, 0x100000]) : random.pick([0x800, 0x3ff000, 0x400000])
                source = "buf=\(random.pick(buffers).name)" + (offset == 0 ? "" : " offset=\(hex(offset))")
            } else {
                source = "va=" + random.pick(["0x1000", "0x0", "0xfffffffffffff000"])
            }
            if flags == "FIXED_READ_WRITE" { maps.append((ioas, iova, length)) }
            emit("map_user ioas=\(ioas) \(source) length=\(hex(length)) iova=\(hex(iova)) flags=\(flags)\(ctx.arg)")
        }
    }

    /// Calls that undo, refuse or break: destroy (referenced, stale, wrong), unmap, closes,
    /// a process exit, the binding writes, invalidation, queries.
    mutating func disturb() {
        let ctx = onContext()
        switch random.below(profile == .selftest ? 10 : 14) {
        case 0, 1, 2:
            let target = id(Kind.allCases, valid: 85, context: ctx.name)
            emit("destroy id=\(target)\(ctx.arg)")
            if let i = live.firstIndex(where: { $0.name == target }), random.chance(50) {
                stale.append(target); live.remove(at: i)
            }
        case 3:
            let ioas = id([.ioas], context: ctx.name)
            let ofIOAS = maps.filter { $0.ioas == ioas }
            if let m = ofIOAS.isEmpty ? maps.first : random.pick(ofIOAS), random.chance(70) {
                let variants: [(UInt64, UInt64)] = [(m.iova, m.length), (m.iova, m.length), (m.iova, m.length / 2), (m.iova &+ 0x800, 0x800), (m.iova, 0x800)]
                let (iova, length) = random.pick(variants)
                emit("unmap ioas=\(ioas) iova=\(hex(iova)) length=\(hex(length))\(ctx.arg)")
            } else {
                let variants: [(UInt64, UInt64)] = [(0, UInt64.max), (0, 0), (0x1000, 0x1000), (UInt64.max, 1), (0x800, 0x800)]
                let (iova, length) = random.pick(variants)
                emit("unmap ioas=\(ioas) iova=\(hex(iova)) length=\(hex(length))\(ctx.arg)")
            }
        case 4:
            emit("iova_ranges ioas=\(id([.ioas], context: ctx.name))\(ctx.arg)")
        case 5:
            if contexts.count < 2 && random.chance(60) {
                let c = fresh(); contexts.append(c); emit("\(c) = iommufd")
            } else if !contexts.isEmpty && random.chance(60) {
                emit("close fd=\(random.pick(contexts))")
            } else if random.chance(40) {
                emit("close")
            } else {
                hwInfo(ctx)
            }
        case 6:
            if let q = eventqs.last, random.chance(70) {
                emit("close_eventq q=\(q)\(ctx.arg)"); eventqs.removeLast()
            } else {
                emit("exit")
                live.removeAll(); contexts.removeAll(); memfds.removeAll(); buffers.removeAll(); cdevs.removeAll(); eventqs.removeAll(); maps.removeAll()
                if profile == .arm && random.chance(70) {
                    let d = fresh(); cdevs.append(d); emit("\(d) = device_open")
                    let idev = bind(.idev, context: nil); emit("\(idev) = bind dev=\(d)")
                }
            }
        case 7:
            if let b = buffers.last, random.chance(40) { emit("munmap buf=\(b.name)"); buffers.removeLast(); unmapped = true } else { memory(ctx) }
        case 8 where profile == .selftest:
            emit("mock_replace stdev=\(id([.stdev], context: ctx.name)) pt=\(id([.ioas, .paging, .parent, .nested, .viommu], context: ctx.name))\(ctx.arg)")
        case 8:
            invalidate(ctx)
        case 9:
            _ = nested(ctx)
        case 10:
            // arm: detach, close, reopen and rebind the cdev
            if let d = cdevs.last {
                switch random.below(4) {
                case 0: emit("detach dev=\(d)")
                case 1:
                    emit("device_close dev=\(d)"); cdevs.removeLast()
                    live.removeAll { $0.kind == .idev }
                default: emit("bind dev=\(d)\(ctx.arg)")
                }
            } else {
                let d = fresh(); cdevs.append(d); emit("\(d) = device_open")
                let idev = bind(.idev, context: ctx.name); emit("\(idev) = bind dev=\(d)\(ctx.arg)")
            }
        case 11, 13:
            bindingWrites()
        case 12:
            invalidate(ctx)
        default:
            build()
        }
    }

    /// The binding writes (arm): often the cdev closes first, so that `unbind` may be
    /// written; never while a cdev is open (vfio-pci's remove waits for it: the write hangs).
    /// A later `device_open` finds the cdev gone (ENOENT) until a probe binds vfio-pci again.
    mutating func bindingWrites() {
        if let d = cdevs.last, random.chance(50) {
            emit("device_close dev=\(d)"); cdevs.removeLast()
            live.removeAll { $0.kind == .idev }
        }
        switch random.below(6) {
        case 0: emit("override driver=" + random.pick(["vfio-pci", "none", "nosuch"]))
        case 1 where cdevs.isEmpty, 2 where cdevs.isEmpty: emit("unbind driver=" + random.pick(["vfio-pci", "vfio-pci", "nosuch"]))
        case 3: emit("probe")
        case 4 where cdevs.isEmpty:
            // a VMM putting the device back: override, unbind, probe, as vsmmu does
            emit("override driver=" + random.pick(["vfio-pci", "none"]))
            emit("unbind driver=vfio-pci")
            emit("probe")
        default: emit("group")
        }
    }

    /// IOMMU_HWPT_INVALIDATE on a vIOMMU (or something else), one ARM command or none.
    mutating func invalidate(_ ctx: (arg: String, name: String?)) {
        // opcodes: CFGI_CD 0x5, CFGI_CD_ALL 0x6, TLBI_NH_ASID 0x11, TLBI_NH_VA 0x12,
        // ATC_INV 0x40 (vSID in bits 63:32), and two the driver does not take
        let opcode: UInt64 = random.pick([0x5, 0x6, 0x11, 0x12, 0x40, 0x30, 0x99])
        let vsid = random.pick(virts)
        let word0 = opcode | (vsid << 32)
        let entryLen = random.chance(80) ? 16 : random.pick([0, 8, 24])
        let entries = entryLen == 0 ? "hex:" : "le64:" + ([hex(word0), "0x0"] + Array(repeating: "0x0", count: max(0, entryLen / 8 - 2))).prefix(max(1, entryLen / 8)).joined(separator: ",")
        let num = random.chance(85) ? "" : " num=0"
        let type = random.chance(90) ? "" : " type=" + random.pick(["0", "0x7"])
        emit("invalidate hwpt=\(id([.viommu, .nested], context: ctx.name)) entry_len=\(entryLen) entries=\(entries)\(num)\(type)\(ctx.arg)")
    }
}
