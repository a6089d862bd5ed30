import Foundation
import Testing
import VsmmuTestSupport

/// Runs scripts/check-yaml11.py (PyYAML, a YAML 1.1 reader as Ansible uses) on `files`,
/// or on `input` given as standard input.
private func checkYAML11(_ files: [String], input: String? = nil) -> (Int32, String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = ["python3", packageRoot + "/scripts/check-yaml11.py"] + (input == nil ? files.map { packageRoot + "/" + $0 } : ["-"])
    let out = Pipe(), inPipe = Pipe()
    p.standardOutput = out
    p.standardError = out
    p.standardInput = inPipe
    try? p.run()
    inPipe.fileHandleForWriting.write(Data((input ?? "").utf8))
    try? inPipe.fileHandleForWriting.close()
    let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    p.waitUntilExit()
    return (p.terminationStatus, text)
}

private func yamlFiles(_ dir: String) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: packageRoot + "/" + dir)) ?? []).filter { $0.hasSuffix(".yaml") }.sorted().map { dir + "/" + $0 }
}

/// Every PCI address in the examples, the README and the YAML vsmmu writes survives a
/// YAML 1.1 reader: unquoted, 0000:09:01.0 is the number 541.0 to PyYAML.
@Test func pciAddressesSurviveAYAML11Reader() throws {
    let (code, out) = checkYAML11(yamlFiles("examples") + yamlFiles("examples/hosts") + ["README.md"])
    #expect(code == 0, "\(out)")
    #expect(out.contains("ok"))
    // The check is real: an unquoted address fails it.
    let (bad, badOut) = checkYAML11([], input: "guests:\n  - devices:\n      - { name: n, host: 0000:09:01.0 }\n")
    #expect(bad == 1)
    #expect(badOut.contains("read as float 541.0"), "\(badOut)")

    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let ctx = ["--host", grace, "--state-dir", dir]
    #expect(vsmmu(["apply", "examples/one-guest-one-vsmmu.yaml", "--auto-approve"] + ctx).code == 0)
    for args in [["show"], ["host"]] {
        let r = vsmmu(args + ctx)
        #expect(r.code == 0)
        let (c, o) = checkYAML11([], input: r.stdout)
        #expect(c == 0, "\(args): \(o)")
    }
}
