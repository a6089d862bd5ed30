import Foundation

/// The topology last applied on this state directory, kept so that what only vsmmu can do
/// later (re-prepare a guest whose VMM exited, reconcile with --reconcile=fix) applies the
/// same file: `<state>/applied-topology.yaml` and `.path` (the name the user gave it, for
/// FILE:LINE:COL in messages).
public enum AppliedTopology {
    static func base(_ stateDir: String) -> String { stateDir + "/applied-topology" }
    /// Where an agent of an earlier vsmmu kept it.
    static func legacyBase(_ stateDir: String) -> String { stateDir + "/agent-topology" }

    public static func save(stateDir: String, path: String, bytes: [UInt8]) {
        let b = base(stateDir)
        try? Data(bytes).write(to: URL(fileURLWithPath: b + ".yaml"), options: .atomic)
        try? Data(path.utf8).write(to: URL(fileURLWithPath: b + ".path"), options: .atomic)
        for suffix in [".yaml", ".path"] { try? FileManager.default.removeItem(atPath: legacyBase(stateDir) + suffix) }
    }

    public static func load(stateDir: String) -> (path: String, bytes: [UInt8])? {
        for b in [base(stateDir), legacyBase(stateDir)] {
            guard let data = FileManager.default.contents(atPath: b + ".yaml") else { continue }
            let path = (try? String(contentsOfFile: b + ".path", encoding: .utf8)) ?? "applied topology"
            return (path, [UInt8](data))
        }
        return nil
    }

    /// After a destroy of that topology: nothing is to be re-applied any more.
    public static func forget(stateDir: String) {
        for b in [base(stateDir), legacyBase(stateDir)] {
            for suffix in [".yaml", ".path"] { try? FileManager.default.removeItem(atPath: b + suffix) }
        }
    }
}
