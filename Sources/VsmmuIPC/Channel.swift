import CVsmmuUAPI
import Foundation
import Glibc

/// One end of the agent's Unix socket: JSON lines both ways, fds on the side.
public final class Channel: @unchecked Sendable {
    public let fd: Int32
    private var buffer: [UInt8] = []
    /// fds received with the data read so far (SCM_RIGHTS).
    public private(set) var receivedFDs: [Int32] = []
    private let lock = NSLock()
    public private(set) var broken = false

    public init(fd: Int32) { self.fd = fd }
    deinit { close(fd) }

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

    /// The next line, or nil at end of stream (or past `maxLine`).
    public func readLine() -> String? {
        while true {
            if buffer.count > Channel.maxLine { return nil }
            if let i = buffer.firstIndex(of: 10) {
                let line = String(decoding: buffer[..<i], as: UTF8.self)
                buffer.removeSubrange(...i)
                return line
            }
            var chunk = [UInt8](repeating: 0, count: 65536)
            var fds = [Int32](repeating: -1, count: 64)
            var nfds: Int32 = 0
            let n = chunk.withUnsafeMutableBytes { c in
                fds.withUnsafeMutableBufferPointer { f in vsmmu_recv_with_fds(fd, c.baseAddress, c.count, f.baseAddress, Int32(f.count), &nfds) }
            }
            if n <= 0 { return nil }
            receivedFDs += fds.prefix(Int(nfds))
            buffer += chunk.prefix(n)
        }
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
                return Channel(fd: c)
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
