import Foundation
import VsmmuFiles
import VsmmuKernel

/// The host a state directory was made from (docs/contract.md §7: a state directory
/// belongs to that host). Kept in `sim/origin.json` when the simulated kernel is first
/// created: a later `--host` must describe the same host, and a command without `--host`
/// must not take a simulated state directory's records to the live kernel.
public struct HostOrigin: Codable, Equatable {
    /// The file the simulated host was created from, as the user named it.
    var file: String
    /// The host's `metadata.name`.
    var name: String
    /// FNV-1a of the description as vsmmu renders it (the same host, whatever its layout).
    var digest: String

    static let fileName = "origin.json"

    init(file: String, host: HostDescription) {
        self.file = file
        name = host.name
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in host.renderYAML().utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        digest = String(h, radix: 16)
    }

    /// Whether `stateDir` holds a simulated kernel, and what it was made from (nil: made
    /// by a vsmmu that did not record it).
    static func recorded(stateDir: String) -> (simulated: Bool, origin: HostOrigin?) {
        guard let dir = try? StateDirectory(stateDir, create: false), let sim = try? dir.subdirectory("sim", create: false),
              sim.exists("kernel.json") else { return (false, nil) }
        let origin = (try? sim.read(fileName)).flatMap { $0 }.flatMap { try? JSONDecoder().decode(HostOrigin.self, from: Data($0)) }
        return (true, origin)
    }

    /// Whether `stateDir` holds a simulated host already.
    public static func holdsSimulatedHost(stateDir: String) -> Bool { recorded(stateDir: stateDir).simulated }

    static func save(_ origin: HostOrigin, stateDir: String) {
        guard let dir = try? StateDirectory(stateDir), let sim = try? dir.subdirectory("sim"),
              let data = try? JSONEncoder().encode(origin) else { return }
        try? sim.writeAtomically(fileName, Array(data))
    }

    /// Refuses a host other than the one `stateDir` was made from; records it the first time.
    static func check(hostFile: String, host: HostDescription, stateDir: String) throws {
        let given = HostOrigin(file: hostFile, host: host)
        let (simulated, recorded) = recorded(stateDir: stateDir)
        guard simulated, let recorded else {
            // A new state directory, or one from before origins were recorded: this host is its origin.
            save(given, stateDir: stateDir)
            return
        }
        guard recorded.name != given.name || recorded.digest != given.digest else { return }
        let what = recorded.name != given.name
            ? "\(hostFile) describes host \(given.name)"
            : "\(hostFile) describes host \(given.name) differently from \(recorded.file) when the state was made"
        throw CommandError(.state, "the state directory \(stateDir) was made from host \(recorded.name) (--host \(recorded.file)), but \(what); nothing was changed",
                           hint: "use --host \(recorded.file) with this state directory, or start over with a new one: --state-dir NEW_DIR (or destroy what it holds and remove \(stateDir))")
    }

    /// Refuses the live kernel for a state directory that holds a simulated host.
    public static func checkLive(stateDir: String) throws {
        let (simulated, recorded) = recorded(stateDir: stateDir)
        guard simulated else { return }
        throw CommandError(.state, "the state directory \(stateDir) holds a simulated host\(recorded.map { " (\($0.name))" } ?? ""), but no --host was given: its records do not describe this machine's kernel; nothing was changed",
                           hint: "add --host \(recorded?.file ?? "FILE") (or VSMMU_HOST), or use another --state-dir for this machine")
    }
}
