import VsmmuTestSupport
import Foundation
import Testing
@testable import VsmmuModel
import VsmmuKernel

@Test(arguments: files(in: "examples"))
func everyExampleIsValidAgainstItsHost(example: String) throws {
    let hostFile = try #require(hostOf(example), "example \(example) names no # host:")
    let host = try HostDescription.load(path: path(hostFile))
    let (topology, _) = try Topology.load(path: path(example))
    let result = Validator.validate(topology, host: host)
    #expect(result.diagnostics.map(\.description) == [])
    // every vSMMU resolved against the host (with those placement made for vsmmu: auto)
    let vsmmus = result.placed.guests.flatMap { g in g.vsmmus.map { "\(g.name)/\($0.name)" } }
    #expect(Set(result.resolved.keys) == Set(vsmmus))
    // and valid without a host too
    #expect(Validator.validate(topology, host: nil).diagnostics.map(\.description) == [])
}

@Test(arguments: files(in: "examples/hosts"))
func everyHostExampleParsesAndRoundTrips(file: String) throws {
    let host = try HostDescription.load(path: path(file))
    let again = try HostDescription.parse(SourceText(path: "rendered", bytes: Array(host.renderYAML().utf8)))
    #expect(again == host)
}

/// Each file under examples/invalid/ states its expected errors in `# expect: LINE:COL: message`.
@Test(arguments: files(in: "examples/invalid"))
func everyInvalidExampleFailsExactlyAsItSays(file: String) throws {
    let text = try String(contentsOfFile: path(file), encoding: .utf8)
    let expected = text.split(separator: "\n").filter { $0.hasPrefix("# expect: ") }.map { String($0.dropFirst("# expect: ".count)) }
    #expect(!expected.isEmpty, "no # expect: line in \(file)")
    let host = try hostOf(file).map { try HostDescription.load(path: path($0)) }
    var got: [Diagnostic] = []
    do {
        let (topology, _) = try Topology.load(path: path(file))
        got = Validator.validate(topology, host: host).diagnostics
    } catch {
        got = error.diagnostics
    }
    #expect(got.map { "\($0.mark.line):\($0.mark.column): \($0.message)" } == expected)
    #expect(got.allSatisfy { $0.file == path(file) })
}

@Test func everyRuleOfSpecSection2HasAnInvalidExample() {
    // One file per rule of docs/contract.md §2; a rule without its file is a gap in the contract's tests.
    let rules = ["unknown-key", "wrong-type", "duplicate-key", "duplicate-name", "bad-pci-address", "size-zero",
                 "size-not-aligned", "size-overflow", "size-too-large", "memory-overlap", "memory-reserved",
                 "device-used-twice", "vsmmu-mixed-iommus", "vsmmu-wrong-physical", "two-vsmmus-same-physical",
                 "group-not-viable", "feature-beyond-host", "no-nesting", "not-coherent", "bus-collision", "bus-room",
                 "too-many-vsmmus",
                 // docs/contract.md §3's per-device facts and page size (issue 16)
                 "ats-on-device-without-ats", "ssid-beyond-pasid-width", "device-not-canwbs", "page-size-misaligned",
                 "vfio-driver-unknown", "device-facts-unknown",
                 // placement (issue 17): vsmmu: names a vSMMU, peer: names a device, a peer pair shares an SMMU and a vSMMU
                 "vsmmu-unknown-name", "peer-unknown", "peer-different-smmu", "peer-not-same-vsmmu"]
    let present = Set(files(in: "examples/invalid").map { URL(fileURLWithPath: $0).deletingPathExtension().lastPathComponent })
    #expect(Set(rules).subtracting(present) == [])
}

@Test func schemaFilesEqualWhatTheCodeGenerates() throws {
    let topology = try String(contentsOfFile: path("schemas/topology.schema.json"), encoding: .utf8)
    let host = try String(contentsOfFile: path("schemas/host.schema.json"), encoding: .utf8)
    #expect(topology == JSONSchemaGenerator.topology.rendered() + "\n", "run: vsmmu schema > schemas/topology.schema.json")
    #expect(host == JSONSchemaGenerator.host.rendered() + "\n", "run: vsmmu schema --kind host > schemas/host.schema.json")
}

/// An independent validator (Python jsonschema) checks the examples against the schemas.
@Test(.enabled(if: pythonHasJSONSchema(), "python3 with jsonschema and yaml is not installed"))
func examplesValidateWithAnIndependentJSONSchemaValidator() throws {
    func run(_ schema: String, _ files: [String]) -> (Int32, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3", path("scripts/check-schemas.py"), path(schema)] + files.map(path)
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        try? p.run()
        let out = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        return (p.terminationStatus, out)
    }
    let (t, tOut) = run("schemas/topology.schema.json", files(in: "examples"))
    #expect(t == 0, "\(tOut)")
    let (h, hOut) = run("schemas/host.schema.json", files(in: "examples/hosts"))
    #expect(h == 0, "\(hOut)")
    // and it is a real check: schema-level invalid files fail it
    let (bad, badOut) = run("schemas/topology.schema.json", ["examples/invalid/unknown-key.yaml", "examples/invalid/bad-pci-address.yaml", "examples/invalid/wrong-type.yaml"])
    #expect(bad == 1)
    #expect(badOut.components(separatedBy: "FAIL ").count == 4)
}

func pythonHasJSONSchema() -> Bool {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = ["python3", "-c", "import jsonschema, yaml"]
    p.standardOutput = FileHandle.nullDevice
    p.standardError = FileHandle.nullDevice
    do { try p.run() } catch { return false }
    p.waitUntilExit()
    return p.terminationStatus == 0
}
