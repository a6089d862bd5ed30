import VsmmuKernel

/// Moving a PCI address to its VFIO driver (vfio-pci or the variant driver the host names,
/// e.g. nvgrace_gpu_vfio_pci) and back (docs/kernel-interface.md §8: "Safe move to vfio-pci", "Way
/// back"), each step only as far as sysfs shows it is needed.
extension Planner {
    mutating func moveToVFIO(_ a: PCIAddress, driver: String, resource: String) {
        let s = observed.sysfs[a]
        guard s?.driver != driver else { return }
        if s?.driverOverride != driver {
            add(.moveToVFIO, resource, .setDriverOverride(address: a, driver: driver), needs: [.backOnHost(a)], gives: [.overrideVFIO(a)])
        }
        if let drv = s?.driver {
            add(.moveToVFIO, resource, .unbindDriver(address: a, driver: drv), needs: [.overrideVFIO(a)], gives: [.unboundFromHost(a)])
        }
        add(.moveToVFIO, resource, .probeDriver(address: a, expect: driver), needs: [.overrideVFIO(a), .unboundFromHost(a)], gives: [.onVFIO(a)])
    }

    mutating func giveBack(_ a: PCIAddress, resource: String) {
        let s = observed.sysfs[a]
        let original = observed.holdings.originalDrivers[a] ?? nil
        if VFIODriver.isVFIO(original) || observed.holdings.originalUnknown(a) {
            add(.giveBack, resource, .forgetOriginalDriver(address: a), needs: [.cdevClosed(a)])
            return
        }
        if let drv = s?.driver, drv != original {
            add(.giveBack, resource, .unbindDriver(address: a, driver: drv), needs: [.cdevClosed(a)], gives: [.unboundFromVFIO(a)])
        }
        if s?.driverOverride != nil {
            add(.giveBack, resource, .setDriverOverride(address: a, driver: nil), needs: [.unboundFromVFIO(a)], gives: [.overrideCleared(a)])
        }
        if s?.driver != original || original == nil {
            add(.giveBack, resource, .probeDriver(address: a, expect: original), needs: [.overrideCleared(a), .unboundFromVFIO(a)], gives: [.backOnHost(a)])
        }
    }
}

/// Everything of a live guest, in reverse order.
extension Planner {
    mutating func teardownGuest(_ name: String, _ h: GuestHolding) {
        for (dname, d) in h.devices.sorted(by: { $0.key < $1.key }) where d.attached != nil {
            add(.relatch, "device \(name)/\(dname)", .detach(guest: name, device: dname), gives: [.detached(device: "\(name)/\(dname)")])
        }
        for (vname, v) in h.vsmmus.sorted(by: { $0.key < $1.key }) { teardownVSMMU(name, vname, v) }
        for (r, m) in h.memory.sorted(by: { $0.key < $1.key }) { teardownMemory(name, r, m) }
        for (i, _) in h.stage2.sorted(by: { $0.key < $1.key }) {
            add(.destroyStage2, "stage2 \(name)/\(i)", .destroyStage2(guest: name, iommu: i),
                needs: h.devices.keys.map { .detached(device: "\(name)/\($0)") } + h.vsmmus.keys.map { .viommuGone(vsmmu: "\(name)/\($0)") },
                gives: [.stage2Gone("\(name)/\(i)")])
        }
        if h.ioas != nil {
            add(.destroyIOAS, "guest \(name)", .destroyIOAS(guest: name),
                needs: h.stage2.keys.map { .stage2Gone("\(name)/\($0)") } + h.memory.keys.map { .unmapped("\(name)/\($0)") },
                gives: [.ioasGone(guest: name)])
        }
        for (dname, d) in h.devices.sorted(by: { $0.key < $1.key }) {
            add(closePhase(d), "device \(name)/\(dname)", .closeDevice(guest: name, device: dname),
                needs: [.detached(device: "\(name)/\(dname)"), .ioasGone(guest: name)], gives: closed(d))
        }
        add(.closeContexts, "guest \(name)", .closeIommufd(guest: name), needs: [.ioasGone(guest: name)])
    }

    mutating func teardownVSMMU(_ g: String, _ v: String, _ h: VSMMUHolding) {
        let r = "vsmmu \(g)/\(v)", key = "\(g)/\(v)"
        if h.abortHWPT != nil {
            add(.destroyNested, r, .destroyNested(guest: g, vsmmu: v, kind: .abort), needs: [.offNested(vsmmu: key)], gives: [.nestedGone(vsmmu: key)])
        }
        if h.bypassHWPT != nil {
            add(.destroyNested, r, .destroyNested(guest: g, vsmmu: v, kind: .bypass), needs: [.offNested(vsmmu: key)], gives: [.nestedGone(vsmmu: key)])
        }
        for (d, _) in h.vdevices.sorted(by: { $0.key < $1.key }) {
            add(.destroyVDevices, "device \(g)/\(d)", .destroyVDevice(guest: g, vsmmu: v, device: d), gives: [.vdevicesGone(vsmmu: key)])
        }
        for (t, _) in h.eventQueues.sorted(by: { $0.key < $1.key }) {
            add(.destroyEventQueues, r, .destroyEventQueue(guest: g, vsmmu: v, type: t), gives: [.eventQueuesGone(vsmmu: key)])
        }
        add(.destroyVIOMMUs, r, .destroyVIOMMU(guest: g, vsmmu: v),
            needs: [.nestedGone(vsmmu: key), .vdevicesGone(vsmmu: key), .eventQueuesGone(vsmmu: key)], gives: [.viommuGone(vsmmu: key)])
    }

    mutating func teardownMemory(_ g: String, _ r: String, _ m: MemoryHolding) {
        if m.mapped { add(.unmapMemory, "memory \(g)/\(r)", .unmapMemory(guest: g, region: r), gives: [.unmapped("\(g)/\(r)")]) }
        add(.releaseMemory, "memory \(g)/\(r)", .releaseMemory(guest: g, region: r), needs: [.unmapped("\(g)/\(r)")], gives: [.released("\(g)/\(r)")])
    }

    /// A VFIO device closes after its IOAS is gone (docs/kernel-interface.md §0 T9). A mock device
    /// cannot be detached, only destroyed, and it holds its HWPT: it goes before the
    /// stage-2 HWPTs.
    func closePhase(_ d: DeviceHolding) -> Phase { d.mockStdev != nil ? .unmapMemory : .closeDevices }

    /// What closing a held device's cdev frees: its address, for the way back.
    func closed(_ d: DeviceHolding) -> [Dep] { d.source.pciAddress.map { [.cdevClosed($0)] } ?? [] }
}
