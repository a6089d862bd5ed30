import CVsmmuUAPI
import Foundation

/// A process on this machine, told apart from a later one that reuses its pid by its start
/// time (field 22 of /proc/<pid>/stat, clock ticks after boot).
public struct LocalProcess: Hashable, Sendable {
    public var pid: Int32
    public var startTime: UInt64?

    public init(pid: Int32, startTime: UInt64?) { self.pid = pid; self.startTime = startTime }

    /// This process now.
    public static var current: LocalProcess { LocalProcess(pid: getpid(), startTime: stat(getpid())?.startTime) }

    /// The process `pid` as it is now; nil when there is none or it is a zombie (a zombie
    /// has already closed every fd it held: for a VMM, its guest is gone).
    public static func find(_ pid: Int32, procRoot: String = "/proc") -> LocalProcess? {
        guard let s = stat(pid, procRoot: procRoot), s.state != "Z", s.state != "X" else { return nil }
        return LocalProcess(pid: pid, startTime: s.startTime)
    }

    /// Still the same process (same pid, same start time), and not exited.
    public func isAlive(procRoot: String = "/proc") -> Bool {
        guard let now = LocalProcess.find(pid, procRoot: procRoot) else { return false }
        return startTime == nil || now.startTime == startTime
    }

    /// /proc/<pid>/comm, or nil.
    public static func command(_ pid: Int32, procRoot: String = "/proc") -> String? {
        (try? String(contentsOfFile: "\(procRoot)/\(pid)/comm", encoding: .utf8))?.trimmingCharacters(in: .newlines)
    }

    static func stat(_ pid: Int32, procRoot: String = "/proc") -> (state: Character, startTime: UInt64?)? {
        guard let text = try? String(contentsOfFile: "\(procRoot)/\(pid)/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")") else { return nil }
        // After "pid (comm) ": field 3 is the state, field 22 the start time.
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard let state = fields.first?.first else { return nil }
        return (state, fields.count > 19 ? UInt64(fields[19]) : nil)
    }
}

/// Waits for a process to exit with a pidfd (no polling, no reaping: the VMM is not our child).
public final class ProcessExitWatch: @unchecked Sendable {
    private let fd: Int32

    /// nil when the process is already gone (ESRCH) or pidfds are unavailable.
    public init?(pid: Int32) {
        let r = vsmmu_pidfd_open(pid)
        guard r >= 0 else { return nil }
        fd = r
    }

    deinit { close(fd) }

    /// Blocks until the process exits or `timeout` seconds pass (nil: forever). True if it exited.
    public func wait(timeout: Double? = nil) -> Bool {
        let ms = timeout.map { Int32(min($0 * 1000, Double(Int32.max))) } ?? -1
        return vsmmu_wait_readable(fd, ms) == 1
    }
}
