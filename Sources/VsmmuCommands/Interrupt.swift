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
/// (the executor asks before each step, so the journal stays consistent); the handler
/// then gives the signal back its default action, so a second one stops at once.
enum Interrupt {
    nonisolated(unsafe) static var requested: sig_atomic_t = 0
    nonisolated(unsafe) static var installed = false

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
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
        for s in [SIGINT, SIGTERM] {
            signal(s) { sig in
                Interrupt.requested = 1
                signal(sig, SIG_DFL)
            }
        }
    }

    static var wasRequested: Bool { requested != 0 }
}
