import Foundation
import VsmmuFiles

/// The topology last applied on this state directory, kept so that what only vsmmu can do
/// later (re-prepare a guest whose VMM exited, reconcile with --reconcile=fix) applies the
/// same file: `applied-topology.yaml` and `.path` (the name the user gave it, for
/// FILE:LINE:COL in messages), reached through the checked state directory (never a link).
public enum AppliedTopology {
    static let base = "applied-topology"
    /// Where an agent of an earlier vsmmu kept it.
    static let legacyBase = "agent-topology"

    public static func save(stateDir: String, path: String, bytes: [UInt8]) {
        guard let dir = try? StateDirectory(stateDir) else { return }
        try? dir.writeAtomically(base + ".yaml", bytes)
        try? dir.writeAtomically(base + ".path", Array(path.utf8))
        for suffix in [".yaml", ".path"] { try? dir.remove(legacyBase + suffix) }
    }

    public static func load(stateDir: String) -> (path: String, bytes: [UInt8])? {
        guard let dir = try? StateDirectory(stateDir, create: false) else { return nil }
        for b in [base, legacyBase] {
            guard let bytes = (try? dir.read(b + ".yaml")).flatMap({ $0 }) else { continue }
            let path = (try? dir.read(b + ".path")).flatMap { $0 }.map { String(decoding: $0, as: UTF8.self) }
            return (path ?? "applied topology", bytes)
        }
        return nil
    }

    /// After a destroy of that topology: nothing is to be re-applied any more.
    public static func forget(stateDir: String) {
        guard let dir = try? StateDirectory(stateDir, create: false) else { return }
        for b in [base, legacyBase] { for suffix in [".yaml", ".path"] { try? dir.remove(b + suffix) } }
    }
}
