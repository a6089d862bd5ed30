#if os(Linux)
import CVsmmuUAPI
import Foundation
import Glibc
import VsmmuKernel

/// What stat(2) says about a path.
public struct FileStatus: Hashable, Sendable {
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public init(mode: UInt32, uid: UInt32, gid: UInt32) { self.mode = mode; self.uid = uid; self.gid = gid }
}

/// One fd the backend holds, as /proc/<pid>/fd and fdinfo show it.
public struct HeldFile: Hashable, Sendable {
    public var fd: Int32
    /// readlink of /proc/<pid>/fd/N: a path, `anon_inode:[...]`, `/memfd:name (deleted)`.
    public var target: String
    public var fdinfo: String
    public init(fd: Int32, target: String, fdinfo: String) { self.fd = fd; self.target = target; self.fdinfo = fdinfo }
}

/// The one seam for every operating-system call the Linux backend makes besides ioctl:
/// device files, sysfs, memfd, stat/chown, anonymous memory and the list of held fds.
/// `LocalHostFiles` performs them on this machine; `RemoteExecutor` on another kernel
/// through vsmmu-remote (docs/remote-executor.md). fds are handles, valid only through the
/// seam that returned them. Failures are `KernelCallError`s with a generic call name
/// (OPEN, WRITE, ...); callers rename the call and keep errno and detail.
public protocol HostFiles: AnyObject, Sendable {
    /// Where the calls run, for messages: "this machine", "remote executor at unix:/path".
    var location: String { get }
    /// Names the process that holds the fds: it differs after that process was replaced
    /// (a restarted agent, a new executor connection).
    var processIdentity: String { get }
    /// uname's release and node name of the kernel the calls run on.
    func systemName() -> (release: String, hostname: String)
    /// open(2) with O_CLOEXEC added; EINTR retried.
    func open(_ path: String, flags: Int32) throws(KernelCallError) -> Int32
    func close(_ fd: Int32)
    /// The whole file (sysfs attributes are small).
    func read(_ path: String) throws(KernelCallError) -> [UInt8]
    func readLink(_ path: String) throws(KernelCallError) -> String
    /// Entry names, without `.` and `..`, in no particular order.
    func listDirectory(_ path: String) throws(KernelCallError) -> [String]
    /// open(O_WRONLY|O_TRUNC) and one write(2), as `echo x > attr` does.
    func write(_ path: String, _ data: [UInt8]) throws(KernelCallError)
    /// memfd_create(2) with `flags`, ftruncated to `size`.
    func memfd(name: String, size: UInt64, flags: UInt32) throws(KernelCallError) -> Int32
    /// stat(2) (following links); nil when the path does not exist or cannot be seen.
    func status(_ path: String) -> FileStatus?
    func chown(_ path: String, uid: UInt32, gid: UInt32) throws(KernelCallError)
    /// Private anonymous read/write memory; returns its address in the process that maps it.
    func mapAnonymous(size: UInt64, hugepageLog2: UInt32?) throws(KernelCallError) -> UInt64
    func unmap(address: UInt64, size: UInt64)
    /// The fds the backend holds (locally: every fd of this process).
    func heldFiles() throws(KernelCallError) -> [HeldFile]
    /// RLIMIT_MEMLOCK and CAP_IPC_LOCK of the process that pins (KernelPort.limitLockedMemory).
    func limitLockedMemory(_ bytes: UInt64?) throws(KernelCallError)
}

extension HostFiles {
    public func exists(_ path: String) -> Bool { status(path) != nil }
    public func limitLockedMemory(_ bytes: UInt64?) throws(KernelCallError) {
        throw KernelCallError("MEMLOCK", .EOPNOTSUPP, "\(location) cannot change its locked-memory limit")
    }
}

/// The system calls on this machine, exactly as the backend made them before the seam.
public final class LocalHostFiles: HostFiles {
    /// pid and start time (field 22 of /proc/self/stat): a reused pid is another process.
    public let processIdentity: String = {
        let stat = (try? String(contentsOfFile: "/proc/self/stat", encoding: .utf8)) ?? ""
        let fields = stat.split(separator: ")").last?.split(separator: " ") ?? []
        return "pid \(getpid()) started \(fields.count > 19 ? String(fields[19]) : "?")"
    }()

    public init() {}

    public var location: String { "this machine" }

    public func systemName() -> (release: String, hostname: String) {
        var uts = utsname()
        uname(&uts)
        let release = withUnsafeBytes(of: &uts.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let hostname = withUnsafeBytes(of: &uts.nodename) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        return (release, hostname)
    }

    public func open(_ path: String, flags: Int32) throws(KernelCallError) -> Int32 {
        var fd: Int32
        repeat { fd = Glibc.open(path, flags | O_CLOEXEC) } while fd < 0 && errno == EINTR
        guard fd >= 0 else { throw KernelCallError("OPEN", Errno(errno), path) }
        return fd
    }

    public func close(_ fd: Int32) { _ = Glibc.close(fd) }

    // read, readLink and listDirectory are plain system calls (open/read/close, readlink,
    // opendir/readdir): every plan reads a dozen sysfs files per device, and Foundation's
    // file APIs cost several times the calls themselves (docs/live-speed.md §2).
    // Failures are ENOENT, as they were when Foundation answered them.

    public func read(_ path: String) throws(KernelCallError) -> [UInt8] {
        var fd: Int32
        repeat { fd = Glibc.open(path, O_RDONLY | O_CLOEXEC) } while fd < 0 && errno == EINTR
        guard fd >= 0 else { throw KernelCallError("READ", .ENOENT, path) }
        defer { _ = Glibc.close(fd) }
        // sysfs attributes fit in a page; /proc and modules.alias grow the buffer.
        var out: [UInt8] = []
        var chunk = 4096
        while true {
            let start = out.count
            out.append(contentsOf: repeatElement(0, count: chunk))
            var n: Int
            repeat { n = out.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + start, chunk) } } while n < 0 && errno == EINTR
            guard n >= 0 else { throw KernelCallError("READ", .ENOENT, path) }
            out.removeLast(chunk - n)
            if n == 0 { return out }
            chunk = min(chunk * 2, 1 << 20)
        }
    }

    public func readLink(_ path: String) throws(KernelCallError) -> String {
        var buffer = [UInt8](repeating: 0, count: Int(PATH_MAX))
        let n = buffer.withUnsafeMutableBytes { Glibc.readlink(path, $0.baseAddress!.assumingMemoryBound(to: CChar.self), $0.count) }
        guard n >= 0 else { throw KernelCallError("READLINK", .ENOENT, path) }
        return String(decoding: buffer[0..<n], as: UTF8.self)
    }

    public func listDirectory(_ path: String) throws(KernelCallError) -> [String] {
        guard let dir = opendir(path) else { throw KernelCallError("LISTDIR", .ENOENT, path) }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: &entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    public func write(_ path: String, _ data: [UInt8]) throws(KernelCallError) {
        let fd = Glibc.open(path, O_WRONLY | O_TRUNC | O_CLOEXEC)
        guard fd >= 0 else { throw KernelCallError("WRITE", Errno(errno), "open \(path)") }
        defer { _ = Glibc.close(fd) }
        var r: Int
        repeat {
            r = data.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        } while r < 0 && errno == EINTR
        if r < 0 {
            throw KernelCallError("WRITE", Errno(errno), "\(path) <- \(String(decoding: data, as: UTF8.self).trimmingCharacters(in: .newlines))")
        }
    }

    public func memfd(name: String, size: UInt64, flags: UInt32) throws(KernelCallError) -> Int32 {
        let fd = vsmmu_memfd_create(name, flags)
        guard fd >= 0 else { throw KernelCallError(.memfdCreate, Errno(-fd), "name=\(name)") }
        guard ftruncate(fd, off_t(truncatingIfNeeded: size)) == 0 else {
            let e = errno
            _ = Glibc.close(fd)
            throw KernelCallError(.memfdCreate, Errno(e), "ftruncate \(name) to \(size)")
        }
        return fd
    }

    public func status(_ path: String) -> FileStatus? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return FileStatus(mode: st.st_mode, uid: st.st_uid, gid: st.st_gid)
    }

    public func chown(_ path: String, uid: UInt32, gid: UInt32) throws(KernelCallError) {
        guard Glibc.chown(path, uid, gid) == 0 else { throw KernelCallError("CHOWN", Errno(errno), path) }
    }

    public func mapAnonymous(size: UInt64, hugepageLog2: UInt32?) throws(KernelCallError) -> UInt64 {
        var flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE
        if let huge = hugepageLog2 { flags |= MAP_HUGETLB | Int32(bitPattern: huge << 26) }
        guard let p = mmap(nil, Int(size), PROT_READ | PROT_WRITE, flags, -1, 0), p != MAP_FAILED else {
            throw KernelCallError(.mmapAnon, Errno(errno), "size=\(size)")
        }
        return UInt64(UInt(bitPattern: p))
    }

    public func limitLockedMemory(_ bytes: UInt64?) throws(KernelCallError) {
        let r = vsmmu_limit_memlock(bytes == nil ? 1 : 0, bytes ?? 0)
        guard r == 0 else { throw KernelCallError("MEMLOCK", Errno(-r), bytes.map { "limit=\($0)" } ?? "restore") }
    }

    public func unmap(address: UInt64, size: UInt64) {
        if let p = UnsafeMutableRawPointer(bitPattern: UInt(address)) { _ = munmap(p, Int(size)) }
    }

    public func heldFiles() throws(KernelCallError) -> [HeldFile] {
        guard let names = try? listDirectory("/proc/self/fd") else {
            throw KernelCallError("PROC_FD", .ENOENT, "/proc/self/fd")
        }
        // The directory's own fd is listed but gone by now: readlink fails and it is skipped.
        return names.compactMap { name in
            guard let fd = Int32(name), let target = try? readLink("/proc/self/fd/\(name)") else { return nil }
            let info = (try? String(contentsOfFile: "/proc/self/fdinfo/\(name)", encoding: .utf8)) ?? ""
            return HeldFile(fd: fd, target: target, fdinfo: info)
        }
    }
}
#endif
