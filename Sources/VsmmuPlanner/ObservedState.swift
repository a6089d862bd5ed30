import VsmmuKernel

/// What the kernel holds now: the executor's holdings, checked for liveness with
/// read-only calls, and the sysfs state of every device that matters.
public struct ObservedState: Sendable {
    public var holdings: Holdings
    public var sysfs: [PCIAddress: SysfsPCIDevice]
    /// Guests whose iommufd context the kernel destroyed (the holding process exited).
    public var deadGuests: Set<String>
    /// Devices (guest/device) whose VFIO binding was undone behind our back.
    public var lostDevices: Set<String>
    /// Owner of each VFIO cdev by vfio index.
    public var owners: [Int: UInt32]

    /// Reads the state; makes no mutating call.
    public static func observe(port: KernelPort, holdings: Holdings, addresses: Set<PCIAddress>) throws(KernelCallError) -> ObservedState {
        var all = addresses
        for g in holdings.guests.values {
            for d in g.devices.values { if let a = d.source.pciAddress { all.insert(a) } }
        }
        for a in holdings.originalDrivers.keys { all.insert(a) }
        for a in holdings.unknownOriginalDrivers ?? [] { all.insert(a) }
        var sysfs: [PCIAddress: SysfsPCIDevice] = [:]
        for a in all.sorted() {
            if let d = try port.pciDevice(a) { sysfs[a] = d }
        }
        var dead = Set<String>()
        var lost = Set<String>()
        for (name, g) in holdings.guests.sorted(by: { $0.key < $1.key }) {
            // A context lives exactly as long as the process holding its fd: opened by
            // another holder (the agent restarted), it is gone, whatever its fd number now
            // names in this process.
            if let holder = g.holder, holder != port.holderIdentity { dead.insert(name); continue }
            // Ours: IOAS_IOVA_RANGES (read only) checks it. ID 0 is never an object, so
            // ENOENT for it means the context holds no IOAS yet. Any other failure of our
            // own live fd is an error to report, never a context to drop: dropping it would
            // leak its fds and keep its devices bound (seen with fail_iommufd in the lab).
            do {
                _ = try port.ioasIovaRanges(g.iommufd, ioas: g.ioas ?? 0)
            } catch {
                if g.ioas == nil && error.errno == .ENOENT {
                    // alive, no IOAS yet
                } else if g.holder == nil {
                    dead.insert(name)   // recorded by an older vsmmu: the old rule
                } else {
                    throw error
                }
            }
            guard !dead.contains(name) else { continue }
            for (dname, d) in g.devices where d.cdev != nil {
                guard let a = d.source.pciAddress, let s = sysfs[a], VFIODriver.isVFIO(s.driver), s.vfioDevIndex == d.vfioIndex else {
                    lost.insert("\(name)/\(dname)")
                    continue
                }
            }
        }
        var owners: [Int: UInt32] = [:]
        for s in sysfs.values {
            if let i = s.vfioDevIndex, let o = try port.vfioDeviceOwner(index: i) { owners[i] = o.uid }
        }
        return ObservedState(holdings: holdings, sysfs: sysfs, deadGuests: dead, lostDevices: lost, owners: owners)
    }

    /// A digest of everything observed: a saved plan is refused when it changed.
    public var fingerprint: String {
        var text = ""
        for (a, d) in sysfs.sorted(by: { $0.key < $1.key }) {
            text += "\(a) \(d.driver ?? "-") \(d.driverOverride ?? "-") \(d.vfioDevIndex.map(String.init) ?? "-") \(d.iommuGroup.map(String.init) ?? "-")\n"
        }
        text += "dead \(Fingerprint.list(deadGuests.sorted())) lost \(Fingerprint.list(lostDevices.sorted())) owners \(Fingerprint.list(owners))\n"
        text += Fingerprint.canonical(holdings)
        return Fingerprint.fnv1a(text)
    }
}

enum Fingerprint {
    /// `"\(array)"` of strings, written out: the same text without the runtime's
    /// reflection-driven printing (half of a converged re-plan's time at 10,000 devices).
    static func list(_ items: [String]) -> String {
        "[" + items.map(\.debugDescription).joined(separator: ", ") + "]"
    }

    /// `"\(owners.sorted { $0.key < $1.key })"`, written out the same way.
    static func list(_ owners: [Int: UInt32]) -> String {
        "[" + owners.sorted { $0.key < $1.key }.map { "(key: \($0.key), value: \($0.value))" }.joined(separator: ", ") + "]"
    }

    static func fnv1a(_ s: String) -> String {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in s.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        let hexed = String(h, radix: 16)
        return String(repeating: "0", count: 16 - hexed.count) + hexed
    }

    /// A stable text form of the holdings (dictionary order fixed).
    static func canonical(_ h: Holdings) -> String {
        var out = ""
        for (a, d) in h.originalDrivers.sorted(by: { $0.key < $1.key }) { out += "orig \(a) \(d ?? "-")\n" }
        for (g, r) in h.running.sorted(by: { $0.key < $1.key }) { out += "running \(g) pid \(r.pid) \(r.startTime ?? 0) \(r.vmm.rawValue)\n" }
        for (name, g) in h.guests.sorted(by: { $0.key < $1.key }) {
            out += "guest \(name) fd \(g.iommufd.fd) ioas \(g.ioas.map(String.init) ?? "-") uncertain \(g.uncertain)\n"
            for (n, d) in g.devices.sorted(by: { $0.key < $1.key }) {
                out += " dev \(n) \(d.source) \(d.cdev?.fd ?? -1) \(d.vfioIndex ?? -1) \(d.mockStdev ?? 0) \(d.devID) \(d.attached ?? 0) \(d.owner ?? 0)\n"
            }
            for (n, s) in g.stage2.sorted(by: { $0.key < $1.key }) { out += " s2 \(n) \(s.hwpt) \(s.nestParent)\n" }
            for (n, m) in g.memory.sorted(by: { $0.key < $1.key }) {
                out += " mem \(n) \(m.iova) \(m.length) \(m.backing.rawValue) \(m.mapped) \(m.memory.userVA) \(m.memory.file?.fd ?? -1)\n"
            }
            for (n, v) in g.vsmmus.sorted(by: { $0.key < $1.key }) {
                out += " vsmmu \(n) \(v.physical) \(v.viommu) \(v.viommuType.rawValue) \(v.abortHWPT ?? 0) \(v.bypassHWPT ?? 0)\n"
                for (t, q) in v.eventQueues.sorted(by: { $0.key < $1.key }) { out += "  evq \(t.rawValue) \(q.id) \(q.fd.fd)\n" }
                for (d, vd) in v.vdevices.sorted(by: { $0.key < $1.key }) { out += "  vdev \(d) \(vd.id) \(vd.virtID)\n" }
            }
        }
        return out
    }
}
