import Testing
import VsmmuKernel
import VsmmuModel
@testable import VsmmuPlanner

/// The fingerprint's text as string interpolation wrote it before it was hashed piece by
/// piece and digit by digit: a saved plan must keep its fingerprint.
private func interpolatedText(_ o: ObservedState) -> String {
    var text = ""
    for (a, d) in o.sysfs.sorted(by: { $0.key < $1.key }) {
        text += "\(a) \(d.driver ?? "-") \(d.driverOverride ?? "-") \(d.vfioDevIndex.map(String.init) ?? "-") \(d.iommuGroup.map(String.init) ?? "-")\n"
    }
    text += "dead \(o.deadGuests.sorted()) lost \(o.lostDevices.sorted()) owners \(o.owners.sorted { $0.key < $1.key })\n"
    let h = o.holdings
    for (a, d) in h.originalDrivers.sorted(by: { $0.key < $1.key }) { text += "orig \(a) \(d ?? "-")\n" }
    for (g, r) in h.running.sorted(by: { $0.key < $1.key }) { text += "running \(g) pid \(r.pid) \(r.startTime ?? 0) \(r.vmm.rawValue)\n" }
    for (name, g) in h.guests.sorted(by: { $0.key < $1.key }) {
        text += "guest \(name) fd \(g.iommufd.fd) ioas \(g.ioas.map(String.init) ?? "-") uncertain \(g.uncertain)\n"
        for (n, d) in g.devices.sorted(by: { $0.key < $1.key }) {
            text += " dev \(n) \(d.source) \(d.cdev?.fd ?? -1) \(d.vfioIndex ?? -1) \(d.mockStdev ?? 0) \(d.devID) \(d.attached ?? 0) \(d.owner ?? 0)\n"
        }
        for (n, s) in g.stage2.sorted(by: { $0.key < $1.key }) { text += " s2 \(n) \(s.hwpt) \(s.nestParent)\n" }
        for (n, m) in g.memory.sorted(by: { $0.key < $1.key }) {
            text += " mem \(n) \(m.iova) \(m.length) \(m.backing.rawValue) \(m.mapped) \(m.memory.userVA) \(m.memory.file?.fd ?? -1)\n"
        }
        for (n, v) in g.vsmmus.sorted(by: { $0.key < $1.key }) {
            text += " vsmmu \(n) \(v.physical) \(v.viommu) \(v.viommuType.rawValue) \(v.abortHWPT ?? 0) \(v.bypassHWPT ?? 0)\n"
            for (t, q) in v.eventQueues.sorted(by: { $0.key < $1.key }) { text += "  evq \(t.rawValue) \(q.id) \(q.fd.fd)\n" }
            for (d, vd) in v.vdevices.sorted(by: { $0.key < $1.key }) { text += "  vdev \(d) \(vd.id) \(vd.virtID)\n" }
        }
    }
    return text
}

/// A state with every kind of value the text holds: extremes, absent values, both device kinds.
private func variedState() -> ObservedState {
    let a = PCIAddress(domain: 0xffff, bus: 0xab, slot: 31, function: 7)!
    let b = PCIAddress(domain: 0, bus: 9, slot: 1, function: 0)!
    var h = Holdings()
    var g = GuestHolding(iommufd: IommufdHandle(fd: Int32.max), holder: "p")
    g.ioas = 0
    var d = DeviceHolding(source: .pci(a), cdev: DeviceHandle(fd: -7), vfioIndex: Int.max, mockStdev: nil, devID: ObjectID.max)
    d.attached = 12; d.owner = UInt32.max
    g.devices["gpu0"] = d
    g.devices["mock é"] = DeviceHolding(source: .selftest(10), cdev: nil, vfioIndex: nil, mockStdev: 3, devID: 0)
    g.stage2["smmu3.0x0000000016000000"] = Stage2Holding(hwpt: 5, nestParent: true)
    g.memory["ram0"] = MemoryHolding(memory: GuestMemory(file: KernelFile(fd: 0), userVA: UInt64.max, size: 1), backing: .memfd,
                                     iova: 0x4000_0000, length: 1 << 34, mapped: false)
    g.memory["ram1"] = MemoryHolding(memory: GuestMemory(file: nil, userVA: 0, size: 1), backing: .anonymous, iova: 0, length: 0, mapped: true)
    var v = VSMMUHolding(physical: "smmu3.0x0000000016000000", viommu: 9, viommuType: .tegra241CMDQV)
    v.abortHWPT = 10
    v.eventQueues[.armSMMUv3] = EventQueueHolding(id: 11, fd: KernelFile(fd: 33))
    v.eventQueues[.tegra241CMDQV] = EventQueueHolding(id: 12, fd: KernelFile(fd: -1))
    v.vdevices["gpu0"] = VDeviceHolding(id: 13, virtID: UInt64.max)
    g.vsmmus["v0"] = v
    h.guests["vm-1"] = g
    var u = GuestHolding(iommufd: IommufdHandle(fd: 0))
    u.uncertain = true
    h.guests["vm\"2"] = u
    h.originalDrivers[a] = "nvidia"
    h.originalDrivers[b] = .some(nil)
    h.running["vm3"] = RunningGuest(pid: -1, startTime: nil, command: ["q"], vmm: .adopt, since: 0, devices: [:])
    h.running["vm4"] = RunningGuest(pid: Int32.max, startTime: UInt64.max, command: [], vmm: .qemu, since: 0, devices: [:])
    let sa = SysfsPCIDevice(address: a, vendor: 0x10de, device: 1, classCode: 0, driver: "vfio-pci", driverOverride: "vfio-pci",
                            iommuGroup: 0, iommu: nil, numaNode: 0, vfioDevIndex: 1_000_000)
    let sb = SysfsPCIDevice(address: b, vendor: 0, device: 0, classCode: 0, driver: nil, driverOverride: nil,
                            iommuGroup: nil, iommu: nil, numaNode: -1, vfioDevIndex: nil)
    return ObservedState(holdings: h, sysfs: [a: sa, b: sb], deadGuests: ["vm\"2", "a"], lostDevices: ["vm-1/gpu0"],
                         owners: [1_000_000: 0, 0: UInt32.max, 7: 107])
}

@Test func theFingerprintDigestsTheTextInterpolationWrote() {
    let o = variedState()
    #expect(o.fingerprint == Fingerprint.fnv1a(interpolatedText(o)))
    let empty = ObservedState(holdings: Holdings(), sysfs: [:], deadGuests: [], lostDevices: [], owners: [:])
    #expect(empty.fingerprint == Fingerprint.fnv1a(interpolatedText(empty)))
}

@Test func numbersAndAddressesHashAsTheirDescription() {
    for v in [0, 1, 9, 10, 99, 100, -1, -10, Int.max, Int.min] {
        var f = FNV1a(); f += v
        #expect(f.hex == Fingerprint.fnv1a(v.description), "\(v)")
    }
    for v in [UInt64.max, 0, 10_000_000_000_000_000_000] {
        var f = FNV1a(); f += v
        #expect(f.hex == Fingerprint.fnv1a(v.description), "\(v)")
    }
    for (d, b, s, fn) in [(0, 0, 0, 0), (0xffff, 0xff, 31, 7), (0xa0b1, 0x0c, 0x1a, 3)] as [(UInt16, UInt8, UInt8, UInt8)] {
        let a = PCIAddress(domain: d, bus: b, slot: s, function: fn)!
        var f = FNV1a(); f += a
        #expect(f.hex == Fingerprint.fnv1a(a.description))
        var g = FNV1a(); g += DeviceSource.pci(a)
        #expect(g.hex == Fingerprint.fnv1a(DeviceSource.pci(a).description))
    }
    var t = FNV1a(); t += true; t += DeviceSource.selftest(12)
    #expect(t.hex == Fingerprint.fnv1a("trueselftest:12"))
}
