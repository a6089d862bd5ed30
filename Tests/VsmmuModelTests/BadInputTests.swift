import VsmmuTestSupport
import Foundation
import Testing
@testable import VsmmuModel
import VsmmuYAML
import VsmmuKernel

@Test func emptyFileSaysSo() {
    let d = loadFailure("")
    #expect(d.count == 1)
    #expect(d.first?.description == "t.yaml:1:1: error: the file is empty; expected a Topology document")
}

@Test func binaryJunkIsAClearErrorWithALine() {
    var rng = SystemRandomNumberGenerator()
    let junk = (0..<4096).map { _ in UInt8.random(in: 0...255, using: &rng) }
    let d = loadFailure(bytes: junk)
    #expect(d.count >= 1)
    #expect(d.allSatisfy { $0.mark.line >= 1 })
}

@Test func deepNestingIsAClearError() {
    let d = loadFailure(String(repeating: "[", count: 3000) + String(repeating: "]", count: 3000))
    #expect(d.first?.message.contains("nesting is deeper") == true)
}

@Test func billionLaughsIsAClearError() {
    var s = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
    for i in 1...9 { s += "a\(i): &a\(i) [" + Array(repeating: "*a\(i - 1)", count: 10).joined(separator: ", ") + "]\n" }
    let d = loadFailure(s)
    #expect(d.first?.message.contains("alias bomb") == true)
}

@Test func hundredMegabyteScalarIsRefusedBeforeItIsRead() throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vsmmu-big-\(UUID())")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    let file = dir.appendingPathComponent("big.yaml")
    _ = FileManager.default.createFile(atPath: file.path, contents: nil)
    let h = try FileHandle(forWritingTo: file)
    try h.write(contentsOf: Data("apiVersion: vsmmu/v1\nkind: Topology\nmetadata:\n  name: ".utf8))
    let chunk = Data(repeating: 0x61, count: 1 << 20)
    for _ in 0..<100 { try h.write(contentsOf: chunk) }
    try h.close()
    do {
        _ = try Topology.load(path: file.path)
        Issue.record("a 100 MB file was accepted")
    } catch {
        #expect(error.diagnostics.first?.message.contains("larger than the limit") == true)
        #expect(error.diagnostics.first?.mark == Mark(line: 1, column: 1))
    }
}

@Test func tabsAreAClearErrorAtTheirLine() {
    let d = loadFailure(minimalHeader + "  - name: vm1\n\tuser: qemu\n")
    #expect(d.first?.mark.line == 7)
}

@Test func severalDocumentsAreAClearError() {
    let d = loadFailure(minimalHeader + "  - name: vm1\n---\n" + minimalHeader)
    #expect(d.first?.message.contains("more than one YAML document") == true)
}

@Test func nonUTF8IsAClearErrorAtItsLine() {
    var b = Array((minimalHeader + "  - name: vm1\n    user: ").utf8)
    b += [0xc3, 0x28, 0x0a]
    let d = loadFailure(bytes: b)
    #expect(d.first?.mark.line == 7)
    #expect(d.first?.message.contains("UTF-8") == true)
}

@Test func renderedDiagnosticShowsTheLineAndACaret() throws {
    let yaml = minimalHeader + "  - name: vm1\n    devices:\n      - { name: n, host: 0000:0a:00.0x }\n"
    let source = SourceText(path: "t.yaml", bytes: Array(yaml.utf8))
    do {
        _ = try Topology.parse(source)
        Issue.record("accepted")
    } catch {
        let text = error.rendered()
        #expect(text == """
        t.yaml:8:26: error: guests[0].devices[0].host: '0000:0a:00.0x' is not a PCI address: expected domain:bus:slot.function such as 0000:09:01.0 (12 characters), got 13 characters
          8 |       - { name: n, host: 0000:0a:00.0x }
            |                          ^
        """)
    }
}

/// Mutation fuzzing: random byte flips, insertions, deletions and line shuffles of the
/// examples. Nothing may crash or hang, and every failure names a line of the file.
@Test func mutationFuzzNeverCrashesAndAlwaysNamesALine() throws {
    let sources = (files(in: "examples") + files(in: "examples/invalid")).map { f in
        Array((try? String(contentsOfFile: path(f), encoding: .utf8)) ?? "").map { $0 }
    }.map { String($0) }
    let host = try HostDescription.load(path: path("examples/hosts/grace-2smmu-cmdqv.yaml"))
    var rng = SplitMix(seed: 0x5EED)
    var failures = 0, cases = 0
    let start = ContinuousClock.now
    for i in 0..<6000 {
        var bytes = Array(sources[i % sources.count].utf8)
        let kind = rng.next() % 4
        let n = Int(rng.next() % 4) + 1
        for _ in 0..<n where !bytes.isEmpty {
            let at = Int(rng.next() % UInt64(bytes.count))
            switch kind {
            case 0: bytes[at] ^= UInt8(1 << (rng.next() % 8))
            case 1: bytes.insert(UInt8(rng.next() % 256), at: at)
            case 2: bytes.remove(at: at)
            default:
                var lines = bytes.split(separator: 10, omittingEmptySubsequences: false).map(Array.init)
                if lines.count > 2 {
                    let a = Int(rng.next() % UInt64(lines.count)), b = Int(rng.next() % UInt64(lines.count))
                    lines.swapAt(a, b)
                }
                bytes = Array(lines.joined(separator: [10]))
            }
        }
        cases += 1
        let source = SourceText(path: "fuzz.yaml", bytes: bytes)
        do {
            let t = try Topology.parse(source)
            let r = Validator.validate(t, host: host)
            for d in r.diagnostics { #expect(d.mark.line >= 1 && d.mark.column >= 1) }
            if !r.isValid { failures += 1 }
        } catch {
            failures += 1
            #expect(!error.diagnostics.isEmpty)
            for d in error.diagnostics {
                #expect(d.mark.line >= 1 && d.mark.column >= 1)
                #expect(d.mark.line <= max(1, bytes.filter { $0 == 10 }.count + 1))
                _ = d.rendered(source: source)
            }
        }
    }
    #expect(cases == 6000)
    #expect(failures > 1000)   // the mutations do break files
    #expect(ContinuousClock.now - start < .seconds(60))
}

/// A small deterministic PRNG so fuzz failures reproduce.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
