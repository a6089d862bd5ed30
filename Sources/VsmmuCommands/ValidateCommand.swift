import ArgumentParser
import VsmmuKernel
import VsmmuModel
import VsmmuProvisioning

struct Validate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "validate",
        abstract: "Parse and check a topology file, and against a host when one is given.",
        discussion: """
        Every problem is reported as FILE:LINE:COL: error: message, with the line, a caret \
        and a hint. Without --host only the rules that need no host run; with it, devices, \
        IOMMU groups, physical IOMMUs and features are checked too, and `auto` feature \
        values are resolved (shown with --verbose).

        Placement: a device of a guest's `devices:` list with `vsmmu: auto` goes behind \
        the vSMMU of its own physical SMMU (one per SMMU, made when the guest declares \
        none there, named after it: smmu-16000000); `peer: NAME` (a GPU's NIC) must sit \
        behind the same SMMU, so both share one vSMMU and pxb. --verbose prints where \
        each device went and why, and each peer pair's ACS path on the host.

        Exit status: 0 valid, 1 invalid.

        Examples:
          vsmmu validate examples/two-vsmmus-four-gpus.yaml --verbose \\
            --host examples/hosts/grace-2smmu-cmdqv.yaml

          vsmmu validate examples/gb200-auto.yaml --verbose \\
            --host examples/hosts/gb200-tray.yaml
        """)

    @Argument(help: "The topology file (kind Topology).")
    var file: String

    @OptionGroup var kernel: KernelOptions

    @Flag(name: .shortAndLong, help: "Print the resolved value of every `auto` feature, and where `vsmmu: auto` put each device.")
    var verbose = false

    @Option(help: "text, or json (valid, the diagnostics with line and column, the counts) on standard output.")
    var format: OutputFormat = .text

    func validate() throws {
        if format == .yaml { throw ValidationError("validate writes text or json") }
    }

    func run() throws {
        // Through an agent (--socket, no --host): the agent checks the file against the host it
        // runs on, as its plan would (the plan itself is not printed).
        if kernel.host == nil, kernel.socket != nil, format == .text, let socket = kernel.agentSocket {
            let console = Console.standard()
            let code = try runReporting(console) { () throws -> Int32 in
                var request = Request(.plan)
                try request.attach(file: file)
                let quiet = Console(out: { _ in }, err: { console.errorRaw($0) })
                let reply = try AgentClient(path: socket).exchange(request, console: quiet)
                if reply.exit == 0 { console.print("\(file) is valid against the host of the agent at \(socket)") }
                return reply.exit ?? 1
            }
            if code != 0 { throw ExitCode(code) }
            return
        }
        // Where the state directory already holds the simulated host, validate reads what
        // plan would: that host as it is now (its origin checked against --host).
        var current: HostDescription?
        if kernel.host != nil, HostOrigin.holdsSimulatedHost(stateDir: kernel.resolvedStateDir) {
            let console = Console.standard()
            let code = try runReporting(console) { () throws -> Int32 in current = try Session.open(kernel).host; return 0 }
            if code != 0 { throw ExitCode(code) }
        }
        let code = ValidateRunner.run(file: file, hostFile: kernel.host, verbose: verbose, console: .standard(), current: current, json: format == .json)
        if code != 0 { throw ExitCode(code) }
    }
}

public enum ValidateRunner {
    /// `current`: the host to check against instead of reading `hostFile` (a simulated host's state).
    /// The result as JSON for pipelines: the same exit codes, errors as fields.
    static func json(_ file: String, host: HostDescription?, diagnostics: [Diagnostic], topology: Topology?) -> String {
        var o: [String: JSONValue] = ["file": .string(file), "valid": .bool(diagnostics.isEmpty),
                                      "host": host.map { .string($0.name) } ?? .null,
                                      "diagnostics": .array(diagnostics.map { d in
                                          ["line": .int(Int64(d.mark.line)), "column": .int(Int64(d.mark.column)), "message": .string(d.message),
                                           "hint": d.hint.map(JSONValue.string) ?? .null]
                                      })]
        if let topology, diagnostics.isEmpty {
            o["guests"] = .int(Int64(topology.guests.count))
            o["vsmmus"] = .int(Int64(topology.guests.reduce(0) { $0 + $1.vsmmus.count }))
            o["devices"] = .int(Int64(topology.guests.reduce(0) { $0 + $1.allDevices.count }))
        }
        return JSONValue.object(o).rendered()
    }

    public static func run(file: String, hostFile: String?, verbose: Bool, console: Console, current: HostDescription? = nil, json: Bool = false) -> Int32 {
        var host: HostDescription? = current
        if let hostFile, current == nil {
            do { host = try HostDescription.load(path: hostFile) } catch {
                console.error(error.rendered())
                console.error("\(hostFile): the host description is invalid")
                return 1
            }
        }
        let topology: Topology
        let source: SourceText
        do { (topology, source) = try Topology.load(path: file) } catch {
            if json { console.print(Self.json(file, host: host, diagnostics: error.diagnostics, topology: nil)); return 1 }
            console.error(error.rendered())
            console.error("\(file): \(countPhrase(error.diagnostics.count))")
            return 1
        }
        let result = Validator.validate(topology, host: host)
        if json {
            console.print(Self.json(file, host: host, diagnostics: result.isValid ? [] : result.diagnostics, topology: topology))
            return result.isValid ? 0 : 1
        }
        if !result.isValid {
            for d in result.diagnostics { console.error(d.rendered(source: source)) }
            console.error("\(file): \(countPhrase(result.diagnostics.count))")
            return 1
        }
        // Counted as placement left them (devices with vsmmu: auto behind their vSMMUs).
        let placed = result.placing(topology)
        let devices = placed.guests.reduce(0) { $0 + $1.allDevices.count }
        let vsmmus = placed.guests.reduce(0) { $0 + $1.vsmmus.count }
        let against = host.map { " against host '\($0.name)'" } ?? ""
        console.print("\(file): valid\(against): \(plural(topology.guests.count, "guest")), \(plural(vsmmus, "vSMMU")), \(plural(devices, "device"))")
        if verbose {
            if host == nil, vsmmus > 0 {
                console.print("  (auto values are resolved only against a host: add --host FILE)")
            }
            for g in placed.guests {
                for s in g.vsmmus {
                    guard let r = result.resolved["\(g.name)/\(s.name)"] else { continue }
                    func mark(_ f: String) -> String { r.autoFields.contains(f) ? " (auto)" : "" }
                    func onOff(_ b: Bool) -> String { b ? "on" : "off" }
                    console.print("  \(g.name)/\(s.name): physical \(r.physical)\(mark("physical")), ats \(onOff(r.ats))\(mark("ats")), ril \(onOff(r.ril))\(mark("ril")), ssidSize \(r.ssidSize)\(mark("ssidSize")), oas \(r.oas)\(mark("oas")), cmdqv \(onOff(r.cmdqv))\(mark("cmdqv"))")
                }
                // Where vsmmu: auto put each device, and each peer pair's path.
                for d in result.placements[g.name]?.decisions ?? [] {
                    console.print("  \(g.name)/\(d.device): vsmmu \(d.requested) → \(d.vsmmu ?? "none"): \(d.reason)")
                }
                for p in result.placements[g.name]?.peers ?? [] {
                    console.print("  \(g.name)/\(p.device) ↔ \(p.peer): \(p.route.rawValue): \(p.text)")
                }
            }
        }
        return 0
    }

    static func countPhrase(_ n: Int) -> String { n == 1 ? "1 error" : "\(n) errors" }
    static func plural(_ n: Int, _ word: String) -> String { n == 1 ? "1 \(word)" : "\(n) \(word)s" }
}
