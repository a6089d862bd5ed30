import Foundation
import VsmmuKernel
import VsmmuPlanner

/// The state directory: holdings (snapshot + write-ahead journal), allocations, the lock.
///
///   <state>/holdings.json     what the executor holds, as of the last clean finish
///   <state>/journal.log       one JSON line per step since: begin, then done or failed
///   <state>/allocations.json  bus numbers, slots, identifiers (SPEC §2 stability)
///   <state>/lock              flock'ed by the one apply or destroy running
public final class StateStore {
    public let directory: String
    public private(set) var holdings: Holdings
    public private(set) var allocations: Allocations
    /// Operations that began but never finished (the process died inside them).
    public private(set) var interrupted: [PlanStep] = []
    private var journal: Foundation.FileHandle?
    private var sequence = 0

    public var holdingsPath: String { directory + "/holdings.json" }
    public var journalPath: String { directory + "/journal.log" }
    public var allocationsPath: String { directory + "/allocations.json" }

    public struct StoreError: Error, CustomStringConvertible {
        public var message: String
        public var description: String { message }
    }

    /// Loads the snapshot and replays the journal over it (in memory only).
    public init(directory: String) throws {
        self.directory = directory
        holdings = Holdings()
        allocations = Allocations()
        let fm = FileManager.default
        if let data = fm.contents(atPath: holdingsPath) {
            do { holdings = try JSONDecoder().decode(Holdings.self, from: data) } catch {
                throw StoreError(message: "\(holdingsPath) is unreadable (\(error)); move it away to start over")
            }
        }
        if let data = fm.contents(atPath: allocationsPath) {
            do { allocations = try JSONDecoder().decode(Allocations.self, from: data) } catch {
                throw StoreError(message: "\(allocationsPath) is unreadable (\(error)); move it away to start over")
            }
        }
        try replayJournal()
    }

    func replayJournal() throws {
        guard let data = FileManager.default.contents(atPath: journalPath), !data.isEmpty else { return }
        var open: [Int: PlanStep] = [:]
        let decoder = JSONDecoder()
        for line in data.split(separator: 10) {
            // A torn last line (killed while writing it) is an unfinished step.
            guard let record = try? decoder.decode(JournalRecord.self, from: Data(line)) else { continue }
            sequence = max(sequence, record.seq)
            switch record.phase {
            case .begin:
                if let op = record.op { open[record.seq] = op }
            case .done:
                open[record.seq] = nil
                for p in record.patches ?? [] { holdings.apply(p) }
            case .failed:
                open[record.seq] = nil
            }
        }
        interrupted = open.sorted { $0.key < $1.key }.map(\.value)
        for op in interrupted {
            if let g = op.action.guest, holdings.guests[g] != nil { holdings.guests[g]!.uncertain = true }
        }
    }

    /// Writes the snapshot atomically and empties the journal.
    public func checkpoint() throws {
        try ensureDirectory()
        try write(try encoder.encode(holdings), to: holdingsPath)
        try? journal?.close()
        journal = nil
        try? FileManager.default.removeItem(atPath: journalPath)
        interrupted = []
    }

    public func saveAllocations(_ a: Allocations) throws {
        allocations = a
        try ensureDirectory()
        try write(try encoder.encode(a), to: allocationsPath)
    }

    /// One encoder for every record: the journal writes two per step.
    private let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        return e
    }()

    func ensureDirectory() throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    /// temp file + fsync + rename(2): a reader sees the old or the new file, never half.
    func write(_ data: Data, to path: String) throws {
        let tmp = path + ".tmp.\(getpid())"
        guard FileManager.default.createFile(atPath: tmp, contents: data) else {
            throw StoreError(message: "cannot write \(tmp)")
        }
        if let h = Foundation.FileHandle(forWritingAtPath: tmp) { try? h.synchronize(); try? h.close() }
        guard rename(tmp, path) == 0 else { throw StoreError(message: "cannot rename \(tmp) to \(path): errno \(errno)") }
    }

    // MARK: journal

    func append(_ record: JournalRecord) throws {
        if journal == nil {
            try ensureDirectory()
            if !FileManager.default.fileExists(atPath: journalPath) {
                _ = FileManager.default.createFile(atPath: journalPath, contents: nil)
            }
            journal = Foundation.FileHandle(forWritingAtPath: journalPath)
            _ = try journal?.seekToEnd()
        }
        var data = try encoder.encode(record)
        data.append(10)
        try journal?.write(contentsOf: data)
        // fsync: the record is on disk before the kernel call it announces runs.
        if record.phase == .begin { try journal?.synchronize() }
    }

    public func begin(_ op: PlanStep) throws -> Int {
        sequence += 1
        try append(JournalRecord(seq: sequence, phase: .begin, op: op))
        return sequence
    }

    public func done(_ seq: Int, _ patches: [HoldingPatch]) throws {
        for p in patches { holdings.apply(p) }
        try append(JournalRecord(seq: seq, phase: .done, patches: patches))
    }

    public func failed(_ seq: Int, _ errno: Errno?) throws {
        try append(JournalRecord(seq: seq, phase: .failed, errno: errno?.rawValue))
    }

    /// Applies patches without a kernel call behind them (recovery bookkeeping).
    public func record(_ patches: [HoldingPatch]) throws {
        sequence += 1
        try append(JournalRecord(seq: sequence, phase: .done, patches: patches))
        for p in patches { holdings.apply(p) }
    }
}

struct JournalRecord: Codable {
    enum Phase: String, Codable { case begin, done, failed }
    var seq: Int
    var phase: Phase
    var op: PlanStep?
    var patches: [HoldingPatch]?
    var errno: Int32?
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
    case running(String, RunningGuest?)
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
