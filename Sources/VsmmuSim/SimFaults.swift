import Foundation
import VsmmuKernel

/// Why the simulated kernel refused a call: the errno the real kernel would return and
/// a human reason. The funnel turns it into a `KernelCallError` named after the call.
struct Refusal: Error {
    var errno: Errno
    var reason: String
    init(_ errno: Errno, _ reason: String) { self.errno = errno; self.reason = reason }
}

/// One `VSMMU_SIM_FAIL` rule: calls of `op` fail with `errno` — every call, or only
/// the `nth` one (1-based, counted per SimulatedKernel instance).
public struct FailRule: Hashable, Sendable, Codable, CustomStringConvertible {
    public var op: String
    public var nth: Int?
    public var errno: Errno
    public init(op: String, nth: Int?, errno: Errno) { self.op = op; self.nth = nth; self.errno = errno }
    public var description: String { "\(op)\(nth.map { "#\($0)" } ?? ""):\(errno.name)" }
}

/// A bad `VSMMU_SIM_FAIL` or `VSMMU_SIM_DELAY_MS` value.
public struct SimConfigurationError: Error, Hashable, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// One call through the simulated kernel, as recorded in `SimulatedKernel.trace`.
public struct SimCall: Hashable, Sendable, Codable, CustomStringConvertible {
    /// The ioctl name (docs/kernel-interface.md §1.1) or the non-ioctl name (OPEN_IOMMUFD, SYSFS_UNBIND, …).
    public var op: String
    /// The call's arguments, e.g. "fd=3 ioas=1 iova=0x40000000 length=0x100000000".
    public var detail: String
    public var mutating: Bool
    /// nil when the call succeeded.
    public var errno: Errno?
    /// The failure came from VSMMU_SIM_FAIL, not from the simulated kernel's rules.
    public var injected: Bool
    public var succeeded: Bool { errno == nil }
    public init(op: String, detail: String, mutating: Bool, errno: Errno?, injected: Bool) {
        self.op = op; self.detail = detail; self.mutating = mutating; self.errno = errno; self.injected = injected
    }
    public var description: String {
        "\(op) \(detail) -> \(errno.map { $0.name + (injected ? " (injected)" : "") } ?? "ok")"
    }
}

extension SimulatedKernel {
    /// Every operation name VSMMU_SIM_FAIL accepts: the kernel-call vocabulary.
    public static let operationNames: Set<String> = Set(KernelCall.allCases.map(\.name))

    /// Parses `VSMMU_SIM_FAIL`: a comma-separated list of `OP[#N]:ERRNO`, e.g.
    /// `IOMMU_VIOMMU_ALLOC:ENOMEM,VFIO_DEVICE_BIND_IOMMUFD#2:EBUSY`.
    public static func parseFailSpec(_ spec: String) throws(SimConfigurationError) -> [FailRule] {
        var rules: [FailRule] = []
        for rawItem in spec.split(separator: ",", omittingEmptySubsequences: false) {
            let item = rawItem.trimmingCharacters(in: .whitespaces)
            if item.isEmpty {
                if spec.trimmingCharacters(in: .whitespaces).isEmpty { continue }
                throw SimConfigurationError("VSMMU_SIM_FAIL: empty entry in '\(spec)' (expected OP[#N]:ERRNO, comma-separated)")
            }
            let parts = item.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count == 2 else {
                throw SimConfigurationError("VSMMU_SIM_FAIL: '\(item)' is not OP[#N]:ERRNO (e.g. IOMMU_VIOMMU_ALLOC:ENOMEM)")
            }
            let target = parts[0].trimmingCharacters(in: .whitespaces)
            let errnoText = parts[1].trimmingCharacters(in: .whitespaces)
            var op = target
            var nth: Int?
            if let hash = target.firstIndex(of: "#") {
                op = String(target[..<hash])
                let countText = target[target.index(after: hash)...]
                guard let n = Int(countText), n >= 1 else {
                    throw SimConfigurationError("VSMMU_SIM_FAIL: '\(item)': the call number after '#' must be a positive integer, got '\(countText)'")
                }
                nth = n
            }
            guard !op.isEmpty else {
                throw SimConfigurationError("VSMMU_SIM_FAIL: '\(item)' names no operation")
            }
            guard operationNames.contains(op) else {
                throw SimConfigurationError("VSMMU_SIM_FAIL: unknown operation '\(op)'; known: \(operationNames.sorted().joined(separator: ", "))")
            }
            guard let errno = Errno(name: errnoText) else {
                throw SimConfigurationError("VSMMU_SIM_FAIL: '\(item)': unknown errno '\(errnoText)' (use a name such as EBUSY or a positive number)")
            }
            rules.append(FailRule(op: op, nth: nth, errno: errno))
        }
        return rules
    }

    /// Parses `VSMMU_SIM_DELAY_MS`: a non-negative integer number of milliseconds.
    public static func parseDelay(_ text: String) throws(SimConfigurationError) -> Int {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        guard let ms = Int(trimmed), ms >= 0, ms <= 3_600_000 else {
            throw SimConfigurationError("VSMMU_SIM_DELAY_MS: expected milliseconds (0...3600000), got '\(text)'")
        }
        return ms
    }

    /// Reads VSMMU_SIM_FAIL and VSMMU_SIM_DELAY_MS from an environment.
    static func configuration(from environment: [String: String]) throws(SimConfigurationError) -> (rules: [FailRule], delayMS: Int) {
        let rules = try environment["VSMMU_SIM_FAIL"].map { (s: String) throws(SimConfigurationError) in try parseFailSpec(s) } ?? []
        let delay = try environment["VSMMU_SIM_DELAY_MS"].map { (s: String) throws(SimConfigurationError) in try parseDelay(s) } ?? 0
        return (rules, delay)
    }

    // MARK: the funnel

    /// Every throwing call goes through here: delay, fault injection, call counting,
    /// tracing and, for mutating calls, the redo log (`log`: how to replay it; nil exactly
    /// for the calls the vocabulary says do not mutate). Replaying the log bypasses it
    /// (SimStore calls the implementations directly).
    func call<T>(_ request: KernelRequest, _ log: SimRequest?, _ body: () throws(Refusal) -> T) throws(KernelCallError) -> T {
        let kernelCall = request.call
        assert(kernelCall.isMutating == (log != nil), "\(kernelCall.name): a mutating call is logged, a read is not")
        if delayMS > 0 { sleepThroughSignals(ms: delayMS) }
        // The call's text is made only when something reads it: a trace, or an error.
        if let injected = injectedFailure(for: kernelCall) {
            let text = request.detail
            record(kernelCall, text, errno: injected, injected: true)
            throw KernelCallError(kernelCall, injected, text.isEmpty ? "injected by VSMMU_SIM_FAIL" : "\(text): injected by VSMMU_SIM_FAIL")
        }
        if kernelCall.isMutating { mutatingCallCount += 1 }
        let result: Result<T, Refusal>
        do { result = .success(try body()) } catch { result = .failure(error) }
        if let log { appendToLog(log) }
        switch result {
        case .success(let value):
            if traceEnabled { record(kernelCall, request.detail, errno: nil, injected: false) }
            return value
        case .failure(let refusal):
            let text = request.detail
            record(kernelCall, text, errno: refusal.errno, injected: false)
            throw KernelCallError(kernelCall, refusal.errno, text.isEmpty ? refusal.reason : "\(text): \(refusal.reason)")
        }
    }

    /// The funnel for calls the port cannot fail (close, munmap, process exit): close(2)
    /// always releases the fd on Linux, so fault injection does not apply to them.
    func callQuietly(_ request: KernelRequest, _ log: SimRequest, _ body: () -> Errno?) {
        let kernelCall = request.call
        if delayMS > 0 { sleepThroughSignals(ms: delayMS) }
        callCounts[kernelCall.ordinal] += 1
        mutatingCallCount += 1
        let errno = body()
        appendToLog(log)
        if traceEnabled { record(kernelCall, request.detail, errno: errno, injected: false) }
    }

    /// Counts the call (VSMMU_SIM_FAIL's `#N` is per call kind, from the kernel's start)
    /// and returns the errno of the first rule that fails it.
    func injectedFailure(for call: KernelCall) -> Errno? {
        let n = callCounts[call.ordinal] + 1
        callCounts[call.ordinal] = n
        guard !failRules.isEmpty else { return nil }
        let op = call.name
        for rule in failRules where rule.op == op && (rule.nth == nil || rule.nth == n) {
            return rule.errno
        }
        return nil
    }

    func record(_ call: KernelCall, _ detail: String, errno: Errno?, injected: Bool) {
        if traceEnabled { trace.append(SimCall(op: call.name, detail: detail, mutating: call.isMutating, errno: errno, injected: injected)) }
    }

    /// How many calls of each kind this kernel answered (injected failures included), by
    /// `KernelCall.ordinal`.
    public func callCount(_ call: KernelCall) -> Int { callCounts[call.ordinal] }
}

extension KernelCall {
    /// The call's position in the vocabulary's declaration order (`allCases` order): the
    /// index of its counter. A case-only enum is stored as that number.
    var ordinal: Int { Int(unsafeBitCast(self, to: UInt8.self)) }
}

/// VSMMU_SIM_DELAY_MS: the whole delay even when a signal arrives meanwhile (a kernel call is
/// not cut short by the caller's SIGINT; usleep would return early with EINTR).
func sleepThroughSignals(ms: Int) {
    var left = timespec(tv_sec: min(ms, 3_600_000) / 1000, tv_nsec: (ms % 1000) * 1_000_000)
    var rest = timespec()
    while nanosleep(&left, &rest) != 0 && errno == EINTR { left = rest }
}
