import Foundation

/// One apply or destroy at a time per state directory (SPEC §7): flock(2) on
/// `<state>/lock`, with the holder's pid written in it for the message.
public final class StateLock {
    private let fd: Int32
    public let path: String

    public struct Busy: Error, CustomStringConvertible {
        public var path: String
        public var holder: String
        public var description: String {
            "another vsmmu (\(holder)) holds the lock \(path); it is applying or destroying now. Wait for it to finish, then run again."
        }
    }

    public init(directory: String) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        path = directory + "/lock"
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw Busy(path: path, holder: "cannot open: errno \(errno)") }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let holder = (try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
            Glibc.close(fd)
            throw Busy(path: path, holder: holder.map { $0.isEmpty ? "unknown pid" : "pid \($0)" } ?? "unknown pid")
        }
        _ = ftruncate(fd, 0)
        let pid = "\(getpid())\n"
        _ = pid.withCString { write(fd, $0, strlen($0)) }
    }

    deinit {
        _ = ftruncate(fd, 0)
        flock(fd, LOCK_UN)
        Glibc.close(fd)
    }
}
