import Dispatch
import Foundation
import VsmmuFiles
import VsmmuIPC

/// What the agent grants one client (issue 13): a client that connects and sends
/// nothing, sends a byte now and then, sends a huge line, sends fds, or never reads its
/// replies costs a bounded amount and is dropped. README "The agent's limits".
enum AgentLimits {
    /// Connections served at once; further clients wait in the listen backlog.
    static let connections = 64
    /// Seconds a client has to send its whole request line (VSMMU_AGENT_REQUEST_TIMEOUT
    /// shortens it for tests).
    static let requestSeconds = Environment.value("VSMMU_AGENT_REQUEST_TIMEOUT").flatMap(Double.init).flatMap { $0 > 0 ? $0 : nil } ?? 30
    /// Seconds one reply write may block on a client that stops reading.
    static let replySeconds = 30.0
    /// Longest request line (a topology of 32 MiB at most, in base64, fits).
    static let requestBytes = Channel.maxLine

    /// Applies the limits to a connection just accepted.
    static func prepare(_ c: Channel) {
        c.acceptsFDs = false
        c.maxLineBytes = requestBytes
        c.lineTimeout = requestSeconds
        c.setSendTimeout(replySeconds)
    }
}

extension AgentServer {
    /// Accepts and serves connections, `AgentLimits.connections` at a time (one thread
    /// each), until the listener is shut down.
    func serveConnections(_ listener: Listener) {
        let slots = DispatchSemaphore(value: AgentLimits.connections)
        while true {
            slots.wait()   // a slot first: a waiting client stays in the backlog, costing no thread
            guard let channel = listener.accept(), !stopping else { slots.signal(); break }
            AgentLimits.prepare(channel)
            Thread.detachNewThread { [self] in
                handle(channel)
                slots.signal()
            }
        }
    }
}
