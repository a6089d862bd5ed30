import VsmmuTestSupport
import Foundation
import Testing

/// Every command's --help at 80 columns, snapshot-tested (regenerate with
/// VSMMU_UPDATE_GOLDEN=1 swift test --filter Golden and review the diff): the examples in
/// it must survive a narrow terminal, since a wrapped example pasted back fails (exit 64).
let helpCommands = ["", "validate", "plan", "apply", "destroy", "show", "host", "qemu-args", "libvirt-xml",
                    "agent", "launch", "reconcile", "handoff", "schema"]

@Test(arguments: helpCommands)
func goldenHelpAt80Columns(command: String) throws {
    let r = vsmmu((command.isEmpty ? [] : [command]) + ["--help"], env: ["COLUMNS": "80"])
    #expect(r.code == 0, "\(r.stderr)")
    // Everything in the Example(s) section fits: one option per line with `\` continuations.
    var inExamples = false
    for line in r.stdout.split(separator: "\n", omittingEmptySubsequences: false) {
        if line.hasPrefix("Example") || line.hasPrefix("Try it") { inExamples = true; continue }
        if line.hasPrefix("USAGE:") { inExamples = false }
        guard inExamples, !line.isEmpty else { continue }
        #expect(line.count <= 80, "vsmmu \(command) --help: an example line of \(line.count) columns: \(line)")
        #expect(line.hasPrefix(" "), "vsmmu \(command) --help: an example wrapped at 80 columns: \(line)")
    }
    let golden = path("Tests/VsmmuCommandsTests/golden/help/\(command.isEmpty ? "vsmmu" : command).txt")
    if ProcessInfo.processInfo.environment["VSMMU_UPDATE_GOLDEN"] == "1" {
        try? FileManager.default.createDirectory(atPath: path("Tests/VsmmuCommandsTests/golden/help"), withIntermediateDirectories: true)
        try r.stdout.write(toFile: golden, atomically: true, encoding: .utf8)
        return
    }
    let expected = try String(contentsOfFile: golden, encoding: .utf8)
    #expect(r.stdout == expected, "vsmmu \(command) --help differs from its golden file")
}
