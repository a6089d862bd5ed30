import VsmmuTestSupport
import Foundation
import Testing

/// Golden plans of every example on a fresh simulated host: text, --ops, and JSON.
/// Regenerate after an intended change with VSMMU_UPDATE_GOLDEN=1 swift test --filter Golden,
/// then review the diff like any other code change.

@Test(arguments: exampleTopologies.map(\.topology))
func goldenPlans(example: String) throws {
    let host = exampleHost(example)
    let file = "examples/\(example).yaml"
    let variants: [(String, [String])] = [("plan.txt", []), ("ops.txt", ["--ops"]), ("plan.json", ["--format", "json"])]
    for (suffix, extra) in variants {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = vsmmu(["plan", file, "--host", host, "--state-dir", dir] + extra)
        #expect(r.code == 0, "\(r.stderr)")
        let golden = path("Tests/VsmmuCommandsTests/golden/\(example).\(suffix)")
        if ProcessInfo.processInfo.environment["VSMMU_UPDATE_GOLDEN"] == "1" {
            try r.stdout.write(toFile: golden, atomically: true, encoding: .utf8)
            continue
        }
        let expected = try String(contentsOfFile: golden, encoding: .utf8)
        #expect(r.stdout == expected, "\(example).\(suffix) differs from its golden file")
    }
}

@Test func jsonPlanIsVersionedAndParses() throws {
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let r = vsmmu(["plan", "examples/one-guest-one-vsmmu.yaml", "--host", grace, "--state-dir", dir, "--format", "json"])
    let doc = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
    #expect(doc?["formatVersion"] as? Int == 1)
    let ops = doc?["operations"] as? [[String: Any]] ?? []
    #expect(ops.count == 20)
    #expect(ops.first?["call"] as? String == "OPEN_IOMMUFD")
    // dependencies point backwards only: the order is a topological order of the DAG
    for op in ops {
        let i = op["index"] as? Int ?? 0
        for d in op["dependsOn"] as? [Int] ?? [] { #expect(d < i) }
    }
}
