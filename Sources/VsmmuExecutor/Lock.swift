import Glibc
import VsmmuFiles

/// One apply or destroy at a time per state directory (docs/contract.md §7): flock(2) on
/// `<state>/lock`, with the holder's pid written in it for the message. The lock is
/// opened from the checked state directory without following links (a `lock` that is
/// a link to another file is refused, never truncated).
public final class StateLock {
    private let fd: Int32
    public let path: String

    /// Another vsmmu holds the lock: the only failure that means "wait".
    public struct Busy: Error, CustomStringConvertible {
        public var path: String
        public var holder: String
        public var description: String {
            "another vsmmu (\(holder)) holds the lock \(path); it is applying or destroying now. Wait for it to finish, then run again."
        }
    }

    /// The lock cannot be taken for another reason (what it is, said plainly).
    public struct Unusable: Error, CustomStringConvertible {
        public var message: String
        public var description: String { message }
    }

    public convenience init(directory: String) throws {
        let dir: StateDirectory
        do { dir = try StateDirectory(directory) } catch { throw Unusable(message: error.message) }
        try self.init(in: dir)
    }

    public init(in dir: StateDirectory) throws {
        path = dir.path + "/lock"
        do { fd = try dir.open("lock", O_RDWR | O_CREAT) } catch {
            throw Unusable(message: "cannot take the lock: \(error.message)")
        }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let e = errno
            // Read through the fd: the path may have changed since it was opened.
            var buffer = [UInt8](repeating: 0, count: 32)
            let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
            Glibc.close(fd)
            guard e == EWOULDBLOCK else { throw Unusable(message: "cannot lock \(path): \(String(cString: strerror(e)))") }
            let pid = String(decoding: buffer.prefix(max(0, n)), as: UTF8.self).filter(\.isNumber)
            throw Busy(path: path, holder: pid.isEmpty ? "unknown pid" : "pid \(pid)")
        }
        _ = ftruncate(fd, 0)
        _ = pwrite(fd, "\(getpid())\n", "\(getpid())\n".utf8.count, 0)
    }

    deinit {
        _ = ftruncate(fd, 0)
        flock(fd, LOCK_UN)
        Glibc.close(fd)
    }
}
