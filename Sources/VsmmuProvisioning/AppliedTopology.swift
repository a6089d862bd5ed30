import Foundation
import VsmmuFiles

/// The topologies last applied on this state directory, one per `metadata.name` (several
/// topologies share a host, one per VM: docs/contract.md §7), kept so that what only vsmmu
/// can do later (re-prepare a guest whose VMM exited, reconcile with --reconcile=fix)
/// applies the same file, and so that an error about a guest another topology owns can name
/// its file. `applied/KEY.yaml` and `.path` (the name the user gave it, for FILE:LINE:COL),
/// reached through the checked state directory (never a link).
public enum AppliedTopology {
    static let directory = "applied"
    /// Where vsmmu kept the one applied topology before several could share a host, and
    /// where an agent of an earlier vsmmu kept it.
    static let legacyBases = ["applied-topology", "agent-topology"]

    public struct Record: Sendable {
        public var path: String
        public var bytes: [UInt8]
    }

    /// A file name for a topology's name, which is free text: readable when it is safe.
    static func key(_ name: String) -> String {
        let safe = name.utf8.count <= 100 && name.first.map { $0.isLetter || $0.isNumber } == true
            && name.unicodeScalars.allSatisfy { $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || "._-".unicodeScalars.contains($0)) }
        if safe { return name }
        return "x-" + name.utf8.prefix(100).map { String(format: "%02x", $0) }.joined()
    }

    public static func save(stateDir: String, name: String, path: String, bytes: [UInt8]) {
        guard let dir = try? StateDirectory(stateDir), let sub = try? dir.subdirectory(directory) else { return }
        try? sub.writeAtomically(key(name) + ".yaml", bytes)
        try? sub.writeAtomically(key(name) + ".path", Array(path.utf8))
    }

    public static func load(stateDir: String, name: String) -> Record? {
        guard let dir = try? StateDirectory(stateDir, create: false),
              let sub = try? dir.subdirectory(directory, create: false) else { return nil }
        return read(sub, key(name))
    }

    /// Every topology applied here, in file-name order.
    public static func all(stateDir: String) -> [Record] {
        guard let dir = try? StateDirectory(stateDir, create: false),
              let sub = try? dir.subdirectory(directory, create: false),
              let names = try? FileManager.default.contentsOfDirectory(atPath: sub.path) else { return [] }
        return names.sorted().filter { $0.hasSuffix(".yaml") }.compactMap { read(sub, String($0.dropLast(5))) }
    }

    static func read(_ dir: StateDirectory, _ base: String) -> Record? {
        guard let bytes = (try? dir.read(base + ".yaml")).flatMap({ $0 }) else { return nil }
        let path = (try? dir.read(base + ".path")).flatMap { $0 }.map { String(decoding: $0, as: UTF8.self) }
        return Record(path: path ?? "applied topology", bytes: bytes)
    }

    /// After a destroy of that topology: nothing of it is to be re-applied any more.
    public static func forget(stateDir: String, name: String) {
        guard let dir = try? StateDirectory(stateDir, create: false),
              let sub = try? dir.subdirectory(directory, create: false) else { return }
        for suffix in [".yaml", ".path"] { try? sub.remove(key(name) + suffix) }
    }

    /// Moves the single record an earlier vsmmu kept under its topology's name (`name`
    /// parses it; nil: unreadable, left where it is).
    public static func migrateLegacy(stateDir: String, name: (Record) -> String?) {
        guard let dir = try? StateDirectory(stateDir, create: false) else { return }
        for b in legacyBases {
            guard let r = read(dir, b), let n = name(r) else { continue }
            if load(stateDir: stateDir, name: n) == nil { save(stateDir: stateDir, name: n, path: r.path, bytes: r.bytes) }
            for suffix in [".yaml", ".path"] { try? dir.remove(b + suffix) }
        }
    }
}
