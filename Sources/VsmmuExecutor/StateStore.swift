import Foundation
import Glibc
import VsmmuFiles
import VsmmuKernel
import VsmmuPlanner

/// The state directory: holdings (snapshot + write-ahead journal), allocations, the lock.
///
///   <state>/holdings.json     what the executor holds, as of the last clean finish
///   <state>/journal.log       since then: a format line, then per batch of steps one JSON
///                             line each of intent (begin), synced once before the first
///                             runs, then each step's outcome (done, failed or skipped)
///   <state>/allocations.json  bus numbers, slots, identifiers (docs/contract.md §2 stability)
///   <state>/lock              flock'ed by the one apply or destroy running
///
/// What is durable when, and why recovery converges: docs/contract.md §8.
public final class StateStore {
    public let directory: String
    /// The state directory, opened once and checked; every file below is reached from it
    /// with openat(2) and O_NOFOLLOW.
    let files: StateDirectory
    // Unchecked exclusivity: read at every step of an apply; a store is used by one thread
    // at a time and no access overlaps another.
    @exclusivity(unchecked) public private(set) var holdings: Holdings
    public private(set) var allocations: Allocations
    /// Steps whose intent is journaled and whose outcome is not: maybe done (the process
    /// died inside them, or inside their batch before they ran).
    public private(set) var interrupted: [JournaledStep] = []
    /// holdings.json was absent when the store was opened (see `lostState`).
    public private(set) var holdingsMissing = false
    /// Journal records found when the store was opened.
    public private(set) var journalRecords = 0
    /// allocations.json was present when the store was opened.
    public private(set) var allocationsFound = false
    private var journalFD: Int32 = -1
    /// The encoder of every journal write (reset before each).
    private let journalOut = JournalEncoder(capacity: 64 << 10)
    /// The journal file was empty when opened: the next write starts with the format line.
    private var journalNeedsHeader = false
    private var sequence = 0
    /// fsyncs of the journal by this store (one per batch of intents).
    public private(set) var journalSyncs = 0
    /// fsyncs of every file in the state directory (journal, snapshots, allocations).
    public var syncs: Int { files.syncs }

    /// The journal format this vsmmu writes. 1 (no format line): each step's intent synced
    /// before it ran. 2: a format line; intents synced once per batch; `skipped` outcomes.
    /// Both read the same way: a step with an intent and no outcome may have run.
    public static let journalFormat = 2

    public static let holdingsName = "holdings.json"
    public static let journalName = "journal.log"
    public static let allocationsName = "allocations.json"
    public var holdingsPath: String { directory + "/" + Self.holdingsName }
    public var journalPath: String { directory + "/" + Self.journalName }
    public var allocationsPath: String { directory + "/" + Self.allocationsName }

    public struct StoreError: Error, CustomStringConvertible {
        public var message: String
        public var description: String { message }
    }

    /// Loads the snapshot and replays the journal over it (in memory only). A missing
    /// holdings.json with a journal or allocations behind it throws `LostState` unless
    /// `allowingLostState` (show, and `--rebuild-state`, which repairs it).
    public convenience init(directory: String, allowingLostState: Bool = false) throws {
        let files: StateDirectory
        do { files = try StateDirectory(directory) } catch { throw StoreError(message: error.message) }
        try self.init(files, allowingLostState: allowingLostState)
    }

    public init(_ files: StateDirectory, allowingLostState: Bool = false) throws {
        self.files = files
        directory = files.path
        holdings = Holdings()
        allocations = Allocations()
        let recover = "run `vsmmu show` to see what the kernel still holds, then `vsmmu apply FILE --rebuild-state` to rebuild the record from it"
        if let data = try read(Self.holdingsName) {
            do { holdings = try JSONDecoder().decode(Holdings.self, from: Data(data)) } catch {
                throw StoreError(message: "\(holdingsPath) is unreadable (\(error)); vsmmu will not take it for an empty state: \(recover)")
            }
        } else {
            holdingsMissing = true
        }
        if let data = try read(Self.allocationsName) {
            allocationsFound = true
            do { allocations = try JSONDecoder().decode(Allocations.self, from: Data(data)) } catch {
                throw StoreError(message: "\(allocationsPath) is unreadable (\(error)); move it away to start over (guest bus numbers and slots are then allocated anew)")
            }
        }
        try replayJournal()
        if !allowingLostState, let lost = lostState(port: nil) { throw lost }
    }

    deinit { if journalFD >= 0 { _ = Glibc.close(journalFD) } }

    func read(_ name: String) throws -> [UInt8]? {
        do { return try files.read(name) } catch { throw StoreError(message: error.message) }
    }

    func replayJournal() throws {
        guard let data = try read(Self.journalName), !data.isEmpty else { return }
        var open: [Int: JournaledStep] = [:]
        let decoder = JSONDecoder()
        for line in data.split(separator: 10) {
            guard let record = try? decoder.decode(JournalRecord.self, from: Data(line)) else {
                if let header = try? decoder.decode(JournalHeader.self, from: Data(line)), header.journal > Self.journalFormat {
                    throw StoreError(message: "\(journalPath) was written by a newer vsmmu (journal format \(header.journal); this one reads formats 1 to \(Self.journalFormat)); "
                                     + "nothing was changed: finish or recover the apply with that vsmmu, or move the journal away and run `vsmmu show` to see what the kernel holds")
                }
                // The format line, or a torn last line (killed while writing it): its step
                // has an intent and no outcome, so it is unfinished.
                continue
            }
            journalRecords += 1
            sequence = max(sequence, record.seq)
            switch record.phase {
            case .begin:
                if let step = record.step ?? record.op.map(JournaledStep.init) { open[record.seq] = step }
            case .done:
                open[record.seq] = nil
                for p in record.patches ?? [] { holdings.apply(p) }
            case .failed, .skipped:
                open[record.seq] = nil
            }
        }
        interrupted = open.sorted { $0.key < $1.key }.map(\.value)
        for step in interrupted {
            if let g = step.guest, holdings.guests[g] != nil { holdings.guests[g]!.uncertain = true }
        }
    }

    /// Writes the snapshot atomically and empties the journal.
    public func checkpoint() throws {
        try write(try snapshot(holdings), to: Self.holdingsName)
        holdingsMissing = false
        if journalFD >= 0 { _ = Glibc.close(journalFD); journalFD = -1 }
        do { try files.remove(Self.journalName) } catch { throw StoreError(message: error.message) }
        interrupted = []
    }

    public func saveAllocations(_ a: Allocations) throws {
        try ensureHoldingsFile()
        allocations = a
        try write(try snapshot(a), to: Self.allocationsName)
        allocationsFound = true
    }

    /// Before the first allocation or journal record, an (empty) holdings.json: from then
    /// on a missing one means it was lost, never that nothing was done yet.
    func ensureHoldingsFile() throws {
        if holdingsMissing { try checkpointHoldingsOnly() }
    }

    private func checkpointHoldingsOnly() throws {
        try write(try snapshot(holdings), to: Self.holdingsName)
        holdingsMissing = false
    }

    /// A snapshot's bytes, by the journal's encoder (JSONEncoder took a fifth of a large
    /// apply for its two snapshots): the same document, keys in the types' order.
    private func snapshot<T: Encodable>(_ value: T) throws -> [UInt8] {
        let e = JournalEncoder()
        try e.append(value)
        return e.bytes
    }

    /// The holdings, written out by hand (the same document).
    private func snapshot(_ value: Holdings) throws -> [UInt8] {
        let e = JournalEncoder()
        try e.appendHoldings(value)
        return e.bytes
    }

    /// temp file (0600) + fsync + renameat(2), never through a link.
    func write(_ data: [UInt8], to name: String) throws {
        do { try files.writeAtomically(name, data) } catch { throw StoreError(message: error.message) }
    }

    // MARK: journal

    /// Appends records with one write(2); with `sync`, fsyncs the journal after it.
    func append(_ records: [JournalRecord], sync: Bool = false) throws {
        try writeJournal(sync: sync) { out in
            for r in records {
                if r.phase == .begin, let step = r.step {
                    out.appendIntent(seq: r.seq, step)
                } else if r.phase == .done, let patches = r.patches {
                    try out.appendOutcome(seq: r.seq, patches)
                } else {
                    try out.append(r)
                }
                out.appendRaw(10)
            }
        }
    }

    /// What `body` encodes, after the format line on a fresh journal, with one write(2);
    /// with `sync`, fsyncs the journal after it. One encoder serves every write (its
    /// buffer stays allocated: an apply writes a record per step).
    private func writeJournal(sync: Bool, _ body: (JournalEncoder) throws -> Void) throws {
        if journalFD < 0 {
            try ensureHoldingsFile()
            do { journalFD = try files.open(Self.journalName, O_WRONLY | O_APPEND | O_CREAT) } catch {
                throw StoreError(message: error.message)
            }
            var st = stat()
            journalNeedsHeader = fstat(journalFD, &st) == 0 && st.st_size == 0
        }
        let out = journalOut
        out.reset()
        if journalNeedsHeader {
            try out.append(JournalHeader(journal: Self.journalFormat))
            out.appendRaw(10)
        }
        try body(out)
        guard out.withBytes({ StateDirectory.writeAll(journalFD, $0) }) else {
            throw StoreError(message: "cannot append to \(journalPath): \(String(cString: strerror(errno)))")
        }
        journalNeedsHeader = false
        if sync {
            journalSyncs += 1
            guard files.sync(journalFD) else {
                throw StoreError(message: "cannot sync \(journalPath): \(String(cString: strerror(errno)))")
            }
        }
    }

    /// The intents of a batch of steps, synced once: on disk before the first of them runs
    /// (and with them every outcome written before). Returns their sequence numbers.
    public func begin(_ ops: [PlanStep]) throws -> [Int] {
        let first = sequence + 1
        sequence += ops.count   // taken even if the write fails: part of it may be on disk
        try writeJournal(sync: true) { out in
            for (i, op) in ops.enumerated() {
                out.appendIntent(seq: first + i, JournaledStep(op))
                out.appendRaw(10)
            }
        }
        return Array(first..<(first + ops.count))
    }

    public func begin(_ op: PlanStep) throws -> Int { try begin([op])[0] }

    /// The step's outcome, written, not synced: the next batch's fsync makes it durable, or
    /// the checkpoint's synced snapshot replaces the journal.
    public func done(_ seq: Int, _ patches: [HoldingPatch]) throws {
        for p in patches { holdings.apply(p) }
        try writeJournal(sync: false) { out in
            try out.appendOutcome(seq: seq, patches)
            out.appendRaw(10)
        }
    }

    public func failed(_ seq: Int, _ errno: Errno?) throws {
        try append([JournalRecord(seq: seq, phase: .failed, errno: errno?.rawValue)])
    }

    /// Steps of a batch that never ran (an earlier one failed, or a stop was asked).
    public func skipped(_ seqs: [Int]) throws {
        guard !seqs.isEmpty else { return }
        try append(seqs.map { JournalRecord(seq: $0, phase: .skipped) })
    }

    /// Applies patches without a kernel call behind them (recovery bookkeeping).
    public func record(_ patches: [HoldingPatch]) throws {
        sequence += 1
        try append([JournalRecord(seq: sequence, phase: .done, patches: patches)])
        for p in patches { holdings.apply(p) }
    }

    /// The interrupted steps for a message: each of a few, else the first and the last of
    /// them (a batch cut short leaves up to `Executor.defaultBatch` steps "maybe done").
    public var interruptedSummary: String {
        func one(_ s: JournaledStep) -> String { "\(s.index) \(s.call) (\(s.resource))" }
        guard interrupted.count > 3, let first = interrupted.first, let last = interrupted.last else {
            return interrupted.map(one).joined(separator: ", ")
        }
        return "\(one(first)) to \(one(last)) (\(interrupted.count) steps of one journal batch, each maybe done)"
    }

    /// Replaces the record wholesale (`--rebuild-state`) and checkpoints it.
    func replaceHoldings(_ h: Holdings) throws {
        holdings = h
        try checkpoint()
    }
}

/// holdings.json is gone but something says state existed: never read as "nothing held".
public struct LostState: Error, CustomStringConvertible, Sendable {
    public var holdingsPath: String
    /// What was found, one phrase each.
    public var found: [String]
    public var description: String {
        "\(holdingsPath) is missing, but \(found.joined(separator: "; ")). vsmmu will not plan from an empty record: it would bind devices that are "
            + "already bound and take vfio-pci for their original driver. `vsmmu show` lists what was found; `vsmmu apply FILE --rebuild-state` "
            + "closes the kernel objects no record names and rebuilds the record from what the kernel shows (an original driver it cannot know is marked unknown, never guessed)"
    }
}

extension StateStore {
    /// What says this state directory held more than a missing holdings.json shows: journal
    /// records, allocated guests, iommufd contexts or VFIO cdevs the holder still has open
    /// (with `port`; a stray memfd alone says nothing).
    public func lostState(port: KernelPort?) -> LostState? {
        guard holdingsMissing else { return nil }
        var found: [String] = []
        if journalRecords > 0 { found.append("\(journalPath) has \(journalRecords) record(s)") }
        if !allocations.guests.isEmpty {
            found.append("\(allocationsPath) allocates guest(s) \(allocations.guests.keys.sorted().joined(separator: ", "))")
        }
        if let port, let open = try? port.openFiles() {
            let live = open.compactMap { f -> String? in
                switch f.kind {
                case .iommufd, .vfioDevice: return "fd \(f.fd) (\(Recovery.describe(f.kind)))"
                default: return nil
                }
            }
            if !live.isEmpty { found.append("the kernel holds \(live.count) file(s) for this holder: \(live.joined(separator: ", "))") }
        }
        return found.isEmpty ? nil : LostState(holdingsPath: holdingsPath, found: found)
    }
}

/// The journal's first line (format 2 on): `{"journal":2}`.
struct JournalHeader: Codable {
    var journal: Int
}

struct JournalRecord: Codable {
    enum Phase: String, Codable { case begin, done, failed, skipped }
    var seq: Int
    var phase: Phase
    /// A begin's step, as format 1 wrote it (the whole step).
    var op: PlanStep? = nil
    /// A begin's step, as format 2 writes it.
    var step: JournaledStep? = nil
    var patches: [HoldingPatch]?
    var errno: Int32?
}

/// A step's intent as the journal keeps it: the step, and the guest whose iommufd context it
/// acts in. That is all recovery needs: it trusts the kernel, not the journal, for what a
/// maybe-done step did (docs/contract.md §8).
public struct JournaledStep: Codable, Hashable, Sendable {
    public var index: Int
    /// The kernel call (`PlanStep.call`).
    public var call: String
    public var resource: String
    /// nil for sysfs steps.
    public var guest: String?

    public init(_ op: PlanStep) {
        index = op.index; call = op.call; resource = op.resource; guest = op.action.guest
    }
}

/// One change to the holdings, journaled with the step that caused it.
public enum HoldingPatch: Codable, Hashable, Sendable {
    case guest(String, GuestHolding?)
    case ioas(String, ObjectID?)
    case device(String, String, DeviceHolding?)
    case stage2(String, String, Stage2Holding?)
    case memory(String, String, MemoryHolding?)
    case vsmmu(String, String, VSMMUHolding?)
    case originalDriver(PCIAddress, String??)
    /// The device is on vfio-pci by vsmmu's own driver_override and its driver before that
    /// is not known (its record was lost): it is never given back to a guess.
    case originalDriverUnknown(PCIAddress)
    case running(String, RunningGuest?)
    /// The device had no driver before vsmmu moved it (journal format 2 on): written as
    /// `originalDriver(a, .some(nil))` it would read back as "forget", the synthesized
    /// format writing both as null.
    case originalDriverNone(PCIAddress)

    /// Where a device was before vsmmu moves it: its driver, or none.
    static func remembering(_ a: PCIAddress, _ driver: String?) -> HoldingPatch {
        driver.map { .originalDriver(a, .some($0)) } ?? .originalDriverNone(a)
    }
}

extension Holdings {
    mutating func apply(_ p: HoldingPatch) {
        switch p {
        case .guest(let g, let h): guests[g] = h
        case .ioas(let g, let id): guests[g]?.ioas = id
        case .device(let g, let d, let h): guests[g]?.devices[d] = h
        case .stage2(let g, let i, let h): guests[g]?.stage2[i] = h
        case .memory(let g, let r, let h): guests[g]?.memory[r] = h
        case .vsmmu(let g, let v, let h): guests[g]?.vsmmus[v] = h
        case .originalDriver(let a, let d):
            if let d { originalDrivers[a] = .some(d) } else { originalDrivers[a] = nil }
            unknownOriginalDrivers?.remove(a)
        case .originalDriverNone(let a):
            originalDrivers[a] = .some(nil)
            unknownOriginalDrivers?.remove(a)
        case .originalDriverUnknown(let a):
            originalDrivers[a] = nil
            unknownOriginalDrivers = (unknownOriginalDrivers ?? []).union([a])
        case .running(let g, let r): running[g] = r
        }
    }
}

extension OpAction {
    /// The guest whose iommufd context the step works in (nil for sysfs steps).
    var guest: String? {
        switch self {
        case .setDriverOverride, .unbindDriver, .probeDriver, .forgetOriginalDriver: return nil
        case .openIommufd(let g), .ioasAlloc(let g), .destroyIOAS(let g), .closeIommufd(let g), .closeGuest(let g), .forgetGuest(let g): return g
        case .openDevice(let g, _, _), .bindDevice(let g, _), .mockDevice(let g, _, _), .chownDevice(let g, _, _, _), .attach(let g, _, _),
             .detach(let g, _), .closeDevice(let g, _), .forgetDevice(let g, _): return g
        case .allocStage2(let g, _, _, _), .destroyStage2(let g, _): return g
        case .createMemory(let g, _, _, _, _), .mapMemory(let g, _, _, _), .unmapMemory(let g, _), .releaseMemory(let g, _): return g
        case .checkHwInfo(let g, _, _, _), .allocVIOMMU(let g, _, _, _, _), .allocVDevice(let g, _, _, _), .allocNested(let g, _, _, _, _),
             .allocEventQueue(let g, _, _, _), .destroyEventQueue(let g, _, _), .destroyNested(let g, _, _), .destroyVDevice(let g, _, _),
             .destroyVIOMMU(let g, _): return g
        }
    }
}
