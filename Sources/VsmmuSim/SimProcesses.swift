import Foundation
import VsmmuKernel

// Processes besides the holder: a VMM that `vsmmu launch` hands fds to holds them in its
// own process, and the kernel's rules (one bind per device, unbind waiting for every fd)
// span every process. See SimProcess.

/// A simulated process other than the holder, by its number.
public struct SimProcessID: Hashable, Sendable, Codable, CustomStringConvertible {
    public var number: Int
    public init(number: Int) { self.number = number }
    public var description: String { "simulated process #\(number)" }
}

extension SimulatedKernel {
    /// A new process standing for the real process `pid` running `command`; it holds no fd.
    public func spawnProcess(pid: Int32, command: String) -> SimProcessID {
        let n = state.nextProcess
        callQuietly(.processSpawn(pid: pid, command: command), .spawnProcess(pid: pid, command: command)) {
            spawnProcessImpl(pid: pid, command: command)
            return nil
        }
        return SimProcessID(number: n)
    }

    /// The processes besides the holder: number, the pid they stand for, command.
    public var processes: [(id: SimProcessID, pid: Int32, command: String)] {
        state.processes.sorted { $0.key < $1.key }.map { (SimProcessID(number: $0.key), $0.value.pid, $0.value.command) }
    }

    /// Moves the holder's fds to `process`, as SCM_RIGHTS followed by the holder's close
    /// does: the open files (and whatever they bind or reference) are unchanged.
    /// Returns EBADF for an fd the holder does not hold (nothing moves then).
    public func transferFiles(_ fds: [Int32], to process: SimProcessID) throws(KernelCallError) {
        try call(.sendFDs(fds: fds, process: process.number), .transferFiles(fds: fds, process: process.number)) { () throws(Refusal) in
            try transferFilesImpl(fds, to: process.number)
        }
    }

    /// Runs `body` as `process`: every call in it is that process's (its fd table, its
    /// privileges). Calls from other threads must not interleave (the kernel is not
    /// thread-safe anyway).
    public func run<T>(as process: SimProcessID, _ body: () throws -> T) rethrows -> T {
        let previous = state.currentProcess
        switchProcess(to: process.number)
        defer { switchProcess(to: previous) }
        return try body()
    }

    /// The process exits: its fds close (so the kernel destroys what only they held),
    /// and it is forgotten.
    public func exitProcess(_ process: SimProcessID) {
        guard state.processes[process.number] != nil else { return }
        run(as: process) {
            callQuietly(.processExit, .processExit) { processExitImpl(); return nil }
        }
    }

    // MARK: implementations (replayed from the redo log)

    func spawnProcessImpl(pid: Int32, command: String) {
        state.processes[state.nextProcess] = SimProcess(pid: pid, command: command, capSysResource: false)
        state.nextProcess += 1
    }

    func transferFilesImpl(_ fds: [Int32], to process: Int) throws(Refusal) {
        guard state.processes[process] != nil else { throw Refusal(.ESRCH, "no simulated process #\(process)") }
        for fd in fds where ownFile(fd) == nil { throw Refusal(.EBADF, "fd \(fd) is not open in the sending process") }
        for fd in fds { state.fileOwners[fd] = process == 0 ? nil : process }
    }

    func switchProcess(to number: Int) {
        guard state.currentProcess != number else { return }
        // Not a kernel call: logged so that a replay answers later calls as the same process.
        state.currentProcess = number
        appendToLog(.switchProcess(number))
    }

    /// Who holds the device's cdev open, in every process (the holder is this process).
    func deviceHoldersImpl(_ address: PCIAddress) -> [FileHolder] {
        var holders: [Int: FileHolder] = [:]
        for fd in indexes.cdevFDs[address] ?? [] {
            let owner = state.fileOwners[fd] ?? 0
            if owner == 0 {
                holders[0] = FileHolder(pid: getpid(), command: ProcessInfo.processInfo.processName)
            } else if let p = state.processes[owner] {
                holders[owner] = FileHolder(pid: p.pid, command: p.command)
            }
        }
        return holders.values.sorted { $0.pid < $1.pid }
    }

    var callerHasCapSysResource: Bool {
        state.currentProcess == 0 || state.processes[state.currentProcess]?.capSysResource == true
    }
}
