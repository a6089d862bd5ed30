import VsmmuKernel

// RLIMIT_MEMLOCK accounting of pinned IOAS pages (docs/kernel-interface.md §2.6, §9.15):
// without CAP_IPC_LOCK every pinned page is charged to the mapping user's locked_vm, or
// to the mapping process after IOMMU_OPTION RLIMIT_MODE = 1, against the mapping task's
// RLIMIT_MEMLOCK; over it, the pin fails with ENOMEM (at IOAS_MAP when the IOAS holds a
// HWPT, else at HWPT_ALLOC or attach). Each mapping is charged on its own (memory mapped
// in two IOASes is charged twice, as the kernel's per-iopt_pages accounting does).

/// Whose budget a pinned mapping is charged to.
enum MemlockAccount: Hashable, Codable {
    case user(UInt32)
    case process(Int)
}

extension SimulatedKernel {
    /// Sets RLIMIT_MEMLOCK (bytes) of the holder (`process` nil) or of a simulated process,
    /// as prlimit(2) does; nil: unlimited, or CAP_IPC_LOCK (nothing is charged).
    public func setMemlockLimit(_ bytes: UInt64?, for process: SimProcessID? = nil) {
        setMemlockLimitImpl(bytes, process: process?.number ?? 0)
        appendToLog(.setMemlockLimit(process: process?.number ?? 0, bytes: bytes))
    }

    /// KernelPort's: the holder's limit (the corpus runner is the holder).
    public func limitLockedMemory(_ bytes: UInt64?) throws(KernelCallError) { setMemlockLimit(bytes) }

    /// Bytes pinned and charged to `process`'s budget (its user's in user mode), for tests.
    public func lockedBytes(of process: SimProcessID? = nil) -> (user: UInt64, process: UInt64) {
        let n = process?.number ?? 0
        return (lockedBytes(.user(uid(of: n))), lockedBytes(.process(n)))
    }

    func setMemlockLimitImpl(_ bytes: UInt64?, process: Int) {
        if process == 0 { state.holderMemlockLimit = bytes } else { state.processes[process]?.memlockLimit = bytes }
    }

    func memlockLimit(of process: Int) -> UInt64? {
        process == 0 ? state.holderMemlockLimit : state.processes[process]?.memlockLimit
    }

    /// Simulated processes run as root unless told otherwise: one user, one budget.
    func uid(of process: Int) -> UInt32 { process == 0 ? 0 : state.processes[process]?.uid ?? 0 }

    /// The account a mapping made by `process` in context `cid` is charged to; nil when
    /// nothing is charged (no limit: CAP_IPC_LOCK).
    func memlockAccount(cid: Int, process: Int) -> MemlockAccount? {
        guard memlockLimit(of: process) != nil else { return nil }
        return state.contexts[cid]?.accountPerProcess == true ? .process(process) : .user(uid(of: process))
    }

    /// Pinned bytes charged to an account, over every context.
    func lockedBytes(_ account: MemlockAccount) -> UInt64 {
        var total: UInt64 = 0
        for context in state.contexts.values {
            for object in context.objects.values {
                guard case .ioas(let ioas) = object else { continue }
                for m in ioas.mappings where m.pinned && m.charged == account { total &+= pinnedLength(m) }
            }
        }
        return total
    }

    /// Whole pages: a partial page at either end is pinned in full.
    func pinnedLength(_ m: Mapping) -> UInt64 {
        let offset = pageOffset(of: m)
        let span = offset &+ m.length
        return (span + simPageSize - 1) / simPageSize * simPageSize
    }

    /// ENOMEM when pinning `bytes` more for mappings of `process` in `cid` exceeds the limit.
    func checkMemlock(cid: Int, process: Int, adding bytes: UInt64) throws(Refusal) {
        guard bytes > 0, let account = memlockAccount(cid: cid, process: process), let limit = memlockLimit(of: process) else { return }
        let locked = lockedBytes(account)
        let pages = (locked &+ bytes) / simPageSize
        if locked.addingReportingOverflow(bytes).overflow || pages > limit / simPageSize {
            let whose: String
            switch account {
            case .user(let uid): whose = "user \(uid)'s locked_vm"
            case .process(let n): whose = n == 0 ? "the process's pinned_vm" : "simulated process #\(n)'s pinned_vm"
            }
            throw Refusal(.ENOMEM, "pinning \(hex(bytes)) bytes more would bring \(whose) to \(hex(locked &+ bytes)), over RLIMIT_MEMLOCK \(hex(limit)) (no CAP_IPC_LOCK)")
        }
    }
}
