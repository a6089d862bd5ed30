import VsmmuKernel

/// A differential-fidelity corpus: short sequences of kernel calls, run on a real kernel
/// and on the simulated kernel, whose printed results must be identical (ids, counts,
/// errnos). Text format, one call per line:
///
///     # comment
///     host examples/hosts/selftest.yaml     (the host the simulated kernel models)
///     device 0000:00:02.0                   (the PCI device `device_open` opens; optional)
///     case destroy-while-referenced
///       ioas = ioas_alloc
///       m = mock_domain pt=ioas             (binds m.stdev, m.hwpt, m.idev)
///       destroy id=ioas                     (EBUSY: the mock's HWPT holds it)
///
/// Values: integers (`12`, `0x1100`), names bound earlier (`ioas`, `m.idev`), named
/// constants (`NEST_PARENT`, see `Corpus.constants`), byte strings `hex:00ff..` and
/// little-endian 64-bit words `le64:0x9,0x0` (a vSTE, an ARM command).
public struct Corpus: Sendable {
    public struct Call: Sendable, Equatable {
        public var line: Int
        public var result: String?
        public var op: String
        public var args: [(key: String, value: String)]
        public static func == (a: Call, b: Call) -> Bool {
            a.line == b.line && a.result == b.result && a.op == b.op && a.args.map(\.key) == b.args.map(\.key) && a.args.map(\.value) == b.args.map(\.value)
        }
    }
    public struct Case: Sendable, Equatable {
        public var name: String
        public var line: Int
        public var calls: [Call]
        /// Made by a `generate` line: its results print as `CASE:LINE OP -> RESULT` (the
        /// arguments are in `vsmmu-fidelity generate PROFILE --seed N`, line LINE).
        public var generated = false
    }

    /// A `generate PROFILE FIRST-LAST` line: the cases of those seeds, and a fingerprint of
    /// their text, which the runner prints first so that a recording made by another
    /// generator does not pass as this one's.
    public struct Generated: Sendable, Equatable {
        public var line: Int
        public var profile: GeneratorProfile
        public var seeds: ClosedRange<UInt64>
        public var fingerprint: UInt64
    }

    public var hostPath: String?
    public var device: PCIAddress?
    public var cases: [Case]
    public var generated: [Generated] = []

    /// Every op the runner knows, with the arguments it requires and those it accepts.
    /// Every op that issues an iommufd ioctl (or binds a cdev to a context) also accepts
    /// `fd=NAME`: a context opened by `NAME = iommufd`; without it, the case's first context.
    static let ops: [String: (required: [String], optional: [String])] = {
        let onContext: [String: (required: [String], optional: [String])] = [
            "ioas_alloc": ([], []),
            "destroy": (["id"], []),
            "iova_ranges": (["ioas"], []),
            "map_file": (["ioas", "mem", "length", "iova", "flags"], ["offset"]),
            // IOMMU_IOAS_MAP from this process's memory: `buf` (an `mmap`) plus `offset`, or a
            // raw user address `va=` (EFAULT once pinned when nothing is mapped there).
            "map_user": (["ioas", "length", "iova", "flags"], ["buf", "offset", "va"]),
            "unmap": (["ioas", "iova", "length"], []),
            "hwpt_alloc": (["dev", "pt"], ["flags", "type", "data"]),
            "hw_info": (["dev"], ["type"]),
            "viommu_alloc": (["type", "dev", "hwpt"], ["data"]),
            "vdevice_alloc": (["viommu", "dev", "virt"], []),
            "veventq_alloc": (["viommu", "type", "depth"], []),
            "close_eventq": (["q"], []),
            "hw_queue_alloc": (["viommu", "type", "index", "iova", "length"], []),
            "mock_domain": (["pt"], []),
            "mock_replace": (["stdev", "pt"], []),
            "bind": (["dev"], []),
            "invalidate": (["hwpt", "entry_len", "entries"], ["type", "num"]),
            // close(2) of a context; later calls naming it get EBADF.
            "close": ([], []),
            "option": (["option"], ["id", "set"]),
        ]
        typealias Shape = (required: [String], optional: [String])
        var all: [String: Shape] = onContext.mapValues { ($0.required, $0.optional + ["fd"]) }
        let other: [String: Shape] = [
            // another /dev/iommu context, named by the result
            "iommufd": ([], []),
            // a process exit: every fd the case holds closes (cdevs, event fds, contexts,
            // memfds) and its mappings go; the case goes on with a fresh first context
            "exit": ([], []),
            "memfd": (["size"], []),
            // private anonymous memory in the runner's process (for `map_user buf=`)
            "mmap": (["size"], []),
            "munmap": (["buf"], []),
            "device_open": ([], []),
            "attach": (["dev", "pt"], []),
            "detach": (["dev"], []),
            "device_close": (["dev"], []),
            // the binding writes on the corpus's `device` (docs/kernel-interface.md §8): each
            // prints the driver and driver_override after the write
            "override": (["driver"], []),
            "unbind": (["driver"], []),
            "probe": ([], []),
            // the device's IOMMU group: its members and their drivers (viable when every
            // member is on a VFIO driver or none)
            "group": ([], []),
            // RLIMIT_MEMLOCK = limit and no CAP_IPC_LOCK until the case ends (no limit: put back)
            "memlock": ([], ["limit"]),
        ]
        for (op, shape) in other { all[op] = shape }
        return all
    }()

    /// Names for the uAPI numbers a corpus uses most (docs/kernel-interface.md §2, §5, §7): the typed
    /// values' C names, with the kind as prefix where the bare name would be ambiguous.
    public static let constants: [String: UInt64] = {
        var c: [String: UInt64] = [:]
        for f in [HWPTAllocFlags.nestParent, .dirtyTracking, .pasid] { c[f.description] = UInt64(f.rawValue) }
        for t in [HWPTDataType.none, .armSMMUv3, .selftest] { c["DATA_" + t.name] = UInt64(t.rawValue) }
        for t in [VIOMMUType.armSMMUv3, .selftest] { c["VIOMMU_" + t.name] = UInt64(t.rawValue) }
        for t in [VEventQType.armSMMUv3, .selftest] { c["VEVENTQ_" + t.name] = UInt64(t.rawValue) }
        for t in [HWQueueType.selftest] { c["HW_QUEUE_" + t.name] = UInt64(t.rawValue) }
        for t in [InvalidateDataType.armSMMUv3] { c["INVALIDATE_" + t.name] = UInt64(t.rawValue) }
        for t in [HWInfoType.armSMMUv3, .selftest] { c["HW_INFO_" + t.name] = UInt64(t.rawValue) }
        c["RLIMIT_MODE"] = UInt64(IommuOption.rlimitMode.rawValue)
        c["HUGE_PAGES"] = UInt64(IommuOption.hugePages.rawValue)
        c["READ_WRITE"] = UInt64(IOASMapFlags([.readable, .writeable]).rawValue)
        c["FIXED_READ_WRITE"] = UInt64(IOASMapFlags([.fixedIOVA, .readable, .writeable]).rawValue)
        return c
    }()

    public struct ParseError: Error, CustomStringConvertible {
        public var line: Int
        public var message: String
        public var description: String { "line \(line): \(message)" }
    }

    public static func seedRange(_ raw: String) -> ClosedRange<UInt64>? {
        let parts = raw.split(separator: "-", maxSplits: 1).map(String.init)
        guard let first = parts.first.flatMap({ UInt64($0) }) else { return nil }
        let last = parts.count == 2 ? UInt64(parts[1]) : first
        guard let last, last >= first else { return nil }
        return first...last
    }

    public static func parse(_ text: String) throws(ParseError) -> Corpus {
        var corpus = Corpus(hostPath: nil, device: nil, cases: [])
        var names: Set<String> = []
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = index + 1
            let body = raw.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
            var words = body.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            guard let first = words.first else { continue }
            switch first {
            case "host":
                guard words.count == 2 else { throw ParseError(line: line, message: "`host` takes one path") }
                corpus.hostPath = words[1]
            case "device":
                guard words.count == 2, let address = PCIAddress(words[1]) else { throw ParseError(line: line, message: "`device` takes one PCI address") }
                corpus.device = address
            case "generate":
                guard words.count == 3, let profile = GeneratorProfile(rawValue: words[1]), let seeds = Self.seedRange(words[2]) else {
                    throw ParseError(line: line, message: "`generate` takes a profile (\(GeneratorProfile.allCases.map(\.rawValue).joined(separator: ", "))) and seeds FIRST-LAST")
                }
                var fingerprint = Fingerprint()
                for seed in seeds {
                    let text = Generator(profile: profile, seed: seed).text()
                    fingerprint.add(text)
                    var sub: Corpus
                    do { sub = try parse(text) } catch { throw ParseError(line: line, message: "seed \(seed) generated a bad line \(error.line): \(error.message)") }
                    for var c in sub.cases {
                        if !names.insert(c.name).inserted { throw ParseError(line: line, message: "case '\(c.name)' is defined twice") }
                        c.generated = true
                        corpus.cases.append(c)
                    }
                }
                corpus.generated.append(Generated(line: line, profile: profile, seeds: seeds, fingerprint: fingerprint.value))
            case "case":
                guard words.count == 2 else { throw ParseError(line: line, message: "`case` takes one name") }
                if !names.insert(words[1]).inserted { throw ParseError(line: line, message: "case '\(words[1])' is defined twice") }
                corpus.cases.append(Case(name: words[1], line: line, calls: []))
            default:
                guard !corpus.cases.isEmpty else { throw ParseError(line: line, message: "a call outside any `case`") }
                var result: String?
                if words.count >= 3, words[1] == "=" { result = words[0]; words.removeFirst(2) }
                let op = words.removeFirst()
                guard let shape = ops[op] else {
                    throw ParseError(line: line, message: "unknown op '\(op)' (known: \(ops.keys.sorted().joined(separator: ", ")))")
                }
                var args: [(key: String, value: String)] = []
                for word in words {
                    guard let eq = word.firstIndex(of: "="), eq != word.startIndex, word.index(after: eq) != word.endIndex else {
                        throw ParseError(line: line, message: "argument '\(word)' is not key=value")
                    }
                    let key = String(word[..<eq])
                    guard shape.required.contains(key) || shape.optional.contains(key) else {
                        throw ParseError(line: line, message: "\(op) takes no argument '\(key)'")
                    }
                    args.append((key, String(word[word.index(after: eq)...])))
                }
                for key in shape.required where !args.contains(where: { $0.key == key }) {
                    throw ParseError(line: line, message: "\(op) needs \(key)=")
                }
                corpus.cases[corpus.cases.count - 1].calls.append(Call(line: line, result: result, op: op, args: args))
            }
        }
        return corpus
    }
}
