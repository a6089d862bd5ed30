import Synchronization
import VsmmuKernel
import VsmmuModel

/// Topologies parsed, and validated against a host, by what they were made from: the
/// agent's reconcile compiles the same applied records on the same host every interval.
///
/// A parse is reused for the same file path and the same bytes (all parsing reads; the path
/// is in every mark). A validation is reused for the same parse and an equal host
/// description (all validation reads). Only valid results are kept: an invalid file is
/// parsed and reported every time. A few recent files are kept (a host has few topologies).
final class CompiledTopologies: Sendable {
    static let shared = CompiledTopologies()
    static let capacity = 8

    private struct Entry: Sendable {
        var path: String
        var bytes: [UInt8]
        var topology: Topology
        var validated: (host: HostDescription, result: ValidationResult)?
    }

    /// Most recently used first.
    private let entries = Mutex<[Entry]>([])

    /// The topology in `source`, parsed once for these bytes.
    func parse(_ source: SourceText) throws(LoadFailure) -> Topology {
        if let t = entries.withLock({ $0.first { $0.path == source.path && $0.bytes == source.bytes }?.topology }) { return t }
        let t = try Topology.parse(source)
        remember(Entry(path: source.path, bytes: source.bytes, topology: t))
        return t
    }

    /// The topology and its validation against `host` when one was made and was valid.
    func validated(_ source: SourceText, host: HostDescription) -> (Topology, ValidationResult)? {
        entries.withLock { list in
            guard let e = list.first(where: { $0.path == source.path && $0.bytes == source.bytes }),
                  let v = e.validated, v.host == host else { return nil }
            return (e.topology, v.result)
        }
    }

    func remember(_ source: SourceText, _ topology: Topology, host: HostDescription, result: ValidationResult) {
        remember(Entry(path: source.path, bytes: source.bytes, topology: topology, validated: (host, result)))
    }

    private func remember(_ entry: Entry) {
        entries.withLock { list in
            list.removeAll { $0.path == entry.path && $0.bytes == entry.bytes }
            list.insert(entry, at: 0)
            if list.count > Self.capacity { list.removeLast(list.count - Self.capacity) }
        }
    }
}
