import Foundation
import VsmmuKernel
import VsmmuModel
import VsmmuPlanner

/// A step that failed: which one, on what, the kernel's errno, and what to do.
public struct ApplyError: Error, CustomStringConvertible {
    public var operation: PlanStep
    public var errno: Errno?
    public var message: String
    public var hint: String?
    /// What the executor did to leave the host safe (e.g. a device given back).
    public var rollback: [String] = []
    /// The kernel call that failed, when one did.
    public var cause: KernelCallError? = nil

    public var description: String {
        var s = "step \(operation.index) \(operation.call) (\(operation.resource)) failed: \(message)"
        if let errno { s += ": \(errno.name) (\(errno.meaning))" }
        return s
    }
}

/// Runs a plan's operations against the kernel port, one by one, in batches: the intents
/// of a batch are journaled and synced once before its first step runs, each outcome is
/// written as its step ends (docs/contract.md §8); stops at the first failure.
public final class Executor {
    /// On a VFIO driver (vfio-pci or a variant) through a driver_override of it, with no
    /// record of where it came from: vsmmu's own doing whose record was lost (or an
    /// operator's identical one). The driver before is then unknown, not that driver.
    static func vsmmuMovedIt(_ d: SysfsPCIDevice?) -> Bool { VFIODriver.isVFIO(d?.driver) && d?.driverOverride == d?.driver }

    /// Steps per batch: one journal fsync per this many steps. A kill inside a batch makes
    /// every step of it without an outcome "maybe done", and the guests they touch are
    /// rebuilt, so the bound keeps that small (a few guests) while an apply of 100,000
    /// steps syncs a few hundred times instead of once per step.
    public static let defaultBatch = 256

    let port: KernelPort
    let store: StateStore
    let batch: Int
    // Each line is only made when someone listens (an apply of 100,000 steps makes no
    // 100,000 strings for nobody).
    /// One line per resource as it starts and when it ends (terraform's), with its time and ids.
    let progress: ((String) -> Void)?
    /// One line per finished step (kernel call), for -v.
    let calls: ((String) -> Void)?

    /// The step about to run (`[n/N] CALL resource`), for a live line on a terminal.
    let inFlight: ((String) -> Void)?

    public init(port: KernelPort, store: StateStore, batch: Int = Executor.defaultBatch, progress: ((String) -> Void)? = nil,
                calls: ((String) -> Void)? = nil, inFlight: ((String) -> Void)? = nil) {
        self.port = port; self.store = store; self.batch = max(1, batch)
        self.progress = progress; self.calls = calls; self.inFlight = inFlight
    }

    /// Runs the operations in order. `shouldStop` is asked before each step (SIGTERM in the
    /// agent): the running step always finishes, so the journal stays consistent.
    public func run(_ plan: Plan, shouldStop: () -> Bool = { false }) throws(ApplyError) {
        let total = plan.operations.count
        var lines = progress.map { _ in ResourceLines(plan) }
        var start = 0
        while start < total {
            let ops = Array(plan.operations[start..<min(start + batch, total)])
            start += ops.count
            let seqs: [Int]
            do { seqs = try store.begin(ops) } catch {
                throw ApplyError(operation: ops[0], errno: nil, message: "cannot write the journal: \(error)")
            }
            for (i, op) in ops.enumerated() {
                if shouldStop() {
                    try? store.skipped(Array(seqs[i...]))
                    throw ApplyError(operation: op, errno: nil, message: "stopped before this step (asked to stop: a signal, or the agent shutting down); everything before it is done and journaled",
                                     hint: "the next apply continues from here")
                }
                if let progress, let line = lines?.starting(op) { progress(line) }
                inFlight?("[\(op.index)/\(total)] \(op.call) \(op.resource)")
                do {
                    let patches = try perform(op)
                    try? store.done(seqs[i], patches)
                    calls?("[\(op.index)/\(total)] \(op.call) \(op.resource): ok")
                    if let progress, let line = lines?.finished(op, ids: ResourceLines.ids(op.resource, store.holdings)) { progress(line) }
                } catch {
                    try? store.failed(seqs[i], error.errno)
                    try? store.skipped(Array(seqs[(i + 1)...]))
                    var e = error
                    e.rollback = rollback(after: op)
                    throw e
                }
            }
        }
    }

    // MARK: - one step

    func fail(_ op: PlanStep, _ e: KernelCallError) -> ApplyError {
        ApplyError(operation: op, errno: e.errno, message: e.detail.isEmpty ? "the kernel refused" : e.detail,
                   hint: Hints.hint(call: op.kernelCall, errno: e.errno, action: op.action), cause: e)
    }

    func guestHolding(_ op: PlanStep, _ g: String) throws(ApplyError) -> GuestHolding {
        guard let h = store.holdings.guests[g] else {
            throw ApplyError(operation: op, errno: nil, message: "guest \(g) has no iommufd context held (an earlier step did not run)")
        }
        return h
    }

    /// The device leaves the holdings, and its vDevices with it (a vDevice left once the
    /// device fd is closed is a kernel tombstone).
    func dropDevice(_ h: GuestHolding, _ g: String, _ d: String) -> [HoldingPatch] {
        var patches: [HoldingPatch] = [.device(g, d, nil)]
        for (v, vh) in h.vsmmus where vh.vdevices[d] != nil {
            var nv = vh
            nv.vdevices[d] = nil
            patches.append(.vsmmu(g, v, nv))
        }
        return patches
    }

    func device(_ op: PlanStep, _ g: String, _ d: String) throws(ApplyError) -> DeviceHolding {
        guard let h = store.holdings.guests[g]?.devices[d] else {
            throw ApplyError(operation: op, errno: nil, message: "device \(g)/\(d) is not bound (an earlier step did not run)")
        }
        return h
    }

    // A guest's parts, from the guest the step has looked up already (one lookup of the
    // guest per step, not one per part).

    func device(_ op: PlanStep, _ h: GuestHolding, _ g: String, _ d: String) throws(ApplyError) -> DeviceHolding {
        guard let dev = h.devices[d] else {
            throw ApplyError(operation: op, errno: nil, message: "device \(g)/\(d) is not bound (an earlier step did not run)")
        }
        return dev
    }

    func vsmmu(_ op: PlanStep, _ h: GuestHolding, _ g: String, _ v: String) throws(ApplyError) -> VSMMUHolding {
        guard let vh = h.vsmmus[v] else {
            throw ApplyError(operation: op, errno: nil, message: "vSMMU \(g)/\(v) has no vIOMMU held (an earlier step did not run)")
        }
        return vh
    }

    func target(_ op: PlanStep, _ h: GuestHolding, _ g: String, _ t: AttachTarget) throws(ApplyError) -> ObjectID {
        switch t {
        case .stage2(let i):
            guard let s = h.stage2[i] else { throw ApplyError(operation: op, errno: nil, message: "no stage-2 HWPT held for \(i)") }
            return s.hwpt
        case .nested(let v, let k):
            let vh = try vsmmu(op, h, g, v)
            guard let id = k == .abort ? vh.abortHWPT : vh.bypassHWPT else {
                throw ApplyError(operation: op, errno: nil, message: "no \(k.rawValue) HWPT held for \(g)/\(v)")
            }
            return id
        }
    }

    func perform(_ op: PlanStep) throws(ApplyError) -> [HoldingPatch] {
        do {
            return try performKernel(op)
        } catch let e as KernelCallError {
            throw fail(op, e)
        } catch let e as ApplyError {
            throw e
        } catch {
            throw ApplyError(operation: op, errno: nil, message: "\(error)")
        }
    }

    // MARK: - safety after a failure

    /// A failed move to vfio-pci must not leave the device on no driver (docs/contract.md §7):
    /// undo the override and give it back to the driver it had.
    func rollback(after op: PlanStep) -> [String] {
        let address: PCIAddress
        switch op.action {
        case .setDriverOverride(let a, let d?) where VFIODriver.isVFIO(d): address = a
        case .unbindDriver(let a, _): address = a
        case .probeDriver(let a, let d?) where VFIODriver.isVFIO(d): address = a
        default: return []
        }
        guard let now = try? port.pciDevice(address), !VFIODriver.isVFIO(now.driver) else { return [] }
        var done: [String] = []
        if VFIODriver.isVFIO(now.driverOverride) {
            if (try? port.writeDriverOverride(address, nil)) != nil { done.append("cleared driver_override of \(address)") }
        }
        if now.driver == nil {
            _ = try? port.driversProbe(address)
            let after = try? port.pciDevice(address)
            done.append("re-probed \(address): now on \(after?.driver ?? "no driver")")
        }
        return done
    }
}

/// Driver data for the nested HWPTs that exist before the guest runs.
public enum NestedData {
    public static func bytes(dataType: HWPTDataType, kind: NestedKind) -> [UInt8] {
        switch dataType {
        case .armSMMUv3:
            // vSTE words 0 and 1, little-endian (docs/kernel-interface.md §5.3): abort {0x1, 0}, bypass {0x9, 0}.
            let w0: UInt64 = kind == .abort ? UAPI.vsteAbort.0 : UAPI.vsteBypass.0
            return LE.bytes(w0) + LE.bytes(UInt64(0))
        case .selftest:
            // iommu_hwpt_selftest {iotlb, pagetable_type} (docs/kernel-interface.md §7.3).
            return [UInt8](repeating: 0, count: 8)
        default:
            return []
        }
    }
}

/// What to do about a kernel error, per call (docs/kernel-interface.md §9: errno ≠ cause).
public enum Hints {
    static let byCall: [KernelCall: [Errno: String]] = [
        .bindIommufd: [
            .EPERM: "the IOMMU group is not viable (a sibling is on a host driver) or MSI cannot be isolated (iommufd.allow_unsafe_interrupts)",
            .EINVAL: "the device is already bound through another fd, or its IOMMU is not cache-coherent",
            .EBUSY: "the device's legacy VFIO group node /dev/vfio/<group> is open in another process",
        ],
        .sysfsUnbind: [.EBUSY: "the device is in use: close whatever holds it, vsmmu never forces an unbind"],
        .viommuAlloc: [.EOPNOTSUPP: "the SMMU cannot nest, or is neither CANWBS nor S2FWB (check `vsmmu host`)"],
        .ioasMap: [.EINVAL: mapOutsideAperture, .ENOMEM: memlock],
        .ioasMapFile: [.EINVAL: mapOutsideAperture, .ENOMEM: memlock],
        .hwptAlloc: [.ENOMEM: memlock, .EOPNOTSUPP: "the IOMMU does not support this HWPT (nest parent needs nesting support)"],
        .attach: [
            .EINVAL: "the device sits behind another IOMMU than the HWPT, or a device of its IOMMU group is attached elsewhere",
            .EADDRINUSE: "a reserved region of the device (MSI window) collides with mapped guest RAM",
        ],
        .vdeviceAlloc: [.EEXIST: "the device already has a vDevice, or its vSID is taken on this vIOMMU"],
        .destroy: [.EBUSY: "the object is still referenced; run the command again to converge"],
    ]
    static let mapOutsideAperture = "guest RAM overlaps an IOVA range the kernel reserves (the MSI window) or lies beyond the stage-2 aperture"
    static let memlock = "pinning guest RAM exceeds RLIMIT_MEMLOCK: raise it (LimitMEMLOCK=) or run with CAP_IPC_LOCK"

    public static func hint(call: KernelCall?, errno: Errno, action: OpAction) -> String? {
        if let call, let hint = byCall[call]?[errno] { return hint }
        if errno == .ENOMEM { return "the kernel is out of memory, or a memlock limit was reached" }
        return nil
    }
}
