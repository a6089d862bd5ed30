/// The one error shape from the kernel port up to the commands: what kind of failure it
/// is (`code`, stable for scripts and the agent's answers), what failed (`message`), what
/// to do about it (`hint`), and the error it came from (`cause`: a kernel call's errno, a
/// step of the apply, another VsmmuError), kept so that nothing is lost on the way up.
///
/// `description` is the whole chain on one line, `outer: inner: kernel call [detail]: ERRNO`;
/// `chain` is the same, one entry per error, for the CLI's `caused by:` lines.
public struct VsmmuError: Error, CustomStringConvertible, @unchecked Sendable {
    // @unchecked: `cause` is an immutable error value once thrown.
    public enum Code: String, Sendable, Codable {
        /// A kernel call failed (the cause is its KernelCallError).
        case kernel
        /// A file (topology, host, plan) could not be read or is invalid.
        case input
        /// The desired graph could not be built (users, allocations, resolution).
        case plan
        /// Guest bus numbers or slots ran out.
        case allocation
        /// A step of an apply failed, or its read-back did not match.
        case apply
        /// The state directory, its lock or journal.
        case state
        /// The agent could not be reached or answered badly.
        case agent
        /// Anything else a command refuses to do.
        case command
    }

    public var code: Code
    public var message: String
    public var hint: String?
    public var cause: (any Error)?

    public init(_ code: Code, _ message: String, hint: String? = nil, cause: (any Error)? = nil) {
        self.code = code; self.message = message; self.hint = hint; self.cause = cause
    }

    /// The commands' spelling (`CommandError(message:hint:)`).
    public init(message: String, hint: String? = nil, cause: (any Error)? = nil) {
        self.init(.command, message, hint: hint, cause: cause)
    }

    /// A failed kernel call, with what was being done when it failed.
    public init(_ message: String, kernel: KernelCallError, hint: String? = nil) {
        self.init(.kernel, message, hint: hint, cause: kernel)
    }

    /// This error and its causes, outermost first, each as it describes itself alone.
    public var chain: [String] {
        var out = [message]
        var next = cause
        while let e = next {
            if let v = e as? VsmmuError {
                out.append(v.message)
                next = v.cause
            } else {
                out.append("\(e)")
                next = nil
            }
        }
        return out
    }

    /// The first hint along the chain (the outermost knows best what to do).
    public var firstHint: String? {
        if let hint { return hint }
        return (cause as? VsmmuError)?.firstHint
    }

    public var description: String { chain.joined(separator: ": ") }
}
