import ArgumentParser
import VsmmuKernel
import VsmmuModel

struct Validate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Parse and check a topology file, and against a host when one is given.",
        discussion: """
        Every problem is reported as FILE:LINE:COL: error: message, with the line, a caret \
        and a hint. Without --host only the rules that need no host run; with it, devices, \
        IOMMU groups, physical IOMMUs and features are checked too, and `auto` feature \
        values are resolved (shown with --verbose).

        Exit status: 0 valid, 1 invalid.

        Example:
          vsmmu validate examples/two-vsmmus-four-gpus.yaml --host examples/hosts/grace-2smmu-cmdqv.yaml --verbose
        """)

    @Argument(help: "The topology file (kind Topology).")
    var file: String

    @Option(help: ArgumentHelp("A host description (kind Host) to check against.", valueName: "FILE"))
    var host: String?

    @Flag(name: .shortAndLong, help: "Print the resolved value of every `auto` feature.")
    var verbose = false

    func run() throws {
        let code = ValidateRunner.run(file: file, hostFile: host, verbose: verbose, console: .standard())
        if code != 0 { throw ExitCode(code) }
    }
}

public enum ValidateRunner {
    public static func run(file: String, hostFile: String?, verbose: Bool, console: Console) -> Int32 {
        var host: HostDescription?
        if let hostFile {
            do { host = try HostDescription.load(path: hostFile) } catch {
                console.error(error.rendered())
                console.error("\(hostFile): the host description is invalid")
                return 1
            }
        }
        let topology: Topology
        let source: SourceText
        do { (topology, source) = try Topology.load(path: file) } catch {
            console.error(error.rendered())
            console.error("\(file): \(countPhrase(error.diagnostics.count))")
            return 1
        }
        let result = Validator.validate(topology, host: host)
        if !result.isValid {
            for d in result.diagnostics { console.error(d.rendered(source: source)) }
            console.error("\(file): \(countPhrase(result.diagnostics.count))")
            return 1
        }
        let devices = topology.guests.reduce(0) { $0 + $1.allDevices.count }
        let vsmmus = topology.guests.reduce(0) { $0 + $1.vsmmus.count }
        let against = host.map { " against host '\($0.name)'" } ?? ""
        console.print("\(file): valid\(against): \(plural(topology.guests.count, "guest")), \(plural(vsmmus, "vSMMU")), \(plural(devices, "device"))")
        if verbose {
            if host == nil, vsmmus > 0 {
                console.print("  (auto values are resolved only against a host: add --host FILE)")
            }
            for g in topology.guests {
                for s in g.vsmmus {
                    guard let r = result.resolved["\(g.name)/\(s.name)"] else { continue }
                    func mark(_ f: String) -> String { r.autoFields.contains(f) ? " (auto)" : "" }
                    func onOff(_ b: Bool) -> String { b ? "on" : "off" }
                    console.print("  \(g.name)/\(s.name): physical \(r.physical)\(mark("physical")), ats \(onOff(r.ats))\(mark("ats")), ril \(onOff(r.ril))\(mark("ril")), ssidSize \(r.ssidSize)\(mark("ssidSize")), oas \(r.oas)\(mark("oas")), cmdqv \(onOff(r.cmdqv))\(mark("cmdqv"))")
                }
            }
        }
        return 0
    }

    static func countPhrase(_ n: Int) -> String { n == 1 ? "1 error" : "\(n) errors" }
    static func plural(_ n: Int, _ word: String) -> String { n == 1 ? "1 \(word)" : "\(n) \(word)s" }
}
