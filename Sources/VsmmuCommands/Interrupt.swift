import ArgumentParser
import Foundation

/// -v and --quiet of apply and destroy.
struct ProgressOptions: ParsableArguments {
    @Flag(name: .shortAndLong, help: "Print each kernel call as it finishes too.")
    var verbose = false

    @Flag(name: .shortAndLong, help: "Print no progress lines (the plan and the result only).")
    var quiet = false

    func validate() throws {
        if verbose && quiet { throw ValidationError("--verbose and --quiet exclude each other") }
    }

    func apply(to r: inout Request) { r.verbose = verbose; r.quiet = quiet }
}

/// The first SIGINT or SIGTERM during an apply asks it to stop after the step in flight
/// (the executor asks before each step, so the journal stays consistent). Further signals
/// are ignored for a grace period (a hurried double Ctrl-C does not cut the step short);
/// after it the signals have their default action back, so a second one stops at once (the
/// journal covers that too).
enum Interrupt {
    nonisolated(unsafe) static var requested: sig_atomic_t = 0
    nonisolated(unsafe) static var installed = false
    /// Seconds after the first signal during which another is ignored
    /// (VSMMU_INTERRUPT_GRACE_SECONDS, for tests; default 3).
    nonisolated(unsafe) static var graceSeconds: UInt32 = 3

    /// Installed when the first step is about to run: a Ctrl-C at the approval prompt
    /// still ends vsmmu at once (nothing has changed then).
    static func install() {
        guard !installed else { return }
        installed = true
        // A parent may have started vsmmu with these signals blocked (they would stay pending).
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGTERM)
        sigaddset(&set, SIGALRM)   // the end of the grace period
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
        if let g = Environment.value("VSMMU_INTERRUPT_GRACE_SECONDS").flatMap({ UInt32($0) }) { graceSeconds = max(1, g) }
        // Only async-signal-safe calls in the handlers: signal(2) and alarm(2).
        signal(SIGALRM) { _ in
            signal(SIGINT, SIG_DFL)
            signal(SIGTERM, SIG_DFL)
        }
        for s in [SIGINT, SIGTERM] {
            signal(s) { _ in
                Interrupt.requested = 1
                signal(SIGINT, SIG_IGN)
                signal(SIGTERM, SIG_IGN)
                alarm(Interrupt.graceSeconds)
            }
        }
    }

    static var wasRequested: Bool { requested != 0 }
}
