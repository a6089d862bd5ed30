import Foundation
import VsmmuProvisioning

/// Where commands write: standard output for results, standard error for
/// diagnostics and progress. Tests capture both.
public final class Console: @unchecked Sendable {
    private let lock = NSLock()
    private let writeOut: (String) -> Void
    private let writeErr: (String) -> Void
    public let stderrIsTerminal: Bool

    public init(out: @escaping (String) -> Void, err: @escaping (String) -> Void, stderrIsTerminal: Bool = false) {
        writeOut = out; writeErr = err; self.stderrIsTerminal = stderrIsTerminal
    }

    public static func standard() -> Console {
        Console(out: { s in FileHandle.standardOutput.write(Data(s.utf8)) },
                err: { s in FileHandle.standardError.write(Data(s.utf8)) },
                stderrIsTerminal: isatty(2) == 1)
    }

    /// Writes a line (a newline is added) to standard output.
    public func print(_ s: String) { lock.lock(); writeOut(s + "\n"); lock.unlock() }
    /// Writes text as is to standard output.
    public func write(_ s: String) { lock.lock(); writeOut(s); lock.unlock() }
    /// Writes text as is to standard error.
    public func errorRaw(_ s: String) { lock.lock(); writeErr(s); lock.unlock() }
    /// Writes a line to standard error.
    public func error(_ s: String) { lock.lock(); writeErr(s + "\n"); lock.unlock() }
}

/// A console that keeps everything written, for tests.
public final class CapturedConsole: @unchecked Sendable {
    private let lock = NSLock()
    private var outText = ""
    private var errText = ""
    public init() {}
    public var stdout: String { lock.lock(); defer { lock.unlock() }; return outText }
    public var stderr: String { lock.lock(); defer { lock.unlock() }; return errText }
    public var console: Console {
        Console(out: { [self] s in lock.lock(); outText += s; lock.unlock() },
                err: { [self] s in lock.lock(); errText += s; lock.unlock() })
    }
}
