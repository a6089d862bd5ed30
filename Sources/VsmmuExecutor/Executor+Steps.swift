import Foundation
import VsmmuKernel
import VsmmuModel
import VsmmuPlanner

extension Executor {
    /// One step, by its action: the switch is exhaustive, so a new OpAction is pointed at
    /// here; each action has its own function below, grouped by what it acts on.
    func performKernel(_ op: PlanStep) throws -> [HoldingPatch] {
        switch op.action {
        case .setDriverOverride(let a, let d): return try setDriverOverride(op, a, d)
        case .forgetOriginalDriver(let a): return try forgetOriginalDriver(op, a)
        case .unbindDriver(let a, let d): return try unbindDriver(op, a, d)
        case .probeDriver(let a, let expect): return try probeDriver(op, a, expect)
        case .openIommufd(let g): return try openIommufd(op, g)
        case .ioasAlloc(let g): return try ioasAlloc(op, g)
        case .destroyIOAS(let g): return try destroyIOAS(op, g)
        case .closeIommufd(let g): return try closeIommufd(op, g)
        case .closeGuest(let g): return try closeGuest(op, g)
        case .forgetGuest(let g): return try forgetGuest(op, g)
        case .openDevice(let g, let d, let a): return try openDevice(op, g, d, a)
        case .bindDevice(let g, let d): return try bindDevice(op, g, d)
        case .mockDevice(let g, let d, let source): return try mockDevice(op, g, d, source)
        case .chownDevice(let g, let d, let uid, let gid): return try chownDevice(op, g, d, uid, gid)
        case .attach(let g, let d, let t): return try attach(op, g, d, t)
        case .detach(let g, let d): return try detach(op, g, d)
        case .closeDevice(let g, let d): return try closeDevice(op, g, d)
        case .forgetDevice(let g, let d): return try forgetDevice(op, g, d)
        case .allocStage2(let g, let i, let via, let np): return try allocStage2(op, g, i, via, np)
        case .destroyStage2(let g, let i): return try destroyStage2(op, g, i)
        case .createMemory(let g, let r, let size, let backing, let huge): return try createMemory(op, g, r, size, backing, huge)
        case .mapMemory(let g, let r, let iova, _): return try mapMemory(op, g, r, iova)
        case .unmapMemory(let g, let r): return try unmapMemory(op, g, r)
        case .releaseMemory(let g, let r): return try releaseMemory(op, g, r)
        case .checkHwInfo(let g, _, let via, let expect): return try checkHwInfo(op, g, via, expect)
        case .allocVIOMMU(let g, let v, let physical, let type, let via): return try allocVIOMMU(op, g, v, physical, type, via)
        case .allocVDevice(let g, let v, let d, let virt): return try allocVDevice(op, g, v, d, virt)
        case .allocNested(let g, let v, let kind, let via, let dataType): return try allocNested(op, g, v, kind, via, dataType)
        case .allocEventQueue(let g, let v, let type, let depth): return try allocEventQueue(op, g, v, type, depth)
        case .destroyEventQueue(let g, let v, let type): return try destroyEventQueue(op, g, v, type)
        case .destroyNested(let g, let v, let kind): return try destroyNested(op, g, v, kind)
        case .destroyVDevice(let g, let v, let d): return try destroyVDevice(op, g, v, d)
        case .destroyVIOMMU(let g, let v): return try destroyVIOMMU(op, g, v)
        }
    }
}

/// A sysfs binding step, each read back before the next (docs/kernel-interface.md §8, safe order).
extension Executor {
    func setDriverOverride(_ op: PlanStep, _ a: PCIAddress, _ d: String?) throws -> [HoldingPatch] {
        var patches: [HoldingPatch] = []
        if VFIODriver.isVFIO(d), store.holdings.originalDrivers[a] == nil, !store.holdings.originalUnknown(a) {
            // Remember where the device came from, before it moves (for destroy); never
            // what vsmmu itself set (a step that died before its record was written).
            let current = try port.pciDevice(a)
            patches.append(Executor.vsmmuMovedIt(current) ? .originalDriverUnknown(a) : .remembering(a, current?.driver))
        }
        try port.writeDriverOverride(a, d)
        // Verify each binding step before the next (docs/kernel-interface.md §8, safe order).
        let now = try port.pciDevice(a)?.driverOverride
        if now != d {
            throw ApplyError(operation: op, errno: nil, message: "after writing driver_override, \(a) reads \(now.map { "'\($0)'" } ?? "unset"), not \(d.map { "'\($0)'" } ?? "unset")")
        }
        return patches
    }

    func forgetOriginalDriver(_ op: PlanStep, _ a: PCIAddress) throws -> [HoldingPatch] {
        return [.originalDriver(a, nil)]
    }

    func unbindDriver(_ op: PlanStep, _ a: PCIAddress, _ d: String) throws -> [HoldingPatch] {
        // An unbind of a device whose VFIO cdev or group is open blocks in the kernel until
        // that fd closes, uninterruptibly after a signal (docs/contract.md §7): ask who
        // holds it first, and refuse.
        let holders = try port.deviceHolders(a)
        if !holders.isEmpty {
            throw ApplyError(operation: op, errno: nil,
                             message: "\(a) is held open by \(holders.map(\.description).joined(separator: ", ")): writing unbind would block until it closes",
                             hint: "stop that process first (a running VMM: `vsmmu show` names it), then run again")
        }
        try port.unbindDriver(a, driver: d)
        if let still = try port.pciDevice(a)?.driver, still == d {
            throw ApplyError(operation: op, errno: nil, message: "after unbind, \(a) is still bound to \(d)", hint: "the driver refused to let go of the device; vsmmu does not force it")
        }
        return []
    }

    func probeDriver(_ op: PlanStep, _ a: PCIAddress, _ expect: String?) throws -> [HoldingPatch] {
        try port.driversProbe(a)
        let now = try port.pciDevice(a)
        if let expect, now?.driver != expect {
            throw ApplyError(operation: op, errno: nil,
                             message: "after drivers_probe \(a) is bound to \(now?.driver ?? "no driver"), not \(expect)",
                             hint: VFIODriver.isVFIO(expect) ? "is the \(expect) module loaded, and does its probe accept this device (bridges and PFs with VFs are refused)?" : "the original driver did not take the device back; bind it by hand")
        }
        if VFIODriver.isVFIO(expect), now?.vfioDevIndex == nil {
            throw ApplyError(operation: op, errno: nil, message: "\(a) is on \(expect ?? "") but has no vfio-dev/vfioN: is CONFIG_VFIO_DEVICE_CDEV on?")
        }
        // Given back: the device is no longer vsmmu's to restore.
        if !VFIODriver.isVFIO(expect), store.holdings.originalDrivers[a] != nil { return [.originalDriver(a, nil)] }
        return []
    }
}

/// A guest's iommufd context and its IOAS.
extension Executor {
    func openIommufd(_ op: PlanStep, _ g: String) throws -> [HoldingPatch] {
        let fd = try port.openIommufd()
        return [.guest(g, GuestHolding(iommufd: fd, holder: port.holderIdentity))]
    }

    func ioasAlloc(_ op: PlanStep, _ g: String) throws -> [HoldingPatch] {
        let h = try guestHolding(op, g)
        return [.ioas(g, try port.ioasAlloc(h.iommufd))]
    }

    func destroyIOAS(_ op: PlanStep, _ g: String) throws -> [HoldingPatch] {
        let h = try guestHolding(op, g)
        if let ioas = h.ioas { try port.destroy(h.iommufd, id: ioas) }
        return [.ioas(g, nil)]
    }

    func closeIommufd(_ op: PlanStep, _ g: String) throws -> [HoldingPatch] {
        let h = try guestHolding(op, g)
        port.close(h.iommufd)
        return [.guest(g, nil)]
    }

    func closeGuest(_ op: PlanStep, _ g: String) throws -> [HoldingPatch] {
        let h = try guestHolding(op, g)
        // The context is uncertain: close every fd it holds; the kernel then destroys
        // every object in it (docs/kernel-interface.md §4.4). Host-level bindings stay.
        for v in h.vsmmus.values { for q in v.eventQueues.values { port.closeEventFD(h.iommufd, q.fd) } }
        for d in h.devices.values { if let c = d.cdev { port.close(c) } }
        for m in h.memory.values { port.releaseGuestMemory(m.memory) }
        port.close(h.iommufd)
        return [.guest(g, nil)]
    }

    func forgetGuest(_ op: PlanStep, _ g: String) throws -> [HoldingPatch] {
        return [.guest(g, nil)]
    }
}

/// A device: its cdev, binding, ownership and attachment.
extension Executor {
    func openDevice(_ op: PlanStep, _ g: String, _ d: String, _ a: PCIAddress) throws -> [HoldingPatch] {
        _ = try guestHolding(op, g)
        guard let s = try port.pciDevice(a), VFIODriver.isVFIO(s.driver), let index = s.vfioDevIndex else {
            throw ApplyError(operation: op, errno: nil, message: "\(a) is not on a VFIO driver with a VFIO cdev")
        }
        let cdev = try port.openVfioDevice(index: index)
        var patches: [HoldingPatch] = [.device(g, d, DeviceHolding(source: .pci(a), cdev: cdev, vfioIndex: index, mockStdev: nil, devID: 0))]
        if store.holdings.originalDrivers[a] == nil, !store.holdings.originalUnknown(a) {
            patches.insert(Executor.vsmmuMovedIt(s) ? .originalDriverUnknown(a) : .remembering(a, s.driver), at: 0)
        }
        return patches
    }

    func bindDevice(_ op: PlanStep, _ g: String, _ d: String) throws -> [HoldingPatch] {
        let h = try guestHolding(op, g)
        var dev = try device(op, h, g, d)
        guard let cdev = dev.cdev else { throw ApplyError(operation: op, errno: nil, message: "\(g)/\(d) has no open cdev") }
        dev.devID = try port.bindIommufd(cdev, iommufd: h.iommufd)
        return [.device(g, d, dev)]
    }

    func mockDevice(_ op: PlanStep, _ g: String, _ d: String, _ source: String) throws -> [HoldingPatch] {
        let h = try guestHolding(op, g)
        guard let ioas = h.ioas else { throw ApplyError(operation: op, errno: nil, message: "guest \(g) has no IOAS") }
        let m = try port.mockDomain(h.iommufd, ptID: ioas)
        var dev = DeviceHolding(source: DeviceSource(source) ?? .selftest(0), cdev: nil, vfioIndex: nil, mockStdev: m.stdevID, devID: m.idevID)
        dev.attached = m.hwptID
        return [.device(g, d, dev)]
    }

    func chownDevice(_ op: PlanStep, _ g: String, _ d: String, _ uid: UInt32, _ gid: UInt32) throws -> [HoldingPatch] {
        var dev = try device(op, g, d)
        if let index = dev.vfioIndex { try port.chownVfioDevice(index: index, uid: uid, gid: gid) }
        dev.owner = uid
        return [.device(g, d, dev)]
    }

    func attach(_ op: PlanStep, _ g: String, _ d: String, _ t: AttachTarget) throws -> [HoldingPatch] {
        let h = try guestHolding(op, g)
        var dev = try device(op, h, g, d)
        let pt = try target(op, h, g, t)
        if let stdev = dev.mockStdev {
            dev.attached = try port.mockDomainReplace(h.iommufd, stdevID: stdev, ptID: pt)
        } else if let cdev = dev.cdev {
            dev.attached = try port.attach(cdev, ptID: pt)
        }
        return [.device(g, d, dev)]
    }

    func detach(_ op: PlanStep, _ g: String, _ d: String) throws -> [HoldingPatch] {
        let h = try guestHolding(op, g)
        var dev = try device(op, h, g, d)
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
    }

    func closeDevice(_ op: PlanStep, _ g: String, _ d: String) throws -> [HoldingPatch] {
        let h = try guestHolding(op, g)
        let dev = try device(op, h, g, d)
        if let stdev = dev.mockStdev { try port.destroy(h.iommufd, id: stdev) }
        if let cdev = dev.cdev { port.close(cdev) }
        return dropDevice(h, g, d)
    }

    func forgetDevice(_ op: PlanStep, _ g: String, _ d: String) throws -> [HoldingPatch] {
        return dropDevice(try guestHolding(op, g), g, d)
    }
}

/// The stage-2 HWPTs and guest RAM.
extension Executor {
    func allocStage2(_ op: PlanStep, _ g: String, _ i: String, _ via: String, _ np: Bool) throws -> [HoldingPatch] {
        let h = try guestHolding(op, g)
        let dev = try device(op, h, g, via)
        guard let ioas = h.ioas else { throw ApplyError(operation: op, errno: nil, message: "guest \(g) has no IOAS") }
        let id = try port.hwptAlloc(h.iommufd, flags: np ? .nestParent : [], devID: dev.devID, ptID: ioas,
                                    dataType: .none, data: [])
        return [.stage2(g, i, Stage2Holding(hwpt: id, nestParent: np))]
    }

    func destroyStage2(_ op: PlanStep, _ g: String, _ i: String) throws -> [HoldingPatch] {
        let h = try guestHolding(op, g)
        if let s = h.stage2[i] { try port.destroy(h.iommufd, id: s.hwpt) }
        return [.stage2(g, i, nil)]
    }

    func createMemory(_ op: PlanStep, _ g: String, _ r: String, _ size: UInt64, _ backing: GuestMemoryBacking, _ huge: UInt64?) throws -> [HoldingPatch] {
        _ = try guestHolding(op, g)
        let m = try port.createGuestMemory(name: "vsmmu:\(g)/\(r)", size: size, backing: backing, hugepageSize: huge)
        return [.memory(g, r, MemoryHolding(memory: m, backing: backing, iova: 0, length: size, mapped: false))]
    }

    func mapMemory(_ op: PlanStep, _ g: String, _ r: String, _ iova: UInt64) throws -> [HoldingPatch] {
        let h = try guestHolding(op, g)
        guard var m = h.memory[r], let ioas = h.ioas else { throw ApplyError(operation: op, errno: nil, message: "memory \(g)/\(r) was not created") }
        // memfd and hugetlbfs RAM go in by IOAS_MAP_FILE, so another process (the VMM)
        // can map the same pages and the pin accounting can move (docs/kernel-interface.md §9.16).
        let source: MapSource = m.memory.file.map { .file($0, offset: 0) } ?? .userVA(m.memory.userVA)
        m.iova = try port.ioasMap(h.iommufd, ioas: ioas, flags: [.fixedIOVA, .writeable, .readable],
                                  source: source, length: m.length, iova: iova)
        m.mapped = true
        return [.memory(g, r, m)]
    }

    func unmapMemory(_ op: PlanStep, _ g: String, _ r: String) throws -> [HoldingPatch] {
        let h = try guestHolding(op, g)
        guard var m = h.memory[r], let ioas = h.ioas else { return [] }
        _ = try port.ioasUnmap(h.iommufd, ioas: ioas, iova: m.iova, length: m.length)
        m.mapped = false
        return [.memory(g, r, m)]
    }

    func releaseMemory(_ op: PlanStep, _ g: String, _ r: String) throws -> [HoldingPatch] {
        let h = try guestHolding(op, g)
        if let m = h.memory[r] { port.releaseGuestMemory(m.memory) }
        return [.memory(g, r, nil)]
    }
}

/// Building a vSMMU: check, vIOMMU, vDevices, nested HWPTs, vEVENTQs.
extension Executor {
    func checkHwInfo(_ op: PlanStep, _ g: String, _ via: String, _ expect: HWInfoType) throws -> [HoldingPatch] {
        let h = try guestHolding(op, g)
        let dev = try device(op, h, g, via)
        let info = try port.getHwInfo(h.iommufd, devID: dev.devID, requestType: nil)
        guard info.dataType == expect else {
            throw ApplyError(operation: op, errno: nil, message: "GET_HW_INFO for \(g)/\(via) reports type \(info.dataType.rawValue), not \(expect.rawValue): the device is not behind the IOMMU the plan expects",
                             hint: "run `vsmmu host` and compare with the host description the plan used")
        }
        if expect == .armSMMUv3, let arm = ARMSMMUv3HWInfo(info.data), !(arm.s1p && arm.s2p) {
            throw ApplyError(operation: op, errno: nil, message: "the SMMU behind \(g)/\(via) lacks nesting: IDR0.S1P=\(arm.s1p ? 1 : 0) IDR0.S2P=\(arm.s2p ? 1 : 0)")
        }
        return []
    }

    func allocVIOMMU(_ op: PlanStep, _ g: String, _ v: String, _ physical: String, _ type: VIOMMUType, _ via: String) throws -> [HoldingPatch] {
        let h = try guestHolding(op, g)
        let dev = try device(op, h, g, via)
        guard let s2 = h.stage2[physical] else { throw ApplyError(operation: op, errno: nil, message: "no stage-2 HWPT held for \(physical)") }
        // TEGRA241_CMDQV takes a 16-byte in/out struct (mmap offset and length).
        let data = type == .tegra241CMDQV ? [UInt8](repeating: 0, count: 16) : []
        let r = try port.viommuAlloc(h.iommufd, type: type, devID: dev.devID, hwptID: s2.hwpt, data: data)
        return [.vsmmu(g, v, VSMMUHolding(physical: physical, viommu: r.id, viommuType: type))]
    }

    func allocVDevice(_ op: PlanStep, _ g: String, _ v: String, _ d: String, _ virt: UInt64) throws -> [HoldingPatch] {
        let h = try guestHolding(op, g)
        var vh = try vsmmu(op, h, g, v)
        let dev = try device(op, h, g, d)
        let id = try port.vdeviceAlloc(h.iommufd, viommuID: vh.viommu, devID: dev.devID, virtID: virt)
        vh.vdevices[d] = VDeviceHolding(id: id, virtID: virt)
        return [.vsmmu(g, v, vh)]
    }

    func allocNested(_ op: PlanStep, _ g: String, _ v: String, _ kind: NestedKind, _ via: String, _ dataType: HWPTDataType) throws -> [HoldingPatch] {
        let h = try guestHolding(op, g)
        var vh = try vsmmu(op, h, g, v)
        let dev = try device(op, h, g, via)
        let id = try port.hwptAlloc(h.iommufd, flags: 0, devID: dev.devID, ptID: vh.viommu, dataType: dataType,
                                    data: NestedData.bytes(dataType: dataType, kind: kind))
        if kind == .abort { vh.abortHWPT = id } else { vh.bypassHWPT = id }
        return [.vsmmu(g, v, vh)]
    }

    func allocEventQueue(_ op: PlanStep, _ g: String, _ v: String, _ type: VEventQType, _ depth: UInt32) throws -> [HoldingPatch] {
        let h = try guestHolding(op, g)
        var vh = try vsmmu(op, h, g, v)
        let r = try port.veventqAlloc(h.iommufd, viommuID: vh.viommu, type: type, depth: depth)
        vh.eventQueues[type] = EventQueueHolding(id: r.id, fd: r.eventFD)
        return [.vsmmu(g, v, vh)]
    }
}

/// Tearing a vSMMU down.
extension Executor {
    func destroyEventQueue(_ op: PlanStep, _ g: String, _ v: String, _ type: VEventQType) throws -> [HoldingPatch] {
        let h = try guestHolding(op, g)
        var vh = try vsmmu(op, h, g, v)
        if let q = vh.eventQueues[type] {
            // An open vEVENTQ fd blocks its own DESTROY (docs/kernel-interface.md §9.8).
            port.closeEventFD(h.iommufd, q.fd)
            try port.destroy(h.iommufd, id: q.id)
        }
        vh.eventQueues[type] = nil
        return [.vsmmu(g, v, vh)]
    }

    func destroyNested(_ op: PlanStep, _ g: String, _ v: String, _ kind: NestedKind) throws -> [HoldingPatch] {
        let h = try guestHolding(op, g)
        var vh = try vsmmu(op, h, g, v)
        if let id = kind == .abort ? vh.abortHWPT : vh.bypassHWPT { try port.destroy(h.iommufd, id: id) }
        if kind == .abort { vh.abortHWPT = nil } else { vh.bypassHWPT = nil }
        return [.vsmmu(g, v, vh)]
    }

    func destroyVDevice(_ op: PlanStep, _ g: String, _ v: String, _ d: String) throws -> [HoldingPatch] {
        let h = try guestHolding(op, g)
        var vh = try vsmmu(op, h, g, v)
        if let vd = vh.vdevices[d] { try port.destroy(h.iommufd, id: vd.id) }
        vh.vdevices[d] = nil
        return [.vsmmu(g, v, vh)]
    }

    func destroyVIOMMU(_ op: PlanStep, _ g: String, _ v: String) throws -> [HoldingPatch] {
        let h = try guestHolding(op, g)
        let vh = try vsmmu(op, h, g, v)
        try port.destroy(h.iommufd, id: vh.viommu)
        return [.vsmmu(g, v, nil)]
    }
}
