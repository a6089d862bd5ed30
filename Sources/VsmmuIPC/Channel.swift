import CVsmmuUAPI
import Foundation
import Glibc

/// One end of the agent's Unix socket: JSON lines both ways, fds on the side.
public final class Channel: @unchecked Sendable {
    public let fd: Int32
    /// Bytes read and not yet returned are buffer[start...]; buffer[start..<scanned] has
    /// no newline (each byte is looked at once: reading a long line stays linear).
    private var buffer: [UInt8] = []
    private var start = 0
    private var scanned = 0
    /// Bytes the line reader has looked at for a newline, in all: linear reading keeps it at
    /// about the bytes received (tests check it instead of timing the reader).
    public private(set) var bytesExamined = 0
    /// fds received with the data read so far (SCM_RIGHTS), when `acceptsFDs`.
    public private(set) var receivedFDs: [Int32] = []
    /// Whether fds the peer sends are kept for `takeReceivedFDs` (a client taking a
    /// handoff). Otherwise each is closed as it arrives: a peer cannot make this
    /// process hold fds it never asked for.
    public var acceptsFDs: Bool
    /// Longest line `readLine` accepts.
    public var maxLineBytes = Channel.maxLine
    /// Seconds one `readLine` may take in all (nil: no limit): a peer that sends nothing,
    /// or a byte now and then, is dropped.
    public var lineTimeout: Double?
    private let lock = NSLock()
    public private(set) var broken = false

    public init(fd: Int32, acceptsFDs: Bool = true) { self.fd = fd; self.acceptsFDs = acceptsFDs }
    deinit {
        for f in receivedFDs { close(f) }
        close(fd)
    }

    public struct Failure: Error, CustomStringConvertible {
        public var message: String
        public var description: String { message }
    }

    public static func connect(_ path: String) throws -> Channel {
        let fd = vsmmu_connect_unix(path)
        guard fd >= 0 else {
            throw Failure(message: "cannot connect to the vsmmu agent at \(path): \(String(cString: strerror(-fd)))")
        }
        return Channel(fd: fd)
    }

    /// Sends one line (a newline is added), with fds attached if any. A peer that went
    /// away is not an error for the sender (a client may disconnect mid-apply).
    @discardableResult
    public func send(_ line: String, fds: [Int32] = []) -> Bool {
        lock.lock(); defer { lock.unlock() }
        if broken { return false }
        var data = Array((line + "\n").utf8)
        var first = true
        var offset = 0
        while offset < data.count {
            let n = data.withUnsafeMutableBytes { b -> Int in
                let base = b.baseAddress!.advanced(by: offset)
                if first && !fds.isEmpty {
                    return fds.withUnsafeBufferPointer { f in vsmmu_send_with_fds(self.fd, base, b.count - offset, f.baseAddress, Int32(f.count)) }
                }
                return vsmmu_send_with_fds(self.fd, base, b.count - offset, nil, 0)
            }
            if n <= 0 { broken = true; return false }
            first = false
            offset += n
        }
        return true
    }

    /// Longest line accepted: a request carries a topology (32 MiB at most) in base64.
    public static let maxLine = 64 << 20

    /// The next line, or nil at end of stream, past `maxLineBytes` or after `lineTimeout`.
    public func readLine() -> String? {
        let deadline = lineTimeout.map { Channel.monotonicNanos() &+ UInt64(max(0, $0) * 1e9) }
        while true {
            if let i = newline() {
                let line = String(decoding: buffer[start..<i], as: UTF8.self)
                start = i + 1
                scanned = start
                // Drop what was returned once it is most of the buffer (amortized linear).
                if start >= 65536, start * 2 >= buffer.count {
                    buffer.removeSubrange(..<start)
                    scanned -= start
                    start = 0
                }
                return line
            }
            scanned = buffer.count
            if buffer.count - start > maxLineBytes { return nil }
            if let deadline {
                let now = Channel.monotonicNanos()
                guard now < deadline else { return nil }
                var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                let ms = Int32(min((deadline - now) / 1_000_000 + 1, UInt64(Int32.max)))
                let r = poll(&p, 1, ms)
                if r < 0 && errno == EINTR { continue }
                if r <= 0 { return nil }
            }
            if receive() <= 0 { return nil }
        }
    }

    /// The first newline at or after `scanned` (memchr: each byte looked at once).
    private func newline() -> Int? {
        buffer.withUnsafeBufferPointer { b -> Int? in
            guard scanned < b.count, let base = b.baseAddress else { return nil }
            guard let p = memchr(base + scanned, 10, b.count - scanned) else {
                bytesExamined += b.count - scanned
                return nil
            }
            let at = base.distance(to: p.assumingMemoryBound(to: UInt8.self))
            bytesExamined += at + 1 - scanned
            return at
        }
    }

    static func monotonicNanos() -> UInt64 {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return UInt64(t.tv_sec) * 1_000_000_000 + UInt64(t.tv_nsec)
    }

    /// Scratch for one recvmsg (this channel's: channels are read on their own threads).
    private lazy var chunk = [UInt8](repeating: 0, count: 65536)

    /// One recvmsg: bytes appended to the buffer, fds kept or closed. Returns bytes read.
    private func receive() -> Int {
        var fds = [Int32](repeating: -1, count: 64)
        var nfds: Int32 = 0
        let n = chunk.withUnsafeMutableBytes { c in
            fds.withUnsafeMutableBufferPointer { f in vsmmu_recv_with_fds(fd, c.baseAddress, c.count, f.baseAddress, Int32(f.count), &nfds) }
        }
        let got = fds.prefix(Int(max(0, nfds)))
        if acceptsFDs { receivedFDs += got } else { for f in got { close(f) } }
        if n > 0 { chunk.withUnsafeBufferPointer { buffer.append(contentsOf: UnsafeBufferPointer(rebasing: $0[0..<n])) } }
        return n
    }

    /// The peer's pid, uid and gid (SO_PEERCRED).
    public func peer() -> (pid: Int32, uid: UInt32, gid: UInt32)? {
        var pid: Int32 = 0
        var uid: UInt32 = 0, gid: UInt32 = 0
        return vsmmu_peer_cred(fd, &pid, &uid, &gid) == 0 ? (pid, uid, gid) : nil
    }

    /// Stop sending and read what the peer still sends (at most `seconds`), then close:
    /// closing with unread data would reset the connection and lose our last reply.
    public func finish(waitingAtMost seconds: Int = 2) {
        Glibc.shutdown(fd, Int32(SHUT_WR))
        var tv = timeval(tv_sec: seconds, tv_usec: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var sink = [UInt8](repeating: 0, count: 4096)
        var total = 0
        while total < Channel.maxLine {
            let n = sink.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            total += n
        }
    }

    /// Bounds how long one send may block on a peer that stops reading.
    public func setSendTimeout(_ seconds: Double) {
        var tv = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - seconds.rounded(.down)) * 1e6))
        _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    public func takeReceivedFDs() -> [Int32] {
        defer { receivedFDs = [] }
        return receivedFDs
    }
}

/// A listening Unix socket.
public final class Listener: @unchecked Sendable {
    public let fd: Int32
    public let path: String

    public init(path: String, mode: UInt32) throws {
        try? FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        let fd = vsmmu_listen_unix(path, mode)
        guard fd >= 0 else { throw Channel.Failure(message: "cannot listen on \(path): \(String(cString: strerror(-fd)))") }
        self.fd = fd
        self.path = path
    }

    /// The next connection, or nil when the listener was shut down.
    public func accept() -> Channel? {
        while true {
            let c = Glibc.accept(fd, nil, nil)
            if c >= 0 {
                _ = fcntl(c, F_SETFD, FD_CLOEXEC)
                // The serving side expects no fds from its clients.
                return Channel(fd: c, acceptsFDs: false)
            }
            if errno == EINTR || errno == ECONNABORTED { continue }
            return nil
        }
    }

    public func shutdown() {
        Glibc.shutdown(fd, Int32(SHUT_RDWR))
        unlink(path)
    }

    deinit { close(fd) }
}

public enum SystemdNotify {
    public static func send(_ state: String) { _ = vsmmu_sd_notify(state) }
}
