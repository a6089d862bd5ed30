import Glibc

/// One environment variable, read with getenv(3): `ProcessInfo.environment` copies the
/// whole environment into a dictionary on every use, which a client start pays for
/// several times (docs/live-speed.md §1).
enum Environment {
    static func value(_ name: String) -> String? {
        getenv(name).map { String(cString: $0) }
    }

    /// Set and not empty.
    static func nonEmpty(_ name: String) -> String? {
        value(name).flatMap { $0.isEmpty ? nil : $0 }
    }
}
