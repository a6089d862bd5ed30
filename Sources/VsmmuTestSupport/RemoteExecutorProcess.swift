import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// An executable product `swift build` put next to the test bundle (xctest bundles on
/// Linux are plain executables in the build directory), else in .build/debug, or nil.
public func builtProduct(_ name: String) -> String? {
    let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    var dir = URL(fileURLWithPath: exe).deletingLastPathComponent()
    for _ in 0..<3 {
        let candidate = dir.appendingPathComponent(name).path
        if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        dir.deleteLastPathComponent()
    }
    let fallback = packageRoot + "/.build/debug/" + name
    return FileManager.default.isExecutableFile(atPath: fallback) ? fallback : nil
}

/// The `vsmmu-remote` executable, or nil.
public let vsmmuRemoteBinary: String? = builtProduct("vsmmu-remote")

#if os(Linux)
/// A Unix socket where each connection gets its own `vsmmu-remote --root ROOT` on the
/// accepted socket (its stdin and stdout), as QEMU's chardev socket would give a guest's
/// executor: what `--remote unix:PATH` connects to in tests.
public final class UnixSocketExecutor: @unchecked Sendable {
    public let path: String
    private let listener: Int32
    private let lock = NSLock()
    private var children: [Process] = []

    public init(binary: String, root: String) throws {
        path = NSTemporaryDirectory() + "vsmmu-remote-\(UUID().uuidString.prefix(8)).sock"
        listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        precondition(bytes.count < MemoryLayout.size(ofValue: addr.sun_path))
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: bytes) }
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard listener >= 0, bound == 0, listen(listener, 4) == 0 else {
            let e = errno
            _ = close(listener)
            throw NSError(domain: NSPOSIXErrorDomain, code: Int(e))
        }
        Thread.detachNewThread { [self] in
            while true {
                let conn = accept(listener, nil, nil)
                if conn < 0 { if errno == EINTR { continue }; return }
                let p = Process()
                p.executableURL = URL(fileURLWithPath: binary)
                p.arguments = ["--root", root]
                let end = FileHandle(fileDescriptor: conn, closeOnDealloc: false)
                p.standardInput = end
                p.standardOutput = end
                p.standardError = FileHandle.nullDevice
                if (try? p.run()) != nil { lock.lock(); children.append(p); lock.unlock() }
                _ = close(conn)
            }
        }
    }

    deinit {
        _ = shutdown(listener, Int32(SHUT_RDWR))
        _ = close(listener)
        unlink(path)
        lock.lock(); let all = children; lock.unlock()
        for p in all where p.isRunning { kill(p.processIdentifier, SIGKILL); p.waitUntilExit() }
    }
}
#endif
