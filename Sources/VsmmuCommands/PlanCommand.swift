import ArgumentParser
import Foundation
import VsmmuProvisioning
import VsmmuExecutor
import VsmmuModel
import VsmmuPlanner

struct PlanCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan",
        abstract: "Show what apply would change: desired graph against what the kernel holds.",
        discussion: """
        One line per resource: + create, ~ update, - destroy, -/+ replace (with the \
        attribute that forces it), then `Plan: N to add, M to change, K to destroy.` or \
        `No changes.`. --ops lists the exact operations (ioctl names, the arguments that \
        matter, what each yields, what it waits for). Makes no change to the kernel.

        Then, per guest that changes: where `vsmmu: auto` put each device and why, every \
        `auto` value and its reason (capped per device), each `peer:` pair's path on the \
        host (direct, redirected by ACS with the pci=config_acs= parameter that would \
        change it at reboot, root-complex, unknown), and the VMM's lifecycle limits \
        (no migration with accel=on; CMDQV's first device cannot be hot-unplugged). \
        JSON has them under `facts`.

        Exit status: 0 no changes (or any plan without --detailed-exitcode), 1 error, \
        2 changes present (with --detailed-exitcode).

        Examples:
          vsmmu plan examples/one-guest-one-vsmmu.yaml --ops \\
            --host examples/hosts/grace-2smmu-cmdqv.yaml

          vsmmu plan examples/gb200-auto.yaml \\
            --host examples/hosts/gb200-tray.yaml
        """)


    @Argument(help: "The topology file.")
    var file: String

    @OptionGroup var kernel: KernelOptions

    @Option(help: ArgumentHelp("Save the plan for `vsmmu apply PLAN`; it carries a fingerprint of the state it was made from.", valueName: "PLAN"))
    var out: String?

    @Option(help: "Output format: text, json (formatVersion 1, stable for pipelines) or yaml (the same document).")
    var format: OutputFormat = .text

    @Flag(help: "List the ordered operations.")
    var ops = false

    @Flag(help: "Exit 2 when there are changes, 0 when there are none.")
    var detailedExitcode = false

    func run() throws {
        var request = Request(.plan)
        request.format = format.rawValue
        request.ops = ops
        request.detailedExitcode = detailedExitcode
        request.wantSavedPlan = out != nil
        let code = try Dispatch.run(request, file: file, kernel: kernel, savePlanTo: out)
        if code != 0 { throw ExitCode(code) }
    }
}

/// A plan saved by `plan --out`, for `apply PLAN`.
enum SavedPlan {
    static let kind = "vsmmu-saved-plan"
    struct File: Codable { var kind: String; var plan: Plan }

    /// The saved plan's bytes: the same whether the plan was made in-process or by the agent.
    static func encode(_ plan: Plan) throws -> Data {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .prettyPrinted]
        return try e.encode(File(kind: kind, plan: plan))
    }

    static func write(_ plan: Plan, to path: String) throws {
        try write(data: encode(plan), to: path)
    }

    static func write(data: Data, to path: String) throws {
        guard FileManager.default.createFile(atPath: path, contents: data) else {
            throw CommandError(message: "cannot write the plan to \(path)")
        }
    }

    /// The saved plan in these bytes, or nil when they are something else (a topology).
    static func decode(_ bytes: [UInt8]) -> Plan? {
        guard bytes.first == UInt8(ascii: "{"), let f = try? JSONDecoder().decode(File.self, from: Data(bytes)), f.kind == kind else { return nil }
        return f.plan
    }
}

/// Runs a command body, printing errors the same way everywhere: `error: …`, a hint.
func runReporting(_ console: Console, _ body: () throws -> Int32) throws -> Int32 {
    do {
        return try body()
    } catch {
        // An apply's live line (a terminal only) must not run into the error.
        if console.stderrIsTerminal { console.errorRaw("\r\u{1B}[K") }
        return try reportError(error, console)
    }
}

private func reportError(_ error: Error, _ console: Console) throws -> Int32 {
    do {
        throw error
    } catch let e as ExitCode {
        throw e
    } catch is ExitCode1 {
        return 1
    } catch let e as CommandError {
        // The chain: what failed, then what it failed on, down to the kernel's errno.
        let chain = e.chain
        console.error("error: \(chain[0])")
        for cause in chain.dropFirst() { console.error("  caused by: \(cause)") }
        if let h = e.firstHint { console.error("hint: \(h)") }
        return 1
    } catch let e as InvalidTopology {
        // As `validate` prints them: every diagnostic at FILE:LINE:COL, then the count.
        if let parse = e.parseError {
            console.error(parse)
        } else {
            for d in e.diagnostics { console.error(d.rendered(source: e.source)) }
            console.error("\(e.source.path): \(ValidateRunner.countPhrase(e.diagnostics.count)); nothing was changed")
        }
        return 1
    } catch let e as StateLock.Busy {
        console.error("error: \(e)")
        return 1
    } catch let e as ApplyError {
        console.error("error: \(e)")
        if let h = e.hint { console.error("hint: \(h)") }
        for r in e.rollback { console.error("rolled back: \(r)") }
        return 1
    } catch {
        console.error("error: \(error)")
        return 1
    }
}
