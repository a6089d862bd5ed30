import ArgumentParser
import Foundation
import VsmmuProvisioning

struct Reconcile: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reconcile",
        abstract: "Ask the agent to re-observe the kernel now (and fix drift if it runs with --reconcile=fix).",
        discussion: """
        The agent compares the kernel with the last topology it applied: host-level state \
        (bindings, cdev owners) and the objects it holds. Drift is printed; with \
        --reconcile=fix the agent re-applies.

        Exit status: 0 no drift, 2 drift found, 1 error.

        Example:
          vsmmu reconcile --socket /run/vsmmu/agent.sock
        """)

    @Option(help: ArgumentHelp("The agent's socket (or VSMMU_SOCKET).", valueName: "PATH"))
    var socket: String?

    func run() throws {
        let console = Console.standard()
        let code = try runReporting(console) {
            let path = AgentProtocol.socket(socket)
            let reply = try AgentClient(path: path).exchange(Request(.reconcile), console: console)
            if reply.exit == 0 { console.print("No drift: the kernel holds what the last applied topology asks for.") }
            return reply.exit ?? 1
        }
        if code != 0 { throw ExitCode(code) }
    }
}
