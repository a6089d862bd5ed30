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

    public var description: String {
        var s = "step \(operation.index) \(operation.call) (\(operation.resource)) failed: \(message)"
        if let errno { s += ": \(errno.name) (\(errno.meaning))" }
        return s
    }
}

/// Runs a plan's operations against the kernel port, one by one, each journaled
/// before it runs; stops at the first failure.
public final class Executor {
    let port: KernelPort
    let store: StateStore
    let progress: (String) -> Void

    public init(port: KernelPort, store: StateStore, progress: @escaping (String) -> Void = { _ in }) {
        self.port = port; self.store = store; self.progress = progress
    }

    /// Runs the operations in order. `shouldStop` is asked before each step (SIGTERM in the
    /// agent): the running step always finishes, so the journal stays consistent.
    public func run(_ plan: Plan, shouldStop: () -> Bool = { false }) throws(ApplyError) {
        let total = plan.operations.count
        for op in plan.operations {
            if shouldStop() {
                throw ApplyError(operation: op, errno: nil, message: "stopped before this step (the agent is shutting down); everything before it is done and journaled",
                                 hint: "the next apply continues from here")
            }
            let seq: Int
            do { seq = try store.begin(op) } catch {
                throw ApplyError(operation: op, errno: nil, message: "cannot write the journal: \(error)")
            }
            do {
                let patches = try perform(op)
                try? store.done(seq, patches)
                progress("[\(op.index)/\(total)] \(op.call) \(op.resource): ok")
            } catch {
                try? store.failed(seq, error.errno)
                var e = error
                e.rollback = rollback(after: op)
                throw e
            }
        }
    }

    // MARK: - one step

    func fail(_ op: PlanStep, _ e: KernelCallError) -> ApplyError {
        ApplyError(operation: op, errno: e.errno, message: e.detail.isEmpty ? "the kernel refused" : e.detail,
                   hint: Hints.hint(call: op.call, errno: e.errno, action: op.action))
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

    func vsmmu(_ op: PlanStep, _ g: String, _ v: String) throws(ApplyError) -> VSMMUHolding {
        guard let h = store.holdings.guests[g]?.vsmmus[v] else {
            throw ApplyError(operation: op, errno: nil, message: "vSMMU \(g)/\(v) has no vIOMMU held (an earlier step did not run)")
        }
        return h
    }

    func target(_ op: PlanStep, _ g: String, _ t: AttachTarget) throws(ApplyError) -> ObjectID {
        let h = try guestHolding(op, g)
        switch t {
        case .stage2(let i):
            guard let s = h.stage2[i] else { throw ApplyError(operation: op, errno: nil, message: "no stage-2 HWPT held for \(i)") }
            return s.hwpt
        case .nested(let v, let k):
            let vh = try vsmmu(op, g, v)
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

    /// On vfio-pci through a driver_override of vfio-pci, with no record of where it came
    /// from: vsmmu's own doing whose record was lost (or an operator's identical one). The
    /// driver before is then unknown, not vfio-pci.
    static func vsmmuMovedIt(_ d: SysfsPCIDevice?) -> Bool { d?.driver == "vfio-pci" && d?.driverOverride == "vfio-pci" }

    func performKernel(_ op: PlanStep) throws -> [HoldingPatch] {
        switch op.action {
        case .setDriverOverride(let a, let d):
            var patches: [HoldingPatch] = []
            if d == "vfio-pci", store.holdings.originalDrivers[a] == nil, !store.holdings.originalUnknown(a) {
                // Remember where the device came from, before it moves (for destroy); never
                // what vsmmu itself set (a step that died before its record was written).
                let current = try port.pciDevice(a)
                patches.append(Self.vsmmuMovedIt(current) ? .originalDriverUnknown(a) : .originalDriver(a, .some(current?.driver)))
            }
            try port.writeDriverOverride(a, d)
            // Verify each binding step before the next (reference §8, safe order).
            let now = try port.pciDevice(a)?.driverOverride
            if now != d {
                throw ApplyError(operation: op, errno: nil, message: "after writing driver_override, \(a) reads \(now.map { "'\($0)'" } ?? "unset"), not \(d.map { "'\($0)'" } ?? "unset")")
            }
            return patches

        case .forgetOriginalDriver(let a):
            return [.originalDriver(a, nil)]

        case .unbindDriver(let a, let d):
            try port.unbindDriver(a, driver: d)
            if let still = try port.pciDevice(a)?.driver, still == d {
                throw ApplyError(operation: op, errno: nil, message: "after unbind, \(a) is still bound to \(d)", hint: "the driver refused to let go of the device; vsmmu does not force it")
            }
            return []

        case .probeDriver(let a, let expect):
            try port.driversProbe(a)
            let now = try port.pciDevice(a)
            if let expect, now?.driver != expect {
                throw ApplyError(operation: op, errno: nil,
                                 message: "after drivers_probe \(a) is bound to \(now?.driver ?? "no driver"), not \(expect)",
                                 hint: expect == "vfio-pci" ? "is the vfio-pci module loaded, and does its probe accept this device (bridges and PFs with VFs are refused)?" : "the original driver did not take the device back; bind it by hand")
            }
            if expect == "vfio-pci", now?.vfioDevIndex == nil {
                throw ApplyError(operation: op, errno: nil, message: "\(a) is on vfio-pci but has no vfio-dev/vfioN: is CONFIG_VFIO_DEVICE_CDEV on?")
            }
            // Given back: the device is no longer vsmmu's to restore.
            if expect != "vfio-pci", store.holdings.originalDrivers[a] != nil { return [.originalDriver(a, nil)] }
            return []

        case .openIommufd(let g):
            let fd = try port.openIommufd()
            return [.guest(g, GuestHolding(iommufd: fd, holder: port.holderIdentity))]

        case .ioasAlloc(let g):
            let h = try guestHolding(op, g)
            return [.ioas(g, try port.ioasAlloc(h.iommufd))]

        case .destroyIOAS(let g):
            let h = try guestHolding(op, g)
            if let ioas = h.ioas { try port.destroy(h.iommufd, id: ioas) }
            return [.ioas(g, nil)]

        case .closeIommufd(let g):
            let h = try guestHolding(op, g)
            port.close(h.iommufd)
            return [.guest(g, nil)]

        case .closeGuest(let g):
            let h = try guestHolding(op, g)
            // The context is uncertain: close every fd it holds; the kernel then destroys
            // every object in it (reference §4.4). Host-level bindings stay.
            for v in h.vsmmus.values { for q in v.eventQueues.values { port.closeEventFD(h.iommufd, q.fd) } }
            for d in h.devices.values { if let c = d.cdev { port.close(c) } }
            for m in h.memory.values { port.releaseGuestMemory(m.memory) }
            port.close(h.iommufd)
            return [.guest(g, nil)]

        case .forgetGuest(let g):
            return [.guest(g, nil)]

        case .openDevice(let g, let d, let a):
            _ = try guestHolding(op, g)
            guard let s = try port.pciDevice(a), s.driver == "vfio-pci", let index = s.vfioDevIndex else {
                throw ApplyError(operation: op, errno: nil, message: "\(a) is not on vfio-pci with a VFIO cdev")
            }
            let cdev = try port.openVfioDevice(index: index)
            var patches: [HoldingPatch] = [.device(g, d, DeviceHolding(source: a.description, cdev: cdev, vfioIndex: index, mockStdev: nil, devID: 0))]
            if store.holdings.originalDrivers[a] == nil, !store.holdings.originalUnknown(a) {
                patches.insert(Self.vsmmuMovedIt(s) ? .originalDriverUnknown(a) : .originalDriver(a, .some("vfio-pci")), at: 0)
            }
            return patches

        case .bindDevice(let g, let d):
            let h = try guestHolding(op, g)
            var dev = try device(op, g, d)
            guard let cdev = dev.cdev else { throw ApplyError(operation: op, errno: nil, message: "\(g)/\(d) has no open cdev") }
            dev.devID = try port.bindIommufd(cdev, iommufd: h.iommufd)
            return [.device(g, d, dev)]

        case .mockDevice(let g, let d, let source):
            let h = try guestHolding(op, g)
            guard let ioas = h.ioas else { throw ApplyError(operation: op, errno: nil, message: "guest \(g) has no IOAS") }
            let m = try port.mockDomain(h.iommufd, ptID: ioas)
            var dev = DeviceHolding(source: source, cdev: nil, vfioIndex: nil, mockStdev: m.stdevID, devID: m.idevID)
            dev.attached = m.hwptID
            return [.device(g, d, dev)]

        case .chownDevice(let g, let d, let uid, let gid):
            var dev = try device(op, g, d)
            if let index = dev.vfioIndex { try port.chownVfioDevice(index: index, uid: uid, gid: gid) }
            dev.owner = uid
            return [.device(g, d, dev)]

        case .attach(let g, let d, let t):
            let h = try guestHolding(op, g)
            var dev = try device(op, g, d)
            let pt = try target(op, g, t)
            if let stdev = dev.mockStdev {
                dev.attached = try port.mockDomainReplace(h.iommufd, stdevID: stdev, ptID: pt)
            } else if let cdev = dev.cdev {
                dev.attached = try port.attach(cdev, ptID: pt)
            }
            return [.device(g, d, dev)]

        case .detach(let g, let d):
            let h = try guestHolding(op, g)
            var dev = try device(op, g, d)
            if let stdev = dev.mockStdev {
                // A mock device cannot be detached: park it on its stage 2 until it is destroyed.
                if let s2 = h.stage2.values.first?.hwpt, dev.attached != s2 {
                    dev.attached = try port.mockDomainReplace(h.iommufd, stdevID: stdev, ptID: s2)
                }
            } else if let cdev = dev.cdev {
                try port.detach(cdev)
                dev.attached = nil
            }
            return [.device(g, d, dev)]

        case .closeDevice(let g, let d):
            let h = try guestHolding(op, g)
            let dev = try device(op, g, d)
            if let stdev = dev.mockStdev { try port.destroy(h.iommufd, id: stdev) }
            if let cdev = dev.cdev { port.close(cdev) }
            return dropDevice(h, g, d)

        case .forgetDevice(let g, let d):
            return dropDevice(try guestHolding(op, g), g, d)

        case .allocStage2(let g, let i, let via, let np):
            let h = try guestHolding(op, g)
            let dev = try device(op, g, via)
            guard let ioas = h.ioas else { throw ApplyError(operation: op, errno: nil, message: "guest \(g) has no IOAS") }
            let id = try port.hwptAlloc(h.iommufd, flags: np ? UAPI.hwptAllocNestParent : 0, devID: dev.devID, ptID: ioas,
                                        dataType: UAPI.hwptDataNone, data: [])
            return [.stage2(g, i, Stage2Holding(hwpt: id, nestParent: np))]

        case .destroyStage2(let g, let i):
            let h = try guestHolding(op, g)
            if let s = h.stage2[i] { try port.destroy(h.iommufd, id: s.hwpt) }
            return [.stage2(g, i, nil)]

        case .createMemory(let g, let r, let size, let backing, let huge):
            _ = try guestHolding(op, g)
            let m = try port.createGuestMemory(name: "vsmmu:\(g)/\(r)", size: size, backing: backing, hugepageSize: huge)
            return [.memory(g, r, MemoryHolding(memory: m, backing: backing, iova: 0, length: size, mapped: false))]

        case .mapMemory(let g, let r, let iova, _):
            let h = try guestHolding(op, g)
            guard var m = h.memory[r], let ioas = h.ioas else { throw ApplyError(operation: op, errno: nil, message: "memory \(g)/\(r) was not created") }
            // memfd and hugetlbfs RAM go in by IOAS_MAP_FILE, so another process (the VMM)
            // can map the same pages and the pin accounting can move (reference §9.16).
            let source: MapSource = m.memory.file.map { .file($0, offset: 0) } ?? .userVA(m.memory.userVA)
            m.iova = try port.ioasMap(h.iommufd, ioas: ioas, flags: UAPI.ioasMapFixedIOVA | UAPI.ioasMapWriteable | UAPI.ioasMapReadable,
                                      source: source, length: m.length, iova: iova)
            m.mapped = true
            return [.memory(g, r, m)]

        case .unmapMemory(let g, let r):
            let h = try guestHolding(op, g)
            guard var m = h.memory[r], let ioas = h.ioas else { return [] }
            _ = try port.ioasUnmap(h.iommufd, ioas: ioas, iova: m.iova, length: m.length)
            m.mapped = false
            return [.memory(g, r, m)]

        case .releaseMemory(let g, let r):
            let h = try guestHolding(op, g)
            if let m = h.memory[r] { port.releaseGuestMemory(m.memory) }
            return [.memory(g, r, nil)]

        case .checkHwInfo(let g, _, let via, let expect):
            let h = try guestHolding(op, g)
            let dev = try device(op, g, via)
            let info = try port.getHwInfo(h.iommufd, devID: dev.devID, requestType: nil)
            guard info.dataType == expect else {
                throw ApplyError(operation: op, errno: nil, message: "GET_HW_INFO for \(g)/\(via) reports type \(info.dataType), not \(expect): the device is not behind the IOMMU the plan expects",
                                 hint: "run `vsmmu host` and compare with the host description the plan used")
            }
            if expect == UAPI.hwInfoARMSMMUv3, info.data.count >= 12 {
                let idr0 = UInt32(info.data[8]) | UInt32(info.data[9]) << 8 | UInt32(info.data[10]) << 16 | UInt32(info.data[11]) << 24
                if idr0 & 0x3 != 0x3 {
                    throw ApplyError(operation: op, errno: nil, message: "the SMMU behind \(g)/\(via) lacks nesting: IDR0.S1P=\(idr0 >> 1 & 1) IDR0.S2P=\(idr0 & 1)")
                }
            }
            return []

        case .allocVIOMMU(let g, let v, let physical, let type, let via):
            let h = try guestHolding(op, g)
            let dev = try device(op, g, via)
            guard let s2 = h.stage2[physical] else { throw ApplyError(operation: op, errno: nil, message: "no stage-2 HWPT held for \(physical)") }
            // TEGRA241_CMDQV takes a 16-byte in/out struct (mmap offset and length).
            let data = type == UAPI.viommuTegra241CMDQV ? [UInt8](repeating: 0, count: 16) : []
            let r = try port.viommuAlloc(h.iommufd, type: type, devID: dev.devID, hwptID: s2.hwpt, data: data)
            return [.vsmmu(g, v, VSMMUHolding(physical: physical, viommu: r.id, viommuType: type))]

        case .allocVDevice(let g, let v, let d, let virt):
            let h = try guestHolding(op, g)
            var vh = try vsmmu(op, g, v)
            let dev = try device(op, g, d)
            let id = try port.vdeviceAlloc(h.iommufd, viommuID: vh.viommu, devID: dev.devID, virtID: virt)
            vh.vdevices[d] = VDeviceHolding(id: id, virtID: virt)
            return [.vsmmu(g, v, vh)]

        case .allocNested(let g, let v, let kind, let via, let dataType):
            let h = try guestHolding(op, g)
            var vh = try vsmmu(op, g, v)
            let dev = try device(op, g, via)
            let id = try port.hwptAlloc(h.iommufd, flags: 0, devID: dev.devID, ptID: vh.viommu, dataType: dataType,
                                        data: NestedData.bytes(dataType: dataType, kind: kind))
            if kind == .abort { vh.abortHWPT = id } else { vh.bypassHWPT = id }
            return [.vsmmu(g, v, vh)]

        case .allocEventQueue(let g, let v, let type, let depth):
            let h = try guestHolding(op, g)
            var vh = try vsmmu(op, g, v)
            let r = try port.veventqAlloc(h.iommufd, viommuID: vh.viommu, type: type, depth: depth)
            vh.eventQueues[type] = EventQueueHolding(id: r.id, fd: r.eventFD)
            return [.vsmmu(g, v, vh)]

        case .destroyEventQueue(let g, let v, let type):
            let h = try guestHolding(op, g)
            var vh = try vsmmu(op, g, v)
            if let q = vh.eventQueues[type] {
                // An open vEVENTQ fd blocks its own DESTROY (reference §9.8).
                port.closeEventFD(h.iommufd, q.fd)
                try port.destroy(h.iommufd, id: q.id)
            }
            vh.eventQueues[type] = nil
            return [.vsmmu(g, v, vh)]

        case .destroyNested(let g, let v, let kind):
            let h = try guestHolding(op, g)
            var vh = try vsmmu(op, g, v)
            if let id = kind == .abort ? vh.abortHWPT : vh.bypassHWPT { try port.destroy(h.iommufd, id: id) }
            if kind == .abort { vh.abortHWPT = nil } else { vh.bypassHWPT = nil }
            return [.vsmmu(g, v, vh)]

        case .destroyVDevice(let g, let v, let d):
            let h = try guestHolding(op, g)
            var vh = try vsmmu(op, g, v)
            if let vd = vh.vdevices[d] { try port.destroy(h.iommufd, id: vd.id) }
            vh.vdevices[d] = nil
            return [.vsmmu(g, v, vh)]

        case .destroyVIOMMU(let g, let v):
            let h = try guestHolding(op, g)
            let vh = try vsmmu(op, g, v)
            try port.destroy(h.iommufd, id: vh.viommu)
            return [.vsmmu(g, v, nil)]
        }
    }

    // MARK: - safety after a failure

    /// A failed move to vfio-pci must not leave the device on no driver (SPEC §7):
    /// undo the override and give it back to the driver it had.
    func rollback(after op: PlanStep) -> [String] {
        let address: PCIAddress
        switch op.action {
        case .setDriverOverride(let a, "vfio-pci"?), .unbindDriver(let a, _), .probeDriver(let a, "vfio-pci"?): address = a
        default: return []
        }
        guard let now = try? port.pciDevice(address), now.driver != "vfio-pci" else { return [] }
        var done: [String] = []
        if now.driverOverride == "vfio-pci" {
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
enum NestedData {
    static func bytes(dataType: UInt32, kind: NestedKind) -> [UInt8] {
        switch dataType {
        case UAPI.hwptDataARMSMMUv3:
            // vSTE words 0 and 1, little-endian (reference §5.3): abort {0x1, 0}, bypass {0x9, 0}.
            let w0: UInt64 = kind == .abort ? UAPI.vsteAbort.0 : UAPI.vsteBypass.0
            return le64(w0) + le64(0)
        case UAPI.hwptDataSelftest:
            // iommu_hwpt_selftest {iotlb, pagetable_type} (reference §7.3).
            return [UInt8](repeating: 0, count: 8)
        default:
            return []
        }
    }

    static func le64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }
}

/// What to do about a kernel error, per call (reference §9: errno ≠ cause).
public enum Hints {
    public static func hint(call: String, errno: Errno, action: OpAction) -> String? {
        switch (call, errno) {
        case ("VFIO_DEVICE_BIND_IOMMUFD", .EPERM):
            return "the IOMMU group is not viable (a sibling is on a host driver) or MSI cannot be isolated (iommufd.allow_unsafe_interrupts)"
        case ("VFIO_DEVICE_BIND_IOMMUFD", .EINVAL):
            return "the device is already bound through another fd, or its IOMMU is not cache-coherent"
        case ("VFIO_DEVICE_BIND_IOMMUFD", .EBUSY):
            return "the device's legacy VFIO group node /dev/vfio/<group> is open in another process"
        case ("SYSFS_UNBIND", .EBUSY):
            return "the device is in use: close whatever holds it, vsmmu never forces an unbind"
        case ("IOMMU_VIOMMU_ALLOC", .EOPNOTSUPP):
            return "the SMMU cannot nest, or is neither CANWBS nor S2FWB (check `vsmmu host`)"
        case ("IOMMU_IOAS_MAP", .EINVAL), ("IOMMU_IOAS_MAP_FILE", .EINVAL):
            return "guest RAM overlaps an IOVA range the kernel reserves (the MSI window) or lies beyond the stage-2 aperture"
        case ("IOMMU_IOAS_MAP", .ENOMEM), ("IOMMU_IOAS_MAP_FILE", .ENOMEM), ("IOMMU_HWPT_ALLOC", .ENOMEM):
            return "pinning guest RAM exceeds RLIMIT_MEMLOCK: raise it (LimitMEMLOCK=) or run with CAP_IPC_LOCK"
        case ("VFIO_DEVICE_ATTACH_IOMMUFD_PT", .EINVAL):
            return "the device sits behind another IOMMU than the HWPT, or a device of its IOMMU group is attached elsewhere"
        case ("VFIO_DEVICE_ATTACH_IOMMUFD_PT", .EADDRINUSE):
            return "a reserved region of the device (MSI window) collides with mapped guest RAM"
        case ("IOMMU_VDEVICE_ALLOC", .EEXIST):
            return "the device already has a vDevice, or its vSID is taken on this vIOMMU"
        case ("IOMMU_HWPT_ALLOC", .EOPNOTSUPP):
            return "the IOMMU does not support this HWPT (nest parent needs nesting support)"
        case ("IOMMU_DESTROY", .EBUSY):
            return "the object is still referenced; run the command again to converge"
        case (_, .ENOMEM):
            return "the kernel is out of memory, or a memlock limit was reached"
        default:
            return nil
        }
    }
}
