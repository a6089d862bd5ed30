import ArgumentParser
import Foundation
import VsmmuProvisioning
import VsmmuIPC

struct Handoff: ParsableCommand {
    static let configuration = CommandConfiguration(
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
                    console.print(HandoffMap.localize(map, fds: fds))
                    return 0
                }
            }
            throw CommandError(message: "the agent went away before answering")
        }
        if code != 0 { throw ExitCode(code) }
    }
}

enum HandoffMap {
    /// Replaces each `fdIndex` with `fd`, the number received in this process, and for a
    /// simulated host's stand-ins reads what each fd stands for.
    static func localize(_ text: String, fds: [Int32], pretty: Bool = true) -> String {
        guard let obj = try? JSONSerialization.jsonObject(with: Data(text.utf8)) else { return text }
        func walk(_ v: Any) -> Any {
            if var d = v as? [String: Any] {
                for (k, x) in d { d[k] = walk(x) }
                for key in d.keys where key == "fdIndex" || key == "iommufdFdIndex" {
                    if let i = d[key] as? Int, i < fds.count {
                        let newKey = key == "iommufdFdIndex" ? "iommufdFd" : "fd"
                        d[newKey] = Int(fds[i])
                        d[key] = nil
                        var buf = [UInt8](repeating: 0, count: 256)
                        let n = pread(fds[i], &buf, 256, 0)
                        if n > 0, let s = String(bytes: buf.prefix(n), encoding: .utf8), s.hasPrefix("{\"standsFor\"") {
                            d[newKey == "fd" ? "standIn" : "iommufdStandIn"] = (try? JSONSerialization.jsonObject(with: Data(s.utf8))) ?? s
                        }
                    }
                }
                return d
            }
            if let a = v as? [Any] { return a.map(walk) }
            return v
        }
        let out = walk(obj)
        guard let data = try? JSONSerialization.data(withJSONObject: out, options: pretty ? [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes] : [.sortedKeys, .withoutEscapingSlashes]) else { return text }
        return String(decoding: data, as: UTF8.self)
    }
}
