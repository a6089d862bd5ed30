import Foundation
import VsmmuTestSupport
import Testing
@testable import VsmmuExecutor
import VsmmuKernel
import VsmmuModel
import VsmmuPlanner
@testable import VsmmuSim

// The journal's group commit (docs/contract.md §8): a batch's intents are synced once
// before its first step runs; a step with an intent and no outcome is "maybe done".

/// Every regular file of the state directory and of its sim/ directory: what a process
/// killed at this instant leaves (the journal and the simulated kernel's redo log are
/// written with write(2) as they go).
private func files(_ dir: String) -> [String: Data] {
    var out: [String: Data] = [:]
    for sub in ["", "sim/"] {
        for name in (try? FileManager.default.contentsOfDirectory(atPath: dir + "/" + sub)) ?? [] {
            var isDir: ObjCBool = false
            let p = dir + "/" + sub + name
            if FileManager.default.fileExists(atPath: p, isDirectory: &isDir), !isDir.boolValue, let d = FileManager.default.contents(atPath: p) {
                out[sub + name] = d
            }
        }
    }
    return out
}

/// A new harness whose state directory holds exactly `state` (journal, holdings,
/// allocations) and `sim` (the simulated kernel's files), opened as a new process would.
private func restored(host: String, state: [String: Data], sim: [String: Data]) throws -> Harness {
    let h = try Harness(host: host)
    for (name, _) in files(h.dir) { try FileManager.default.removeItem(atPath: h.dir + "/" + name) }
    for (name, data) in state where !name.hasPrefix("sim/") { try data.write(to: URL(fileURLWithPath: h.dir + "/" + name)) }
    for (name, data) in sim where name.hasPrefix("sim/") { try data.write(to: URL(fileURLWithPath: h.dir + "/" + name)) }
    try h.reopen()
    return h
}

private let example = "several-guests"
private let host = "examples/hosts/grace-2smmu-cmdqv.yaml"

/// Where in a step the process dies.
enum KillPoint: String, CaseIterable, CustomTestStringConvertible {
    /// After the batch's intents (and the outcomes before), before the step's kernel call.
    case beforeTheCall
    /// Inside the step: its kernel call made, its outcome not written.
    case afterTheCallBeforeItsOutcome
    /// The kernel past the step, the journal with the batch's intents only: its outcomes
    /// lost (a host crash that a remote kernel survives).
    case withTheBatchsOutcomesLost
    var testDescription: String { rawValue }
}

/// Kill -9 at every step of an apply journaled in batches of 8, over three guests so a
/// batch spans guests. Every step of the batch without an outcome is reported interrupted
/// ("maybe done"), and the next apply converges to a clean apply's end.
@Test(arguments: KillPoint.allCases)
func aKillBetweenABatchsIntentAndItsOutcomesConvergesOnTheNextRun(_ point: KillPoint) throws {
    let clean = try Harness(host: host)
    let t = try clean.example(example)
    let plan = try clean.plan(t)
    let batch = 8
    let n = plan.operations.count
    #expect(n > 3 * batch, "the example spans several batches")

    var beforeStep: [[String: Data]] = []
    var afterStep: [[String: Data]] = []
    try Pipeline.apply(plan, port: clean.sim, store: clean.store,
                       calls: { _ in afterStep.append(files(clean.dir)) },
                       inFlight: { _ in beforeStep.append(files(clean.dir)) }, batch: batch)
    try clean.sim.save()
    let expected = clean.summary()
    #expect(beforeStep.count == n && afterStep.count == n)

    for k in 0..<n {
        let first = k / batch * batch, end = min(first + batch, n)
        let indices = plan.operations[first..<end].map(\.index)
        let (state, sim, maybeDone): ([String: Data], [String: Data], [Int])
        switch point {
        case .beforeTheCall: (state, sim, maybeDone) = (beforeStep[k], beforeStep[k], Array(indices[(k - first)...]))
        case .afterTheCallBeforeItsOutcome: (state, sim, maybeDone) = (beforeStep[k], afterStep[k], Array(indices[(k - first)...]))
        case .withTheBatchsOutcomesLost: (state, sim, maybeDone) = (beforeStep[first], afterStep[k], indices)
        }
        let h = try restored(host: host, state: state, sim: sim)
        #expect(h.store.interrupted.map(\.index) == maybeDone, "killed at step \(k + 1)")
        // The recovery note names a long run of them by its ends, not step by step.
        #expect(h.store.interruptedSummary.contains(maybeDone.count > 3 ? "\(maybeDone.count) steps of one journal batch" : "\(maybeDone[0]) "))
        try h.apply(t)
        #expect(h.summary() == expected, "killed at step \(k + 1)")
        #expect(try h.plan(t).isEmpty, "killed at step \(k + 1)")
    }
}

/// One journal fsync per batch of intents, counted through the state directory's sync
/// seam (never timed): an apply of n steps syncs the journal ceil(n / batch) times, and
/// the state directory only a constant few times more (holdings, allocations, checkpoint).
@Test func anApplySyncsTheJournalOncePerBatch() throws {
    for batch in [1, 8, Executor.defaultBatch] {
        let h = try Harness(host: host)
        let t = try h.example(example)
        let plan = try h.plan(t)
        let n = plan.operations.count
        let before = h.store.syncs
        try Pipeline.apply(plan, port: h.sim, store: h.store, batch: batch)
        let batches = (n + batch - 1) / batch
        #expect(h.store.journalSyncs == batches, "batch \(batch): \(n) steps")
        #expect(h.store.syncs - before <= batches + 6, "batch \(batch): \(h.store.syncs - before) fsyncs for \(n) steps")
        if batch == Executor.defaultBatch { #expect(h.store.journalSyncs == 1) }
    }
}

/// A stop (SIGTERM in the agent) or a failure inside a batch records the batch's steps that
/// never ran as skipped: even without the checkpoint after it, nothing is left "maybe done".
@Test func aStopOrAFailureInsideABatchLeavesNoStepMaybeDone() throws {
    for failing in [false, true] {
        let h = try Harness(host: host, environment: failing ? ["VSMMU_SIM_FAIL": "IOMMU_VIOMMU_ALLOC:EIO"] : [:])
        let t = try h.example(example)
        let plan = try h.plan(t)
        try h.store.saveAllocations(plan.allocations)
        var asked = 0
        #expect(throws: ApplyError.self) {
            try Executor(port: h.sim, store: h.store, batch: 1000).run(plan, shouldStop: {
                asked += 1
                return !failing && asked > 5
            })
        }
        try h.sim.save()
        let journal = try String(contentsOfFile: h.store.journalPath, encoding: .utf8)
        #expect(journal.contains("\"phase\":\"skipped\""), "failing \(failing)")
        try h.reopen()
        #expect(h.store.interrupted.isEmpty, "failing \(failing): \(h.store.interrupted.map(\.index))")
        try h.apply(t)
        #expect(try h.plan(t).isEmpty)
    }
}

/// Format 2 starts with a format line and journals a step's intent as its index, call,
/// resource and guest; a format-1 journal (no format line, each intent the whole step, as
/// an earlier vsmmu wrote it with JSONEncoder) reads the same; a newer format is refused.
@Test func journalFormatsOneAndTwoAreReadAndANewerOneIsRefused() throws {
    let h = try Harness(host: host)
    let t = try h.example(example)
    let plan = try h.plan(t)
    var mid: [String: Data] = [:]
    var steps = 0
    try Pipeline.apply(plan, port: h.sim, store: h.store, inFlight: { _ in
        steps += 1
        if steps == 40 { mid = files(h.dir) }
    }, batch: 8)
    let journal = try #require(mid["journal.log"])
    let lines = String(decoding: journal, as: UTF8.self).split(separator: "\n")
    #expect(lines.first == "{\"journal\":\(StateStore.journalFormat)}")
    #expect(lines.dropFirst().first?.hasPrefix(#"{"seq":1,"phase":"begin","step":{"index":1,"call":"#) == true, "\(lines.dropFirst().first ?? "")")

    let old = JSONEncoder()
    old.outputFormatting = [.sortedKeys]
    var v1Lines: [String] = []
    for line in lines.dropFirst() {
        let record = try JSONDecoder().decode(JournalRecord.self, from: Data(line.utf8))
        guard record.phase == .begin, let step = record.step else { v1Lines.append(String(line)); continue }
        let op = try #require(plan.operations.first { $0.index == step.index })
        v1Lines.append(String(decoding: try old.encode(JournalRecord(seq: record.seq, phase: .begin, op: op)), as: UTF8.self))
    }
    var v1State = mid
    v1State["journal.log"] = Data((v1Lines.joined(separator: "\n") + "\n").utf8)
    let v2 = try restored(host: host, state: mid, sim: mid)
    let v1 = try restored(host: host, state: v1State, sim: mid)
    #expect(!v2.store.interrupted.isEmpty)
    #expect(v1.store.interrupted == v2.store.interrupted)
    #expect(v1.store.holdings == v2.store.holdings)
    #expect(v1.store.holdings.guests.values.contains { $0.uncertain })
    try v1.apply(t)
    #expect(try v1.plan(t).isEmpty)

    var v3State = mid
    v3State["journal.log"] = Data(("{\"journal\":3}\n" + lines.dropFirst().joined(separator: "\n")).utf8)
    do {
        _ = try restored(host: host, state: v3State, sim: mid)
        Issue.record("a journal of a newer format was read")
    } catch {
        #expect("\(error)".contains("written by a newer vsmmu (journal format 3; this one reads formats 1 to 2)"), "\(error)")
    }
}
