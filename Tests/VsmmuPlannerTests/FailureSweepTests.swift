import Foundation
import VsmmuTestSupport
import Testing
import VsmmuExecutor
import VsmmuKernel
import VsmmuModel
import VsmmuPlanner
@testable import VsmmuSim

/// For every mutating call k of applying an example: inject a failure at k, then apply
/// without failure. The failed apply names the step; no device that had a driver is
/// ever left on none; and the end state equals a clean apply's.
@Test(arguments: exampleTopologies.map(\.topology))
func failureAtEveryMutatingCallConverges(example: String) throws {
    let host = exampleHost(example)
    let clean = try Harness(host: host)
    let t = try clean.example(example)
    let originalDrivers = Dictionary(uniqueKeysWithValues: clean.sim.currentHost.pciDevices.map { ($0.address, $0.driver) })
    clean.sim.traceEnabled = true
    try clean.apply(t)
    let expected = clean.summary()
    // Closes cannot fail (Linux always releases the fd), so they are not swept.
    let calls = clean.sim.trace.filter { $0.mutating && !$0.op.hasPrefix("CLOSE") && $0.op != "MUNMAP" }.map(\.op)
    #expect(calls.count >= 10)
    var seen: [String: Int] = [:]
    for (k, op) in calls.enumerated() {
        seen[op, default: 0] += 1
        let rule = "\(op)#\(seen[op]!):EIO"
        let h = try Harness(host: host, environment: ["VSMMU_SIM_FAIL": rule])
        var failure: Error?
        do { try h.apply(t) } catch { failure = error }
        let applyError = try #require(failure as? ApplyError, "call \(k) \(rule) did not fail the apply")
        #expect(applyError.errno == .EIO, "\(rule)")
        #expect(applyError.description.contains("EIO (input/output error)"))
        for d in h.sim.currentHost.pciDevices where originalDrivers[d.address]! != nil {
            #expect(d.driver != nil, "\(rule): \(d.address) was left on no driver")
        }
        try h.reopen()
        try h.apply(t)
        #expect(h.summary() == expected, "after \(rule)")
        #expect(try h.plan(t).isEmpty, "after \(rule)")
    }
}
