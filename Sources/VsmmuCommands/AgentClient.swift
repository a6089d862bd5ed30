import Foundation
import VsmmuProvisioning
import VsmmuIPC
import VsmmuPlanner

/// The CLI side of the agent's socket: send one request, print what comes back, exit
/// with the agent's status (the same as an in-process run).
struct AgentClient {
    var path: String

    struct Envelope: Codable {
        var version = AgentProtocol.version
        var request: Request?
        var handoff: String?
        var launch: LaunchRequest?
    }

    struct Reply: Codable {
        var out: String?
        var err: String?
        var exit: Int32?
        var fingerprint: String?
        var savedPlan: String?
        var handoff: JSONText?
        var launch: LaunchReply?
    }

    func connect() throws -> Channel {
        do { return try Channel.connect(path) } catch {
            throw CommandError(message: "no vsmmu agent is running at \(path) (\(error))",
                               hint: "start it: systemctl start vsmmu, or `vsmmu agent --socket \(path)`; with --host FILE and no --socket, vsmmu runs in-process on a simulated host")
        }
    }

    /// One request/response exchange; stdout/stderr lines are printed as they come.
    func exchange(_ request: Request, console: Console) throws -> Reply {
        let channel = try connect()
        let line = String(decoding: try JSONEncoder().encode(Envelope(request: request)), as: UTF8.self)
        // Even if sending fails, the agent may have answered (a refusal comes first).
        let sent = channel.send(line)
        while let l = channel.readLine() {
            guard let reply = try? JSONDecoder().decode(Reply.self, from: Data(l.utf8)) else { continue }
            if let o = reply.out { console.write(o) }
            if let e = reply.err { console.errorRaw(e) }
            if reply.exit != nil { return reply }
        }
        throw CommandError(message: sent ? "the agent at \(path) went away before answering" : "the agent at \(path) closed the connection")
    }

    func run(_ request: Request, console: Console, savePlanTo: String?) throws -> Int32 {
        var request = request
        // Confirmation happens here, where the terminal is: plan (dry run), ask, then apply
        // only that plan (the agent refuses if the state moved in between).
        if (request.command == .apply || request.command == .destroy) && !request.autoApprove && !request.dryRun && isatty(0) == 1 {
            var dry = request
            dry.dryRun = true
            let planned = try exchange(dry, console: console)
            guard planned.exit == 0, let fingerprint = planned.fingerprint else { return planned.exit ?? 1 }
            guard Dispatch.askYes(console) else {
                console.print("Cancelled: nothing was changed.")
                return 1
            }
            request.dryRun = false
            request.expectFingerprint = fingerprint
        }
        let reply = try exchange(request, console: console)
        if let savePlanTo, let b64 = reply.savedPlan, let data = Data(base64Encoded: b64) {
            try SavedPlan.write(data: data, to: savePlanTo)
            console.error("Saved the plan to \(savePlanTo). Apply exactly this plan with: vsmmu apply \(savePlanTo) --socket \(path)")
        }
        return reply.exit ?? 1
    }
}

/// A JSON document carried as text inside a reply (kept verbatim).
struct JSONText: Codable {
    var text: String
    init(_ text: String) { self.text = text }
    init(from decoder: Decoder) throws { text = try decoder.singleValueContainer().decode(String.self) }
    func encode(to encoder: Encoder) throws { var c = encoder.singleValueContainer(); try c.encode(text) }
}

enum AgentProtocol {
    static let version = 1
    static let defaultSocket = "/run/vsmmu/agent.sock"

    /// --socket, else $VSMMU_SOCKET, else the default path.
    static func socket(_ explicit: String?) -> String {
        if let explicit { return explicit }
        if let env = Environment.nonEmpty("VSMMU_SOCKET") { return env }
        return defaultSocket
    }
}
