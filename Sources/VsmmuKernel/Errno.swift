/// A Linux errno with its C name kept findable (values from
/// docs/kernel-interface.md, generic errno table; valid on x86_64 and arm64).
public struct Errno: Error, Hashable, Sendable, Codable, CustomStringConvertible {
    public let rawValue: Int32
    public init(_ rawValue: Int32) { self.rawValue = rawValue }

    public static let EPERM = Errno(1)
    public static let ENOENT = Errno(2)
    public static let ESRCH = Errno(3)
    public static let EINTR = Errno(4)
    public static let EIO = Errno(5)
    public static let ENXIO = Errno(6)
    public static let E2BIG = Errno(7)
    public static let EBADF = Errno(9)
    public static let EAGAIN = Errno(11)
    public static let ENOMEM = Errno(12)
    public static let EACCES = Errno(13)
    public static let EFAULT = Errno(14)
    public static let EBUSY = Errno(16)
    public static let EEXIST = Errno(17)
    public static let ENODEV = Errno(19)
    public static let EINVAL = Errno(22)
    public static let ENOTTY = Errno(25)
    public static let ENOSPC = Errno(28)
    public static let ESPIPE = Errno(29)
    public static let EPIPE = Errno(32)
    public static let ERANGE = Errno(34)
    public static let EDEADLK = Errno(35)
    public static let EPROTO = Errno(71)
    public static let EOVERFLOW = Errno(75)
    public static let EBADFD = Errno(77)
    public static let EMSGSIZE = Errno(90)
    public static let EOPNOTSUPP = Errno(95)
    public static let EADDRINUSE = Errno(98)
    public static let ETIMEDOUT = Errno(110)

    private static let table: [(Int32, String, String)] = [
        (1, "EPERM", "operation not permitted"),
        (2, "ENOENT", "no such object"),
        (3, "ESRCH", "no such process"),
        (4, "EINTR", "interrupted system call"),
        (5, "EIO", "input/output error"),
        (6, "ENXIO", "no such device or address"),
        (7, "E2BIG", "argument list too long (non-zero bytes in an unknown tail)"),
        (9, "EBADF", "bad file descriptor"),
        (11, "EAGAIN", "resource temporarily unavailable"),
        (12, "ENOMEM", "cannot allocate memory"),
        (13, "EACCES", "permission denied"),
        (14, "EFAULT", "bad address"),
        (16, "EBUSY", "device or resource busy"),
        (17, "EEXIST", "object exists"),
        (19, "ENODEV", "no such device"),
        (22, "EINVAL", "invalid argument"),
        (25, "ENOTTY", "inappropriate ioctl for device"),
        (28, "ENOSPC", "no space left on device"),
        (29, "ESPIPE", "illegal seek"),
        (32, "EPIPE", "broken pipe"),
        (34, "ERANGE", "numerical result out of range"),
        (35, "EDEADLK", "resource deadlock avoided"),
        (71, "EPROTO", "protocol error"),
        (75, "EOVERFLOW", "value too large for defined data type"),
        (77, "EBADFD", "file descriptor in bad state"),
        (90, "EMSGSIZE", "message too long"),
        (95, "EOPNOTSUPP", "operation not supported"),
        (98, "EADDRINUSE", "address already in use"),
        (110, "ETIMEDOUT", "connection timed out"),
    ]

    /// The C name, e.g. "EBUSY"; "errno N" for values outside the table.
    public var name: String {
        Errno.table.first { $0.0 == rawValue }?.1 ?? "errno \(rawValue)"
    }

    /// A short human meaning, as strerror would say it.
    public var meaning: String {
        Errno.table.first { $0.0 == rawValue }?.2 ?? "unknown error"
    }

    /// Parses "EBUSY" (or a decimal number) as used by VSMMU_SIM_FAIL.
    public init?(name: String) {
        if let hit = Errno.table.first(where: { $0.1 == name }) {
            self.init(hit.0)
        } else if let n = Int32(name), n > 0 {
            self.init(n)
        } else {
            return nil
        }
    }

    public var description: String { "\(name) (\(meaning))" }
}

/// A failed kernel call: which call, on what, and the errno the kernel returned.
public struct KernelCallError: Error, Sendable, CustomStringConvertible {
    /// The call's C name (or the seam's name for its own system call, e.g. "OPEN").
    public var call: String
    /// The vocabulary's call; nil for a seam's own system call.
    public var kernelCall: KernelCall?
    public var errno: Errno
    public var detail: String

    public init(_ call: KernelCall, _ errno: Errno, _ detail: String = "") {
        self.call = call.name
        self.kernelCall = call
        self.errno = errno
        self.detail = detail
    }

    /// A failure of a seam's own system call ("OPEN", "REMOTE_CONNECT", …), or of a
    /// vocabulary call named by its C name.
    public init(_ name: String, _ errno: Errno, _ detail: String = "") {
        self.call = name
        self.kernelCall = KernelCall(name: name)
        self.errno = errno
        self.detail = detail
    }

    /// The same failure, reported as `call` (the port's name for the seam step that failed).
    public func renamed(_ call: KernelCall) -> KernelCallError { KernelCallError(call, errno, detail) }

    public var description: String {
        detail.isEmpty ? "\(call): \(errno)" : "\(call) [\(detail)]: \(errno)"
    }
}
