import ArgumentParser
import Foundation
import VsmmuProvisioning
import VsmmuIPC

struct Handoff: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "handoff",
        abstract: "Receive a guest's prepared iommufd context from the agent (for the VMM).",
        discussion: """
        Connects to the agent, asks for guest NAME and receives over SCM_RIGHTS its iommufd \
        fd, VFIO device fds, vEVENTQ fds and guest-RAM memfds, with a JSON map of every \
        object id (IOAS, stage-2 HWPTs, vIOMMUs, vDevices with vSIDs, nested HWPTs, \
        vEVENTQs). Prints the map with `fd` set to the fd numbers received here.

        Example:
          vsmmu handoff --guest vm1 --socket /run/vsmmu/agent.sock
        """)

    @Option(help: "The guest.")
    var guest: String

    @Option(help: ArgumentHelp("The agent's socket (or VSMMU_SOCKET).", valueName: "PATH"))
    var socket: String?

    func run() throws {
        let console = Console.standard()
        let code = try runReporting(console) {
            let path = AgentProtocol.socket(socket)
            let client = AgentClient(path: path)
            let channel = try client.connect()
            let line = String(decoding: try JSONEncoder().encode(AgentClient.Envelope(handoff: guest)), as: UTF8.self)
            channel.send(line)
            var map: String?
            var fds: [Int32] = []
            while let l = channel.readLine() {
                guard let r = try? JSONDecoder().decode(AgentClient.Reply.self, from: Data(l.utf8)) else { continue }
                if let e = r.err { console.errorRaw(e) }
                if let h = r.handoff { map = h.text; fds = channel.takeReceivedFDs() }
                if let exit = r.exit {
                    guard exit == 0, let map else { return exit }
                    console.print(try HandoffMap.printable(map, fds: fds))
                    return 0
                }
            }
            throw CommandError(message: "the agent went away before answering")
        }
        if code != 0 { throw ExitCode(code) }
    }
}

enum HandoffMap {
    /// The map as the agent sent it, its fd fields (indexes into the fds received) turned
    /// into the fd numbers here; `fds` nil: a simulated host's map, numbers kept.
    static func localize(_ text: String, fds: [Int32]?) throws -> AdoptMap {
        guard let map = try? JSONDecoder().decode(AdoptMap.self, from: Data(text.utf8)) else {
            throw CommandError(message: "the agent's map is not an adopt map of format \(AdoptMap.currentFormat)")
        }
        guard let fds else { return map }
        return map.renumbered { i in i >= 0 && Int(i) < fds.count ? fds[Int(i)] : -1 }
    }

    /// What `vsmmu handoff` prints: the localized map and, on a simulated host (whose fds
    /// are stand-in memfds), what each received fd stands for.
    static func printable(_ text: String, fds: [Int32]) throws -> String {
        let map = try localize(text, fds: fds)
        guard map.simulated else { return map.json(pretty: true) }
        var doc = (try? JSONSerialization.jsonObject(with: Data(map.json().utf8)) as? [String: Any]) ?? [:]
        var standIns: [String: Any] = [:]
        for fd in fds {
            var buf = [UInt8](repeating: 0, count: 256)
            let n = pread(fd, &buf, 256, 0)
            if n > 0, let s = String(bytes: buf.prefix(n), encoding: .utf8), let o = try? JSONSerialization.jsonObject(with: Data(s.utf8)) { standIns[String(fd)] = o }
        }
        doc["standIns"] = standIns
        let data = (try? JSONSerialization.data(withJSONObject: doc, options: [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes])) ?? Data()
        return String(decoding: data, as: UTF8.self)
    }
}
