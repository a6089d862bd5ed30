import Foundation
import Testing

/// A state directory belongs to the host it was made from (docs/contract.md §7).
@Test func aDifferentHostForAStateDirectoryIsAnError() throws {
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    #expect(vsmmu(["apply", "examples/one-guest-one-vsmmu.yaml", "--auto-approve", "--host", grace, "--state-dir", dir]).code == 0)
    let other = vsmmu(["plan", "examples/devices-without-vsmmu.yaml", "--host", "examples/hosts/intel-vtd.yaml", "--state-dir", dir])
    #expect(other.code == 1)
    #expect(other.stderr.contains("the state directory \(dir) was made from host grace-01 (--host \(grace))"), "\(other.stderr)")
    #expect(other.stderr.contains("--state-dir NEW_DIR"), "\(other.stderr)")
    #expect(!other.stdout.contains("No changes"))
    // The same host file still works.
    #expect(vsmmu(["plan", "examples/one-guest-one-vsmmu.yaml", "--detailed-exitcode", "--host", grace, "--state-dir", dir]).code == 0)
}

/// Without --host, a simulated state directory's records never go to the live kernel.
@Test func aSimulatedStateDirectoryWithoutHostIsAnError() throws {
    let dir = tempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    #expect(vsmmu(["apply", "examples/one-guest-one-vsmmu.yaml", "--auto-approve", "--host", grace, "--state-dir", dir]).code == 0)
    let live = vsmmu(["plan", "examples/one-guest-one-vsmmu.yaml", "--state-dir", dir])
    #expect(live.code == 1)
    #expect(live.stderr.contains("holds a simulated host (grace-01), but no --host was given"), "\(live.stderr)")
    #expect(live.stderr.contains("add --host \(grace)"), "\(live.stderr)")
}
