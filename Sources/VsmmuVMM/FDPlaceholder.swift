/// The one naming of the fds a VMM receives at a guest's handover, written `{vsmmu-GUEST-THING}`
/// in `qemu-args --fds` output and replaced by the real fd numbers when the VMM is started
/// (`vsmmu launch`). QEMU takes only a number on its command line: `fd=` of `-object iommufd`
/// and of `-device vfio-pci` goes through `monitor_fd_param`, which resolves a name only from
/// a monitor's `getfd`, never on the command line; a memfd becomes a file with
/// `mem-path=/proc/self/fd/N`. The braces cannot be mistaken for anything QEMU or a shell
/// expands inside `$(...)`.
public enum FDPlaceholder {
    /// What an fd is.
    public enum Thing: Hashable, Sendable {
        case iommufd             // the guest's fresh /dev/iommu fd
        case device(String)      // a device's VFIO cdev, by the device's name in the topology
        case memory(String)      // a memory region's memfd (or hugetlbfs file), by its name
        case eventQueue(vsmmu: String, type: UInt32)   // a vEVENTQ fd (`--vmm adopt` only)

        var suffix: String {
            switch self {
            case .iommufd: "iommufd"
            case .device(let n), .memory(let n): n
            case .eventQueue(let v, let t): "\(v)-veventq\(t)"
            }
        }
    }

    static let prefix = "vsmmu-"

    /// `vsmmu-vm1-gpu0`: the key of `substitute`'s numbers, the fd group name libvirt is given.
    public static func name(guest: String, thing: Thing) -> String { prefix + guest + "-" + thing.suffix }

    /// `{vsmmu-vm1-gpu0}`: how the name stands in an argument.
    public static func token(guest: String, thing: Thing) -> String { "{" + name(guest: guest, thing: thing) + "}" }

    /// Every fd a guest's handover passes, named. Fails when two would share a name (a device
    /// called `iommufd`, or a device and a memory region of the same name).
    public static func names(guest: String, devices: [String], memory: [String]) throws(Collision) -> [String: Thing] {
        var out: [String: Thing] = [:]
        for t in [Thing.iommufd] + devices.map(Thing.device) + memory.map(Thing.memory) {
            let n = name(guest: guest, thing: t)
            if let other = out[n] { throw Collision(name: n, first: other, second: t) }
            out[n] = t
        }
        return out
    }

    /// Each `{NAME}` whose NAME is a key of `numbers` replaced by its number. A `{vsmmu-…}`
    /// left over (no number given for it) is an error naming every one.
    public static func substitute(in args: [String], numbers: [String: Int32]) throws(Unresolved) -> [String] {
        var left: [String] = []
        let out = args.map { arg -> String in
            var s = arg
            for (name, fd) in numbers { s = s.replacing("{" + name + "}", with: String(fd)) }
            left += unresolved(in: s)
            return s
        }
        if !left.isEmpty {
            throw Unresolved(names: left.reduce(into: []) { if !$0.contains($1) { $0.append($1) } }, available: numbers.keys.sorted())
        }
        return out
    }

    /// The `{vsmmu-…}` names in one argument.
    public static func unresolved(in arg: String) -> [String] {
        var found: [String] = []
        var rest = Substring(arg)
        while let open = rest.firstRange(of: "{" + prefix) {
            guard let close = rest[open.upperBound...].firstIndex(of: "}") else { break }
            found.append(String(rest[rest.index(after: open.lowerBound)..<close]))
            rest = rest[rest.index(after: close)...]
        }
        return found
    }

    /// Placeholders no fd was given for: the command was written for another guest, or
    /// names an fd this hand-over does not pass.
    public struct Unresolved: Error, Sendable, CustomStringConvertible {
        public var names: [String]
        public var available: [String]
        public var description: String {
            "the command names " + names.map { "{\($0)}" }.joined(separator: ", ")
                + ", which " + (names.count == 1 ? "is" : "are") + " no fd of this hand-over"
        }
        public var hint: String { "its fds: " + available.map { "{\($0)}" }.joined(separator: ", ") }
    }

    public struct Collision: Error, Sendable, CustomStringConvertible {
        public var name: String
        public var first: Thing
        public var second: Thing
        public var description: String {
            "\(Self.what(first)) and \(Self.what(second)) would share the fd placeholder {\(name)}; rename one of them"
        }
        static func what(_ t: Thing) -> String {
            switch t {
            case .iommufd: "the guest's iommufd"
            case .device(let n): "device '\(n)'"
            case .memory(let n): "memory region '\(n)'"
            case .eventQueue(let v, let t): "vSMMU '\(v)''s vEVENTQ of type \(t)"
            }
        }
    }
}
