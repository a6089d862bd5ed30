import Glibc
import Synchronization

/// A directory vsmmu keeps state in (the state directory, its `sim/`), opened once and
/// checked: every file in it is reached with openat(2) from that fd and O_NOFOLLOW, so
/// a link planted in it (a `lock` pointing at a root-owned file) is refused instead of
/// followed, and files are created 0600. A directory owned by another user, or writable
/// by group or others, is refused: whoever can write it could swap its files.
public final class StateDirectory: @unchecked Sendable {
    public let path: String
    /// O_DIRECTORY | O_NOFOLLOW descriptor; closed with the object.
    public let fd: Int32

    public struct Failure: Error, CustomStringConvertible, Sendable {
        public var message: String
        public var errno: Int32
        public init(_ message: String, errno: Int32 = 0) { self.message = message; self.errno = errno }
        public var description: String { message }
    }

    /// Opens `path`, creating it (and missing parents) with mode 0700 when `create`.
    public convenience init(_ path: String, create: Bool = true) throws(Failure) {
        let clean = path.count > 1 && path.hasSuffix("/") ? String(path.dropLast()) : path
        if create { try Self.makeDirectories(clean) }
        let fd = Glibc.open(clean, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { throw Self.openFailure(clean, errno) }
        try self.init(path: clean, fd: fd)
    }

    private init(path: String, fd: Int32) throws(Failure) {
        self.path = path
        self.fd = fd
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw Failure("\(path): cannot stat (\(Self.text(errno)))", errno: errno) }
        let me = geteuid()
        if st.st_uid != me {
            throw Failure("the state directory \(path) belongs to uid \(st.st_uid), not to you (uid \(me)): another user could plant links or files in it "
                          + "and redirect what vsmmu writes. Use a directory you own (--state-dir DIR), or `chown \(me) \(path)` if it is yours",
                          errno: EPERM)
        }
        if st.st_mode & 0o022 != 0 {
            throw Failure("the state directory \(path) is writable by \(st.st_mode & 0o002 != 0 ? "every user" : "its group") (mode \(String(st.st_mode & 0o7777, radix: 8))): "
                          + "others could replace its files. Run `chmod go-w \(path)` (vsmmu creates it 0700)", errno: EPERM)
        }
    }

    deinit { _ = Glibc.close(fd) }

    /// Every fsync(2) vsmmu makes of a file in this directory goes through here, so tests
    /// can count them (a figure a benchmark depends on, never timed in a test).
    public func sync(_ file: Int32) -> Bool {
        syncCounter.add(1, ordering: .relaxed)
        return fsync(file) == 0
    }

    /// How many fsyncs `sync` has made.
    public var syncs: Int { syncCounter.load(ordering: .relaxed) }
    private let syncCounter = Atomic<Int>(0)

    /// A subdirectory (created 0700 when `create`), opened from this one without following links.
    public func subdirectory(_ name: String, create: Bool = true) throws(Failure) -> StateDirectory {
        if create, mkdirat(fd, name, 0o700) != 0, errno != EEXIST {
            throw Failure("cannot create \(path)/\(name): \(Self.text(errno))", errno: errno)
        }
        let sub = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard sub >= 0 else { throw Self.openFailure(path + "/" + name, errno) }
        return try StateDirectory(path: path + "/" + name, fd: sub)
    }

    /// Opens a regular file in this directory: never through a link, never a FIFO or a
    /// device, created 0600. The caller owns the returned fd.
    public func open(_ name: String, _ flags: Int32) throws(Failure) -> Int32 {
        // O_NONBLOCK: a FIFO planted under this name must not hang the open.
        let f = openat(fd, name, flags | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, 0o600)
        guard f >= 0 else { throw Self.openFailure(path + "/" + name, errno) }
        var st = stat()
        guard fstat(f, &st) == 0, st.st_mode & S_IFMT == S_IFREG else {
            _ = Glibc.close(f)
            throw Failure("\(path)/\(name) is not a regular file; vsmmu keeps only its own files there: remove it", errno: EINVAL)
        }
        _ = fcntl(f, F_SETFL, fcntl(f, F_GETFL) & ~O_NONBLOCK)
        return f
    }

    /// The whole file, or nil when there is none.
    public func read(_ name: String) throws(Failure) -> [UInt8]? {
        let f: Int32
        do { f = try open(name, O_RDONLY) } catch let e where e.errno == ENOENT { return nil }
        defer { _ = Glibc.close(f) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(f, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw Failure("cannot read \(path)/\(name): \(Self.text(errno))", errno: errno)
            }
            if n == 0 { return out }
            out += chunk.prefix(n)
        }
    }

    /// Whether `name` exists (a link counts: it is not followed).
    public func exists(_ name: String) -> Bool {
        var st = stat()
        return fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0
    }

    /// temp file (O_EXCL, 0600) + fsync + renameat(2): a reader sees the old or the new
    /// file, never half; a link under `name` is replaced, not followed.
    public func writeAtomically(_ name: String, _ bytes: [UInt8]) throws(Failure) {
        let tmp = ".\(name).tmp.\(getpid())"
        _ = unlinkat(fd, tmp, 0)   // a leftover of a killed run of this pid
        let f = try open(tmp, O_WRONLY | O_CREAT | O_EXCL)
        let ok = Self.writeAll(f, bytes) && sync(f)
        let e = errno
        _ = Glibc.close(f)
        guard ok else {
            _ = unlinkat(fd, tmp, 0)
            throw Failure("cannot write \(path)/\(tmp): \(Self.text(e))", errno: e)
        }
        guard renameat(fd, tmp, fd, name) == 0 else {
            let e = errno
            _ = unlinkat(fd, tmp, 0)
            throw Failure("cannot rename \(path)/\(tmp) to \(name): \(Self.text(e))", errno: e)
        }
        _ = sync(fd)
    }

    /// Removes `name` (a link itself, never its target); a missing file is fine.
    public func remove(_ name: String) throws(Failure) {
        if unlinkat(fd, name, 0) != 0, errno != ENOENT {
            throw Failure("cannot remove \(path)/\(name): \(Self.text(errno))", errno: errno)
        }
    }

    /// write(2) until done (EINTR retried).
    public static func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { writeAll(fd, $0) }
    }

    /// write(2) until done (EINTR retried).
    public static func writeAll(_ fd: Int32, _ b: UnsafeRawBufferPointer) -> Bool {
        guard let base = b.baseAddress else { return true }
        var at = 0
        while at < b.count {
            let n = Glibc.write(fd, base + at, b.count - at)
            if n < 0 {
                if errno == EINTR { continue }
                return false
            }
            at += n
        }
        return true
    }

    // MARK: messages

    static func text(_ e: Int32) -> String { String(cString: strerror(e)) }

    /// What an open's errno means here, said plainly.
    static func openFailure(_ path: String, _ e: Int32) -> Failure {
        switch e {
        case ELOOP:
            return Failure("\(path) is a symbolic link: vsmmu never follows links in its state directory (one could point it at any file); remove the link", errno: e)
        case EISDIR:
            return Failure("\(path) is a directory where vsmmu keeps a file: remove it", errno: e)
        case ENOTDIR:
            return Failure("\(path) is not a directory (or a link to one, which vsmmu does not follow)", errno: e)
        case EACCES, EPERM, EROFS:
            return Failure("\(path): \(text(e)) for uid \(geteuid()): the state directory must be writable by whoever runs vsmmu; choose another with --state-dir DIR", errno: e)
        default:
            return Failure("cannot open \(path): \(text(e))", errno: e)
        }
    }

    /// mkdir -p with mode 0700 for every directory it creates.
    static func makeDirectories(_ path: String) throws(Failure) {
        var prefix = path.hasPrefix("/") ? "" : "."
        for part in path.split(separator: "/", omittingEmptySubsequences: true) {
            prefix += "/" + part
            if mkdir(prefix, 0o700) == 0 || errno == EEXIST { continue }
            let e = errno
            var st = stat()
            if e == EACCES || e == EROFS || e == EPERM, stat(prefix, &st) == 0 { continue }   // exists; unwritable parent is fine
            let why = e == ENOTDIR ? "a component of it is a file, not a directory" : text(e)
            throw Failure("cannot create the state directory \(path) (mkdir \(prefix): \(why)); choose another with --state-dir DIR", errno: e)
        }
    }
}
