import ArgumentParser
import Foundation
import VsmmuProvisioning
import VsmmuExecutor
import VsmmuPlanner

/// Runs a request in-process (with --host and no --socket) or through the agent.
enum Dispatch {
    /// `socket`: go to that agent whatever the options say.
    static func run(_ request: Request, file: String?, kernel: KernelOptions, savePlanTo: String? = nil, socket explicit: String? = nil) throws -> Int32 {
        let console = Console.standard()
        return try runReporting(console) {
            var request = request
            if let file { try request.attach(file: file) }
            if let socket = explicit ?? kernel.agentSocket {
                // A state directory named with no --host: the request would go to the live
                // kernel's agent, never to the simulated host that directory holds.
                if kernel.host == nil, let dir = kernel.stateDir { try HostOrigin.checkLive(stateDir: dir) }
                if kernel.host == nil, !FileManager.default.fileExists(atPath: "/dev/iommu"), kernel.socket == nil,
                   Environment.value("VSMMU_SOCKET") == nil {
                    throw CommandError(message: "this kernel has no /dev/iommu (it was built without CONFIG_IOMMUFD), so vsmmu cannot work on it",
                                       hint: "try vsmmu on a simulated host: --host examples/hosts/grace-2smmu-cmdqv.yaml")
                }
                return try AgentClient(path: socket).run(request, console: console, savePlanTo: savePlanTo)
            }
            let session: Session
            do { session = try Session.open(kernel) } catch let busy as StateLock.Busy {
                throw CommandError(message: "\(busy)", hint: "if a vsmmu agent serves this state directory, talk to it with --socket PATH")
            }
            let outcome = RequestOutcome()
            let mutating = request.command == .apply || request.command == .destroy
            var code = Runner.execute(request, session: session, console: console, outcome: outcome, confirm: isatty(0) == 1 ? { _ in askYes(console) } : nil,
                                      shouldStop: mutating ? { Interrupt.install(); return Interrupt.wasRequested } : { false })
            if mutating, Interrupt.wasRequested, code != 0 {
                let verb = request.command == .destroy ? "destroy" : "apply"
                console.error("Interrupted: the step in flight finished and everything done is journaled. Resume with: vsmmu \(verb) \(file ?? "FILE")\(kernel.context)")
                code = 130
            }
            if let savePlanTo, let plan = outcome.savedPlan {
                try SavedPlan.write(plan, to: savePlanTo)
                console.error("Saved the plan to \(savePlanTo). Apply exactly this plan with: vsmmu apply \(savePlanTo)\(kernel.context)")
            }
            return code
        }
    }

    static func askYes(_ console: Console) -> Bool {
        console.write("\nDo you want to perform these actions? Only 'yes' will be accepted: ")
        return readLine()?.trimmingCharacters(in: .whitespaces) == "yes"
    }
}
