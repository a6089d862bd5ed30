#if os(Linux)
import CVsmmuUAPI
import Foundation
import Glibc
import VsmmuKernel

/// A VMM started by the executor (SPAWN), as WAIT sees it.
public enum RemoteVMMStatus: Equatable, Sendable {
    case running
    /// Its exit status; 128 + N when signal N killed it.
    case exited(Int32)
}

/// A client of `vsmmu-remote` (docs/remote-executor.md): both of the Linux backend's seams,
/// `IoctlTransport` and `HostFiles`, performed by the executor on its kernel. fds it
/// returns are handles in the executor's process, passed back verbatim.
///
/// Requests are serialized (one in flight). A transport failure (the executor gone, a
/// reply later than `timeout`, a malformed reply) breaks the connection for good: the
/// stream may be out of step, so every later call fails with the same message.
public final class RemoteExecutor: IoctlTransport, HostFiles, @unchecked Sendable {
    /// Operation numbers of the protocol.
    enum Op: UInt32 {
        case hello = 0, open, close, ioctl, read, readLink, listDirectory, write, memfd, stat, chown, mmapAnonymous, munmap, fds, bye, spawn, wait, memlock
        var name: String {
            ["HELLO", "OPEN", "CLOSE", "IOCTL", "READ", "READLINK", "LISTDIR", "WRITE", "MEMFD", "STAT", "CHOWN", "MMAP_ANON", "MUNMAP", "FDS", "BYE", "SPAWN", "WAIT"][Int(rawValue)]
        }
    }

    public static let protocolVersion: Int32 = 1
    static let maxMessage = 16 << 20

    /// "unix:/path", or what a test calls its fd pair.
    public let endpoint: String
    public var location: String { "remote executor at \(endpoint)" }
    /// One executor process serves one connection (and closes every fd when it ends).
    public let processIdentity = "remote connection \(UUID().uuidString)"
    /// Seconds to wait for each reply.
    public let timeout: Double
    /// HELLO's answer: the executor's `uname -r` and `uname -m`.
    public private(set) var remoteDescription = ""

    private let readFD: Int32
    private let writeFD: Int32
    private let ownsFDs: Bool
    private let isSocket: Bool
    private let lock = NSLock()
    private var sequence: UInt32 = 0
    private var failure: (errno: Errno, message: String)?

    /// Connects to `unix:PATH` and says HELLO.
    public convenience init(address: String, timeout: Double = 30) throws(KernelCallError) {
        guard address.hasPrefix("unix:"), address.count > 5 else {
            throw KernelCallError("REMOTE_CONNECT", .EINVAL, "\(address): a remote executor address is unix:PATH")
        }
        let path = String(address.dropFirst(5))
        let fd = vsmmu_connect_unix(path)
        guard fd >= 0 else { throw KernelCallError("REMOTE_CONNECT", Errno(-fd), "cannot connect to the remote executor at \(address)") }
        try self.init(readFD: fd, writeFD: fd, endpoint: address, timeout: timeout, ownsFDs: true)
    }

    /// Speaks over an existing pair of fds (a socketpair, or pipes to a child's stdin and
    /// stdout) and says HELLO. The fds stay the caller's unless `ownsFDs`.
    public init(readFD: Int32, writeFD: Int32, endpoint: String, timeout: Double = 30, ownsFDs: Bool = false) throws(KernelCallError) {
        self.readFD = readFD
        self.writeFD = writeFD
        self.endpoint = endpoint
        self.timeout = timeout
        self.ownsFDs = ownsFDs
        var st = stat()
        isSocket = fstat(writeFD, &st) == 0 && st.st_mode & S_IFMT == S_IFSOCK
        var hello = try exchange(.hello, Message())
        remoteDescription = (try? hello.payload.string()) ?? ""
        guard hello.result == Self.protocolVersion else {
            let message = "\(location) speaks protocol version \(hello.result), this vsmmu \(Self.protocolVersion): use a vsmmu-remote built from the same source"
            breakConnection(.EPROTO, message)
            throw KernelCallError("REMOTE_HELLO", .EPROTO, message)
        }
    }

    deinit {
        if ownsFDs {
            _ = Glibc.close(readFD)
            if writeFD != readFD { _ = Glibc.close(writeFD) }
        }
    }

    /// BYE: the executor closes every fd it holds (the remote kernel tears the objects
    /// down) and exits. Later calls fail.
    public func bye() {
        _ = try? exchange(.bye, Message())
        breakConnection(.EPIPE, "\(location): this side said BYE")
    }

    // MARK: framing

    /// A request or reply body being built: little-endian integers, `str`/`bytes` as u32 n + n bytes.
    struct Message {
        var bytes: [UInt8] = []
        mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
        mutating func i32(_ v: Int32) { u32(UInt32(bitPattern: v)) }
        mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
        mutating func data(_ d: [UInt8]) { u32(UInt32(d.count)); bytes += d }
        mutating func string(_ s: String) { data(Array(s.utf8)) }
    }

    /// Reads a reply's payload; running short is a protocol error.
    struct Payload {
        let bytes: [UInt8]
        var at = 0
        var atEnd: Bool { at >= bytes.count }
        struct Short: Error {}
        mutating func take(_ n: Int) throws(Short) -> ArraySlice<UInt8> {
            guard n >= 0, bytes.count - at >= n else { throw Short() }
            defer { at += n }
            return bytes[at..<at + n]
        }
        mutating func u32() throws(Short) -> UInt32 { try take(4).reversed().reduce(0) { $0 << 8 | UInt32($1) } }
        mutating func i32() throws(Short) -> Int32 { Int32(bitPattern: try u32()) }
        mutating func u64() throws(Short) -> UInt64 { try take(8).reversed().reduce(0) { $0 << 8 | UInt64($1) } }
        mutating func data() throws(Short) -> [UInt8] { Array(try take(Int(try u32()))) }
        mutating func string() throws(Short) -> String { String(decoding: try data(), as: UTF8.self) }
        /// A count of items of at least `itemBytes` each, checked against the bytes that
        /// remain before anything is allocated for them (a count of 0xFFFFFFFF in a short
        /// reply is malformed, not 4 G items).
        mutating func count(itemBytes: Int) throws(Short) -> Int {
            let n = Int(try u32())
            guard n <= (bytes.count - at) / max(1, itemBytes) else { throw Short() }
            return n
        }
        /// `count(itemBytes:)` items read by `item`.
        mutating func items<T>(itemBytes: Int, _ item: (inout Payload) throws(Short) -> T) throws(Short) -> [T] {
            let n = try count(itemBytes: itemBytes)
            var out: [T] = []
            out.reserveCapacity(n)
            for _ in 0..<n { out.append(try item(&self)) }
            return out
        }
    }

    struct Reply {
        var result: Int32
        var payload: Payload
    }

    func breakConnection(_ errno: Errno, _ message: String) {
        if failure == nil { failure = (errno, message) }
    }

    public var transportFailure: String? {
        lock.lock(); defer { lock.unlock() }
        return failure?.message
    }

    /// Sends one request and waits for its reply.
    func exchange(_ op: Op, _ arguments: Message) throws(KernelCallError) -> Reply {
        lock.lock()
        defer { lock.unlock() }
        if let failure { throw KernelCallError(op.name, failure.errno, failure.message) }
        sequence &+= 1
        let seq = sequence
        var frame = Message()
        frame.u32(UInt32(8 + arguments.bytes.count))
        frame.u32(op.rawValue)
        frame.u32(seq)
        frame.bytes += arguments.bytes
        do {
            try send(frame.bytes)
            let deadline = Date().addingTimeInterval(timeout)
            var header = Payload(bytes: try receive(4, op, deadline))
            let length = Int(try header.u32())
            guard length >= 8, length <= Self.maxMessage else {
                throw KernelCallError(op.name, .EPROTO, "\(location) sent a reply of \(length) bytes to \(op.name)")
            }
            var body = Payload(bytes: try receive(length, op, deadline))
            guard try body.u32() == seq else { throw KernelCallError(op.name, .EPROTO, "\(location) answered \(op.name) out of sequence") }
            let result = try body.i32()
            // A result is a count, an fd or -errno (1...4095): anything below would overflow
            // where it is negated into an Errno (found by the remote-reply fuzz target).
            guard result >= -4095 else { throw KernelCallError(op.name, .EPROTO, "\(location) answered \(op.name) with \(result), neither a result nor -errno") }
            return Reply(result: result, payload: Payload(bytes: Array(body.bytes[8...])))
        } catch let error as KernelCallError {
            breakConnection(error.errno, error.detail)
            throw KernelCallError(op.name, error.errno, error.detail)
        } catch {
            let message = "\(location) sent a malformed reply to \(op.name)"
            breakConnection(.EPROTO, message)
            throw KernelCallError(op.name, .EPROTO, message)
        }
    }

    var closedMessage: String { "\(location) closed the connection" }

    private func send(_ bytes: [UInt8]) throws(KernelCallError) {
        var sent = 0
        while sent < bytes.count {
            let r = bytes.withUnsafeBytes { b in writeSome(b.baseAddress! + sent, b.count - sent) }
            if r < 0 {
                let e = errno
                if e == EINTR || e == EAGAIN { continue }
                if e == EPIPE || e == ECONNRESET { throw KernelCallError("", .EPIPE, closedMessage) }
                throw KernelCallError("", Errno(e), "writing to \(location) failed")
            }
            sent += r
        }
    }

    /// One write that cannot raise SIGPIPE: MSG_NOSIGNAL on a socket; on a pipe, SIGPIPE
    /// blocked on this thread for the write and a pending one taken back (the process's
    /// handlers stay as they are).
    private func writeSome(_ p: UnsafeRawPointer, _ n: Int) -> Int {
        if isSocket { return Glibc.send(writeFD, p, n, Int32(MSG_NOSIGNAL)) }
        var pipeSignal = sigset_t(), old = sigset_t()
        sigemptyset(&pipeSignal)
        sigaddset(&pipeSignal, SIGPIPE)
        pthread_sigmask(SIG_BLOCK, &pipeSignal, &old)
        let r = Glibc.write(writeFD, p, n)
        let e = errno
        if r < 0 && e == EPIPE {
            var pending = sigset_t()
            sigpending(&pending)
            if sigismember(&pending, SIGPIPE) == 1 {
                var zero = timespec()
                _ = sigtimedwait(&pipeSignal, nil, &zero)
            }
        }
        pthread_sigmask(SIG_SETMASK, &old, nil)
        errno = e
        return r
    }

    private func receive(_ count: Int, _ op: Op, _ deadline: Date) throws(KernelCallError) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let left = deadline.timeIntervalSinceNow
            guard left > 0 else {
                throw KernelCallError("", .ETIMEDOUT, "\(location) did not answer \(op.name) within \(Int(timeout.rounded(.up))) s")
            }
            var p = pollfd(fd: readFD, events: Int16(POLLIN), revents: 0)
            let ready = poll(&p, 1, Int32(min(left * 1000, Double(Int32.max)).rounded(.up)))
            if ready < 0 {
                if errno == EINTR { continue }
                throw KernelCallError("", Errno(errno), "waiting for \(location) failed")
            }
            if ready == 0 { continue }
            let r = out.withUnsafeMutableBytes { Glibc.read(readFD, $0.baseAddress! + got, count - got) }
            if r == 0 { throw KernelCallError("", .EPIPE, closedMessage) }
            if r < 0 {
                let e = errno
                if e == EINTR || e == EAGAIN { continue }
                if e == ECONNRESET { throw KernelCallError("", .EPIPE, closedMessage) }
                throw KernelCallError("", Errno(e), "reading from \(location) failed")
            }
            got += r
        }
        return out
    }

    /// A request whose reply carries nothing but the result (and a payload when it is ≥ 0).
    private func call(_ op: Op, _ detail: String, _ build: (inout Message) -> Void) throws(KernelCallError) -> Reply {
        var m = Message()
        build(&m)
        let reply = try exchange(op, m)
        if reply.result < 0 { throw KernelCallError(op.name, Errno(-reply.result), "\(detail) on \(location)") }
        return reply
    }

    /// Decodes a success payload; a short one breaks the connection like any malformed reply.
    private func decode<T>(_ op: Op, _ reply: Reply, _ body: (inout Payload) throws(Payload.Short) -> T) throws(KernelCallError) -> T {
        var p = reply.payload
        do { return try body(&p) } catch {
            let message = "\(location) sent a malformed reply to \(op.name)"
            lock.lock(); breakConnection(.EPROTO, message); lock.unlock()
            throw KernelCallError(op.name, .EPROTO, message)
        }
    }

    // MARK: HostFiles

    public func systemName() -> (release: String, hostname: String) {
        // HELLO says `uname -r` and `uname -m`; the protocol has no node name, so the host
        // is named by where it is reached.
        (String(remoteDescription.split(separator: " ").first ?? ""), endpoint)
    }

    public func open(_ path: String, flags: Int32) throws(KernelCallError) -> Int32 {
        try call(.open, path) { $0.string(path); $0.u32(UInt32(bitPattern: flags)) }.result
    }

    public func close(_ fd: Int32) {
        _ = try? call(.close, "fd=\(fd)") { $0.i32(fd) }
    }

    public func read(_ path: String) throws(KernelCallError) -> [UInt8] {
        let r = try call(.read, path) { $0.string(path) }
        return try decode(.read, r) { (p) throws(Payload.Short) in try p.data() }
    }

    public func readLink(_ path: String) throws(KernelCallError) -> String {
        let r = try call(.readLink, path) { $0.string(path) }
        return try decode(.readLink, r) { (p) throws(Payload.Short) in try p.string() }
    }

    public func listDirectory(_ path: String) throws(KernelCallError) -> [String] {
        let r = try call(.listDirectory, path) { $0.string(path) }
        return try decode(.listDirectory, r) { (p) throws(Payload.Short) in
            try p.items(itemBytes: 4) { (p) throws(Payload.Short) in try p.string() }
        }
    }

    public func write(_ path: String, _ data: [UInt8]) throws(KernelCallError) {
        _ = try call(.write, "\(path) <- \(String(decoding: data, as: UTF8.self).trimmingCharacters(in: .newlines))") {
            $0.string(path); $0.data(data)
        }
    }

    public func memfd(name: String, size: UInt64, flags: UInt32) throws(KernelCallError) -> Int32 {
        try call(.memfd, "name=\(name) size=\(size)") { $0.string(name); $0.u64(size); $0.u32(flags) }.result
    }

    public func status(_ path: String) -> FileStatus? {
        guard let r = try? call(.stat, path, { $0.string(path) }),
              let s = try? decode(.stat, r, { (p) throws(Payload.Short) in FileStatus(mode: try p.u32(), uid: try p.u32(), gid: try p.u32()) }) else { return nil }
        return s
    }

    public func chown(_ path: String, uid: UInt32, gid: UInt32) throws(KernelCallError) {
        _ = try call(.chown, "\(path) uid=\(uid) gid=\(gid)") { $0.string(path); $0.u32(uid); $0.u32(gid) }
    }

    public func mapAnonymous(size: UInt64, hugepageLog2: UInt32?) throws(KernelCallError) -> UInt64 {
        guard hugepageLog2 == nil else {
            throw KernelCallError("MMAP_ANON", .EOPNOTSUPP, "size=\(size): \(location) maps anonymous memory with normal pages only (MMAP_ANON has no huge page flag); use memfd or hugetlbfs backing")
        }
        let r = try call(.mmapAnonymous, "size=\(size)") { $0.u64(size) }
        return try decode(.mmapAnonymous, r) { (p) throws(Payload.Short) in try p.u64() }
    }

    public func limitLockedMemory(_ bytes: UInt64?) throws(KernelCallError) {
        _ = try call(.memlock, bytes.map { "limit=\($0)" } ?? "restore") { $0.u32(bytes == nil ? 1 : 0); $0.u64(bytes ?? 0) }
    }

    public func unmap(address: UInt64, size: UInt64) {
        _ = try? call(.munmap, "address=\(hex(address)) size=\(size)") { $0.u64(address); $0.u64(size) }
    }

    public func heldFiles() throws(KernelCallError) -> [HeldFile] {
        let r = try call(.fds, "") { _ in }
        return try decode(.fds, r) { (p) throws(Payload.Short) in
            try p.items(itemBytes: 12) { (p) throws(Payload.Short) in HeldFile(fd: try p.i32(), target: try p.string(), fdinfo: try p.string()) }
        }
    }

    // MARK: the VMM (SPAWN, WAIT)

    /// SPAWN: the executor starts its `--vmm` binary (`argv[0]` must be exactly that path,
    /// else EPERM) with `fds`, fds it holds, inherited at the same numbers; every other fd
    /// is closed in the child. Returns the child's pid in the executor's kernel. The
    /// executor keeps its own copies of `fds` until they are CLOSEd.
    public func spawnVMM(argv: [String], fds: [Int32]) throws(KernelCallError) -> Int32 {
        try call(.spawn, "\(argv.first ?? "") fds=\(fds)") { m in
            m.u32(UInt32(argv.count))
            for a in argv { m.string(a) }
            m.u32(UInt32(fds.count))
            for fd in fds { m.i32(fd) }
        }.result
    }

    /// WAIT: whether a child SPAWN started is still running (never blocks). ESRCH for a pid
    /// this executor did not spawn.
    public func vmmStatus(pid: Int32) throws(KernelCallError) -> RemoteVMMStatus {
        let r = try call(.wait, "pid=\(pid)") { $0.i32(pid) }
        let (state, code) = try decode(.wait, r) { (p) throws(Payload.Short) in (try p.u32(), try p.i32()) }
        switch state {
        case 0: return .running
        case 1: return .exited(code)
        case 2: return .exited(128 + code) // killed by signal `code`: the shell's convention
        default:
            let message = "\(location) answered WAIT with state \(state)"
            lock.lock(); breakConnection(.EPROTO, message); lock.unlock()
            throw KernelCallError("WAIT", .EPROTO, message)
        }
    }

    // MARK: IoctlTransport

    /// A pointer field of an ioctl struct and the length of the buffer it names, read
    /// from the struct as the caller filled it (docs/remote-executor.md, IOCTL table).
    struct PointerField: Sendable {
        let offset: Int
        let length: @Sendable (UnsafeRawBufferPointer) -> Int
    }

    static func u32(_ b: UnsafeRawBufferPointer, _ offset: Int) -> Int {
        offset + 4 <= b.count ? Int(b.loadUnaligned(fromByteOffset: offset, as: UInt32.self)) : 0
    }

    /// Requests whose structs carry user pointers; every other request on the executor's
    /// list has none (its own fds inside structs are handles, not pointers).
    static let pointerFields: [UInt32: PointerField] = [
        UInt32(VSMMU_IOMMU_IOAS_IOVA_RANGES): PointerField(offset: MemoryLayout<vsmmu_iommu_ioas_iova_ranges>.offset(of: \.allowed_iovas)!) {
            u32($0, MemoryLayout<vsmmu_iommu_ioas_iova_ranges>.offset(of: \.num_iovas)!) * MemoryLayout<vsmmu_iommu_iova_range>.size
        },
        UInt32(VSMMU_IOMMU_HWPT_ALLOC): PointerField(offset: MemoryLayout<vsmmu_iommu_hwpt_alloc>.offset(of: \.data_uptr)!) {
            u32($0, MemoryLayout<vsmmu_iommu_hwpt_alloc>.offset(of: \.data_len)!)
        },
        UInt32(VSMMU_IOMMU_GET_HW_INFO): PointerField(offset: MemoryLayout<vsmmu_iommu_hw_info>.offset(of: \.data_uptr)!) {
            u32($0, MemoryLayout<vsmmu_iommu_hw_info>.offset(of: \.data_len)!)
        },
        UInt32(VSMMU_IOMMU_HWPT_INVALIDATE): PointerField(offset: MemoryLayout<vsmmu_iommu_hwpt_invalidate>.offset(of: \.data_uptr)!) {
            u32($0, MemoryLayout<vsmmu_iommu_hwpt_invalidate>.offset(of: \.entry_len)!) * u32($0, MemoryLayout<vsmmu_iommu_hwpt_invalidate>.offset(of: \.entry_num)!)
        },
        UInt32(VSMMU_IOMMU_VIOMMU_ALLOC): PointerField(offset: MemoryLayout<vsmmu_iommu_viommu_alloc>.offset(of: \.data_uptr)!) {
            u32($0, MemoryLayout<vsmmu_iommu_viommu_alloc>.offset(of: \.data_len)!)
        },
    ]

    /// Sends the struct and the buffer its pointer field names; writes the struct and the
    /// buffer the executor returns back into the caller's memory, with the caller's
    /// pointer value kept (the executor's addresses mean nothing here).
    public func ioctl(_ fd: Int32, _ request: UInt32, _ bytes: UnsafeMutableRawBufferPointer) -> Int32 {
        var m = Message()
        m.i32(fd)
        m.u32(request)
        m.data(Array(bytes))
        var pointer: (offset: Int, address: UInt64, length: Int)?
        if let field = Self.pointerFields[request] {
            guard field.offset + 8 <= bytes.count else { return -Errno.EINVAL.rawValue }
            let address = bytes.loadUnaligned(fromByteOffset: field.offset, as: UInt64.self)
            let length = field.length(UnsafeRawBufferPointer(bytes))
            guard length <= Self.maxMessage / 2 else { return -Errno.EINVAL.rawValue }
            var buffer: [UInt8] = []
            if length > 0 {
                // The local kernel would fault on a null buffer; so does this side.
                guard let p = UnsafeRawPointer(bitPattern: UInt(address)) else { return -Errno.EFAULT.rawValue }
                buffer = Array(UnsafeRawBufferPointer(start: p, count: length))
            }
            m.u32(1)
            m.data(buffer)
            pointer = (field.offset, address, length)
        } else {
            m.u32(0)
        }
        let reply: Reply
        do { reply = try exchange(.ioctl, m) } catch { return -error.errno.rawValue }
        // A request the executor could not parse comes back with no payload.
        if reply.payload.atEnd { return reply.result }
        let returned = try? decode(.ioctl, reply) { (p) throws(Payload.Short) in
            let arg = try p.data()
            let buffers = try p.items(itemBytes: 4) { (p) throws(Payload.Short) in try p.data() }
            return (arg, buffers)
        }
        guard let (arg, buffers) = returned else { return -Errno.EPROTO.rawValue }
        arg.prefix(bytes.count).withUnsafeBytes { bytes.copyMemory(from: $0) }
        if let pointer {
            bytes.storeBytes(of: pointer.address, toByteOffset: pointer.offset, as: UInt64.self)
            // Never more than the caller's buffer as its struct sized it before the call.
            if let out = buffers.first, pointer.length > 0, let p = UnsafeMutableRawPointer(bitPattern: UInt(pointer.address)) {
                out.prefix(pointer.length).withUnsafeBytes { p.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            }
        }
        return reply.result
    }
}
#endif
