import VsmmuKernel
import VsmmuPlanner

/// A JSON encoder for journal records that writes bytes as the values encode themselves:
/// no tree of values, no sorted keys (keys come in the order the type encodes them). The
/// journal writes two records per step and Foundation's JSONEncoder made them most of an
/// apply's time; JSONDecoder reads what this writes as it reads JSONEncoder's output
/// (Tests/VsmmuPlannerTests/JournalEncoderTests.swift compares them on every record type).
///
/// Containers are used the way Codable implementations use them, one inside the other:
/// a container is closed when its parent writes its next item, or at the end.
final class JournalEncoder: Encoder {
    // The output, in a buffer of our own: an append is a bounds check and a copy (an
    // Array's append checks uniqueness and capacity through calls, per piece). Unchecked
    // exclusivity: one encoder is used by one thread and no access overlaps another; the
    // runtime's checks on these properties were a fifth of an apply's instructions
    // (docs/live-speed.md §5).
    @exclusivity(unchecked) private var base: UnsafeMutablePointer<UInt8>
    @exclusivity(unchecked) private(set) var count = 0
    @exclusivity(unchecked) private var capacity: Int
    /// What was written so far.
    var bytes: [UInt8] { Array(UnsafeBufferPointer(start: base, count: count)) }

    /// What was written so far, without a copy.
    func withBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(start: base, count: count))
    }

    /// Empties the output (the buffer stays allocated, for the next record).
    func reset() {
        count = 0
        closers.removeAll(keepingCapacity: true)
        hasItems.removeAll(keepingCapacity: true)
    }
    /// The closing byte of each open container, innermost last, and whether it has an item.
    @exclusivity(unchecked) private var closers: [UInt8] = []
    @exclusivity(unchecked) private var hasItems: [Bool] = []

    var codingPath: [any CodingKey] { [] }
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    init(capacity: Int = 4096) {
        self.capacity = max(16, capacity)
        base = .allocate(capacity: self.capacity)
    }

    deinit { base.deallocate() }

    // MARK: the buffer

    @inline(__always) private func reserve(_ n: Int) {
        if count + n > capacity { grow(count + n) }
    }

    private func grow(_ needed: Int) {
        var c = capacity * 2
        while c < needed { c *= 2 }
        let b = UnsafeMutablePointer<UInt8>.allocate(capacity: c)
        b.initialize(from: base, count: count)
        base.deallocate()
        base = b
        capacity = c
    }

    @inline(__always) fileprivate func put(_ b: UInt8) {
        reserve(1)
        base[count] = b
        count += 1
    }

    @inline(__always) fileprivate func put(_ a: UInt8, _ b: UInt8) {
        reserve(2)
        base[count] = a
        base[count + 1] = b
        count += 2
    }

    fileprivate func put(_ p: UnsafeBufferPointer<UInt8>) {
        guard let from = p.baseAddress, p.count > 0 else { return }
        reserve(p.count)
        (base + count).initialize(from: from, count: p.count)
        count += p.count
    }

    fileprivate func put(_ text: String) {
        var text = text
        text.withUTF8 { put($0) }
    }

    /// A literal, as is (no escaping: the callers' literals are JSON already).
    @inline(__always) private func raw(_ s: StaticString) {
        put(UnsafeBufferPointer(start: s.utf8Start, count: s.utf8CodeUnitCount))
    }

    /// One value as one JSON document appended to `bytes`.
    func append<T: Encodable>(_ value: T) throws {
        try value_(value)
        while let c = closers.popLast() { put(c) }
        hasItems.removeAll()
    }

    func appendRaw(_ b: UInt8) { put(b) }

    /// A begin record, written out by hand (one per step: the hottest record): the same
    /// document `append(JournalRecord(seq:phase:.begin, step:))` writes.
    func appendIntent(seq: Int, _ s: JournaledStep) {
        raw(#"{"seq":"#)
        integer(seq)
        raw(#","phase":"begin","step":{"index":"#)
        integer(s.index)
        raw(#","call":"#)
        string(s.call)
        raw(#","resource":"#)
        string(s.resource)
        if let g = s.guest {
            raw(#","guest":"#)
            string(g)
        }
        raw("}}")
    }

    /// A done record, its patches written out by hand for the kinds the executor makes at
    /// every step (devices, vSMMUs, stage 2, IOAS), the others through Codable: the same
    /// document `append(JournalRecord(seq:phase:.done, patches:))` writes.
    func appendOutcome(seq: Int, _ patches: [HoldingPatch]) throws {
        raw(#"{"seq":"#)
        integer(seq)
        raw(#","phase":"done","patches":["#)
        for (i, p) in patches.enumerated() {
            if i > 0 { put(UInt8(ascii: ",")) }
            try patch(p)
        }
        raw("]}")
    }

    private func patch(_ p: HoldingPatch) throws {
        func head(_ kind: StaticString, _ g: String, _ name: String) {
            raw("{\"")
            raw(kind)
            raw("\":{\"_0\":")
            string(g)
            raw(",\"_1\":")
            string(name)
        }
        switch p {
        case .ioas(let g, let id):
            raw("{\"ioas\":{\"_0\":")
            string(g)
            if let id { raw(",\"_1\":"); integer(id) }
        case .guest(let g, let h):
            raw("{\"guest\":{\"_0\":")
            string(g)
            if let h { raw(",\"_1\":"); guest(h) }
        case .device(let g, let d, let h):
            head("device", g, d)
            if let h { raw(",\"_2\":"); device(h) }
        case .stage2(let g, let i, let h):
            head("stage2", g, i)
            if let h { raw(",\"_2\":"); stage2(h) }
        case .memory(let g, let r, let h):
            head("memory", g, r)
            if let h { raw(",\"_2\":"); memory(h) }
        case .vsmmu(let g, let v, let h):
            head("vsmmu", g, v)
            if let h { raw(",\"_2\":"); vsmmu(h) }
        case .originalDriver(let a, .some(.some(let d))):
            // (.some(nil) goes through Codable below: it is written as null.)
            raw("{\"originalDriver\":{\"_0\":")
            address(a)
            raw(",\"_1\":")
            string(d)
        case .originalDriverNone(let a):
            raw("{\"originalDriverNone\":{\"_0\":")
            address(a)
        case .originalDriverUnknown(let a):
            raw("{\"originalDriverUnknown\":{\"_0\":")
            address(a)
        default:
            try nested(p)
            return
        }
        raw("}}")
    }

    // MARK: the holdings, written out (the executor writes them at every step, and whole in each snapshot)

    /// holdings.json: the same document `append(holdings)` writes through Codable.
    func appendHoldings(_ h: Holdings) throws {
        raw("{\"formatVersion\":")
        integer(h.formatVersion)
        raw(",\"guests\":{")
        for (i, (name, g)) in h.guests.enumerated() {
            if i > 0 { raw(",") }
            string(name)
            raw(":")
            guest(g)
        }
        // A dictionary whose keys are neither strings nor Ints: [key, value, ...].
        raw("},\"originalDrivers\":[")
        for (i, (a, d)) in h.originalDrivers.enumerated() {
            if i > 0 { raw(",") }
            address(a)
            raw(",")
            if let d { string(d) } else { null() }
        }
        raw("]")
        if !h.running.isEmpty {
            raw(",\"running\":")
            try nested(h.running)
        }
        if let unknown = h.unknownOriginalDrivers {
            raw(",\"unknownOriginalDrivers\":[")
            for (i, a) in unknown.enumerated() {
                if i > 0 { raw(",") }
                address(a)
            }
            raw("]")
        }
        raw("}")
    }

    private func guest(_ g: GuestHolding) {
        raw("{\"iommufd\":{\"fd\":")
        integer(g.iommufd.fd)
        raw("}")
        field("ioas", g.ioas)
        raw(",\"devices\":{")
        for (i, (name, d)) in g.devices.enumerated() {
            if i > 0 { raw(",") }
            string(name)
            raw(":")
            device(d)
        }
        raw("},\"stage2\":{")
        for (i, (name, s)) in g.stage2.enumerated() {
            if i > 0 { raw(",") }
            string(name)
            raw(":")
            stage2(s)
        }
        raw("},\"memory\":{")
        for (i, (name, m)) in g.memory.enumerated() {
            if i > 0 { raw(",") }
            string(name)
            raw(":")
            memory(m)
        }
        raw("},\"vsmmus\":{")
        for (i, (name, v)) in g.vsmmus.enumerated() {
            if i > 0 { raw(",") }
            string(name)
            raw(":")
            vsmmu(v)
        }
        raw("},\"uncertain\":")
        bool(g.uncertain)
        if let holder = g.holder {
            raw(",\"holder\":")
            string(holder)
        }
        raw("}")
    }

    private func device(_ h: DeviceHolding) {
        raw("{\"source\":")
        string(h.source.description)
        if let c = h.cdev { raw(",\"cdev\":{\"fd\":"); integer(c.fd); raw("}") }
        field("vfioIndex", h.vfioIndex)
        field("mockStdev", h.mockStdev)
        field("devID", h.devID)
        field("attached", h.attached)
        field("owner", h.owner)
        raw("}")
    }

    private func stage2(_ h: Stage2Holding) {
        raw("{\"hwpt\":")
        integer(h.hwpt)
        raw(",\"nestParent\":")
        bool(h.nestParent)
        raw("}")
    }

    private func memory(_ h: MemoryHolding) {
        raw("{\"memory\":{")
        if let f = h.memory.file { raw("\"file\":{\"fd\":"); integer(f.fd); raw("},") }
        raw("\"userVA\":")
        integer(h.memory.userVA)
        raw(",\"size\":")
        integer(h.memory.size)
        raw("},\"backing\":")
        string(h.backing.rawValue)
        raw(",\"iova\":")
        integer(h.iova)
        raw(",\"length\":")
        integer(h.length)
        raw(",\"mapped\":")
        bool(h.mapped)
        raw("}")
    }

    private func vsmmu(_ h: VSMMUHolding) {
        raw("{\"physical\":")
        string(h.physical)
        field("viommu", h.viommu)
        field("viommuType", h.viommuType.rawValue)
        field("abortHWPT", h.abortHWPT)
        field("bypassHWPT", h.bypassHWPT)
        // A dictionary whose keys are neither strings nor Ints: [key, value, ...].
        raw(",\"eventQueues\":[")
        for (i, (t, q)) in h.eventQueues.enumerated() {
            if i > 0 { raw(",") }
            integer(t.rawValue)
            raw(",{\"id\":")
            integer(q.id)
            raw(",\"fd\":{\"fd\":")
            integer(q.fd.fd)
            raw("}}")
        }
        raw("],\"vdevices\":{")
        for (i, (d, vd)) in h.vdevices.enumerated() {
            if i > 0 { raw(",") }
            string(d)
            raw(":{\"id\":")
            integer(vd.id)
            raw(",\"virtID\":")
            integer(vd.virtID)
            raw("}")
        }
        raw("}}")
    }

    private func address(_ a: PCIAddress) {
        // A PCI address is always 12 plain ASCII characters: nothing to escape.
        raw("\"")
        var text = a.description
        text.withUTF8 { put($0) }
        raw("\"")
    }

    private func field(_ name: StaticString, _ v: (some BinaryInteger)?) {
        guard let v else { return }
        raw(#",""#)
        put(UnsafeBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount))
        raw(#"":"#)
        integer(v)
    }

    /// A value through Codable, in the middle of a hand-written record.
    private func nested<T: Encodable>(_ v: T) throws {
        let depth = closers.count
        try value_(v)
        while closers.count > depth { put(closers.removeLast()); hasItems.removeLast() }
    }

    // MARK: writing

    /// Before an item of the container at `level` (1-based): close the containers opened
    /// inside it since, then the separator.
    fileprivate func item(_ level: Int) {
        while closers.count > level {
            put(closers.removeLast())
            hasItems.removeLast()
        }
        if hasItems[level - 1] { put(UInt8(ascii: ",")) } else { hasItems[level - 1] = true }
    }

    fileprivate func open(_ opener: Character, _ closer: Character) -> Int {
        put(opener.asciiValue!)
        closers.append(closer.asciiValue!)
        hasItems.append(false)
        return closers.count
    }

    fileprivate func key(_ level: Int, _ k: some CodingKey) {
        item(level)
        string(k.stringValue)
        put(UInt8(ascii: ":"))
    }

    fileprivate func string(_ s: String) {
        put(UInt8(ascii: "\""))
        var s = s
        s.withUTF8 { u in
            let n = u.count
            var start = 0, i = 0
            while true {
                i = Self.plainRun(u, from: i)
                if i >= n { break }
                let c = u[i]
                if c == 0x22 || c == 0x5C || c < 0x20 {
                    put(UnsafeBufferPointer(rebasing: u[start..<i]))
                    switch c {
                    case 0x22: put(0x5C, 0x22)
                    case 0x5C: put(0x5C, 0x5C)
                    case 0x0A: put(0x5C, UInt8(ascii: "n"))
                    case 0x09: put(0x5C, UInt8(ascii: "t"))
                    case 0x0D: put(0x5C, UInt8(ascii: "r"))
                    default:
                        let hex: StaticString = "0123456789abcdef"
                        put(0x5C, UInt8(ascii: "u")); put(0x30, 0x30); put(hex.utf8Start[Int(c >> 4)], hex.utf8Start[Int(c & 0xF)])
                    }
                    start = i + 1
                }
                i += 1
            }
            put(UnsafeBufferPointer(rebasing: u[start...]))
        }
        put(UInt8(ascii: "\""))
    }

    /// From `i`, skips whole 8-byte words in which no byte needs escaping (no `"`, `\` or
    /// control character: tested on the word at once), and returns where the byte-by-byte
    /// look must resume (`u.count` at the end). Names and resources rarely need escaping.
    @inline(__always) private static func plainRun(_ u: UnsafeBufferPointer<UInt8>, from i: Int) -> Int {
        guard let p = u.baseAddress else { return u.count }
        let raw = UnsafeRawPointer(p)
        let ones: UInt64 = 0x0101_0101_0101_0101, highs: UInt64 = 0x8080_8080_8080_8080
        var i = i
        while i + 8 <= u.count {
            let w = raw.loadUnaligned(fromByteOffset: i, as: UInt64.self)
            let quote = w ^ (ones &* 0x22), backslash = w ^ (ones &* 0x5C)
            // A byte below 0x20, or a zero byte of `quote` / `backslash` (exact as a whole-word test).
            let hit = ((w &- ones &* 0x20) & ~w) | ((quote &- ones) & ~quote) | ((backslash &- ones) & ~backslash)
            if hit & highs != 0 { return i }
            i += 8
        }
        return i < u.count ? i : u.count
    }

    /// Decimal digits written straight into the bytes (String(v) made a string per number).
    fileprivate func integer(_ v: some BinaryInteger) {
        guard v.bitWidth <= 64 else { put(String(v)); return }
        if v < 0 {
            put(UInt8(ascii: "-"))
            digits(UInt64(v.magnitude))
        } else {
            digits(UInt64(v))
        }
    }

    private func digits(_ n: UInt64) {
        if n < 10 { put(0x30 &+ UInt8(n)); return }
        var width = 1, m = n
        while m >= 10 { m /= 10; width += 1 }
        reserve(width)
        var i = count + width, rest = n
        repeat {
            i -= 1
            base[i] = 0x30 &+ UInt8(rest % 10)
            rest /= 10
        } while rest > 0
        count += width
    }

    fileprivate func double(_ v: Double) throws {
        guard v.isFinite else {
            throw EncodingError.invalidValue(v, .init(codingPath: [], debugDescription: "\(v) is not a JSON number"))
        }
        // An integral value prints without ".0", as JSONEncoder writes it.
        if v == v.rounded(), abs(v) < 1e15 { integer(Int64(v)) } else { put("\(v)") }
    }

    fileprivate func bool(_ v: Bool) { if v { raw("true") } else { raw("false") } }
    fileprivate func null() { raw("null") }

    /// A nested value: it opens its own container or writes a single value. One that
    /// writes nothing is an empty object, as for JSONEncoder.
    fileprivate func value_<T: Encodable>(_ v: T) throws {
        let before = count
        try v.encode(to: self)
        if count == before { raw("{}") }
    }

    // MARK: Encoder

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        KeyedEncodingContainer(Keyed<Key>(e: self, level: open("{", "}")))
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer { Unkeyed(e: self, level: open("[", "]")) }

    func singleValueContainer() -> any SingleValueEncodingContainer { Single(e: self) }

    struct Keyed<Key: CodingKey>: KeyedEncodingContainerProtocol {
        let e: JournalEncoder
        let level: Int
        var codingPath: [any CodingKey] { [] }
        mutating func encodeNil(forKey k: Key) throws { e.key(level, k); e.null() }
        mutating func encode(_ v: Bool, forKey k: Key) throws { e.key(level, k); e.bool(v) }
        mutating func encode(_ v: String, forKey k: Key) throws { e.key(level, k); e.string(v) }
        mutating func encode(_ v: Double, forKey k: Key) throws { e.key(level, k); try e.double(v) }
        mutating func encode(_ v: Float, forKey k: Key) throws { e.key(level, k); try e.double(Double(v)) }
        mutating func encode(_ v: Int, forKey k: Key) throws { e.key(level, k); e.integer(v) }
        mutating func encode(_ v: Int8, forKey k: Key) throws { e.key(level, k); e.integer(v) }
        mutating func encode(_ v: Int16, forKey k: Key) throws { e.key(level, k); e.integer(v) }
        mutating func encode(_ v: Int32, forKey k: Key) throws { e.key(level, k); e.integer(v) }
        mutating func encode(_ v: Int64, forKey k: Key) throws { e.key(level, k); e.integer(v) }
        mutating func encode(_ v: UInt, forKey k: Key) throws { e.key(level, k); e.integer(v) }
        mutating func encode(_ v: UInt8, forKey k: Key) throws { e.key(level, k); e.integer(v) }
        mutating func encode(_ v: UInt16, forKey k: Key) throws { e.key(level, k); e.integer(v) }
        mutating func encode(_ v: UInt32, forKey k: Key) throws { e.key(level, k); e.integer(v) }
        mutating func encode(_ v: UInt64, forKey k: Key) throws { e.key(level, k); e.integer(v) }
        mutating func encode<T: Encodable>(_ v: T, forKey k: Key) throws { e.key(level, k); try e.value_(v) }
        // Optionals of primitives skip the generic path (a box and a single-value container each).
        mutating func encodeIfPresent(_ v: String?, forKey k: Key) throws { if let v { e.key(level, k); e.string(v) } }
        mutating func encodeIfPresent(_ v: Bool?, forKey k: Key) throws { if let v { e.key(level, k); e.bool(v) } }
        mutating func encodeIfPresent(_ v: Int?, forKey k: Key) throws { if let v { e.key(level, k); e.integer(v) } }
        mutating func encodeIfPresent(_ v: Int32?, forKey k: Key) throws { if let v { e.key(level, k); e.integer(v) } }
        mutating func encodeIfPresent(_ v: Int64?, forKey k: Key) throws { if let v { e.key(level, k); e.integer(v) } }
        mutating func encodeIfPresent(_ v: UInt32?, forKey k: Key) throws { if let v { e.key(level, k); e.integer(v) } }
        mutating func encodeIfPresent(_ v: UInt64?, forKey k: Key) throws { if let v { e.key(level, k); e.integer(v) } }
        mutating func nestedContainer<N: CodingKey>(keyedBy type: N.Type, forKey k: Key) -> KeyedEncodingContainer<N> {
            e.key(level, k)
            return KeyedEncodingContainer(Keyed<N>(e: e, level: e.open("{", "}")))
        }
        mutating func nestedUnkeyedContainer(forKey k: Key) -> any UnkeyedEncodingContainer {
            e.key(level, k)
            return Unkeyed(e: e, level: e.open("[", "]"))
        }
        mutating func superEncoder() -> any Encoder { e.key(level, Super.key); return e }
        mutating func superEncoder(forKey k: Key) -> any Encoder { e.key(level, k); return e }
    }

    struct Unkeyed: UnkeyedEncodingContainer {
        let e: JournalEncoder
        let level: Int
        private(set) var count = 0
        var codingPath: [any CodingKey] { [] }
        private mutating func next() { e.item(level); count += 1 }
        mutating func encodeNil() throws { next(); e.null() }
        mutating func encode(_ v: Bool) throws { next(); e.bool(v) }
        mutating func encode(_ v: String) throws { next(); e.string(v) }
        mutating func encode(_ v: Double) throws { next(); try e.double(v) }
        mutating func encode(_ v: Float) throws { next(); try e.double(Double(v)) }
        mutating func encode(_ v: Int) throws { next(); e.integer(v) }
        mutating func encode(_ v: Int8) throws { next(); e.integer(v) }
        mutating func encode(_ v: Int16) throws { next(); e.integer(v) }
        mutating func encode(_ v: Int32) throws { next(); e.integer(v) }
        mutating func encode(_ v: Int64) throws { next(); e.integer(v) }
        mutating func encode(_ v: UInt) throws { next(); e.integer(v) }
        mutating func encode(_ v: UInt8) throws { next(); e.integer(v) }
        mutating func encode(_ v: UInt16) throws { next(); e.integer(v) }
        mutating func encode(_ v: UInt32) throws { next(); e.integer(v) }
        mutating func encode(_ v: UInt64) throws { next(); e.integer(v) }
        mutating func encode<T: Encodable>(_ v: T) throws { next(); try e.value_(v) }
        mutating func nestedContainer<N: CodingKey>(keyedBy type: N.Type) -> KeyedEncodingContainer<N> {
            next()
            return KeyedEncodingContainer(Keyed<N>(e: e, level: e.open("{", "}")))
        }
        mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
            next()
            return Unkeyed(e: e, level: e.open("[", "]"))
        }
        mutating func superEncoder() -> any Encoder { next(); return e }
    }

    struct Single: SingleValueEncodingContainer {
        let e: JournalEncoder
        var codingPath: [any CodingKey] { [] }
        mutating func encodeNil() throws { e.null() }
        mutating func encode(_ v: Bool) throws { e.bool(v) }
        mutating func encode(_ v: String) throws { e.string(v) }
        mutating func encode(_ v: Double) throws { try e.double(v) }
        mutating func encode(_ v: Float) throws { try e.double(Double(v)) }
        mutating func encode(_ v: Int) throws { e.integer(v) }
        mutating func encode(_ v: Int8) throws { e.integer(v) }
        mutating func encode(_ v: Int16) throws { e.integer(v) }
        mutating func encode(_ v: Int32) throws { e.integer(v) }
        mutating func encode(_ v: Int64) throws { e.integer(v) }
        mutating func encode(_ v: UInt) throws { e.integer(v) }
        mutating func encode(_ v: UInt8) throws { e.integer(v) }
        mutating func encode(_ v: UInt16) throws { e.integer(v) }
        mutating func encode(_ v: UInt32) throws { e.integer(v) }
        mutating func encode(_ v: UInt64) throws { e.integer(v) }
        mutating func encode<T: Encodable>(_ v: T) throws { try e.value_(v) }
    }

    struct Super: CodingKey {
        static let key = Super(stringValue: "super")
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }
}
