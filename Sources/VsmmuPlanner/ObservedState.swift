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

    /// Reads the state; makes no mutating call. With `cache` (an agent's, over a proven change
    /// feed), devices and cdev owners the kernel signalled no change for are taken from the
    /// last observation, and only what it never signals (driver_override, each context's
    /// liveness) is read again: the same result as a full read (ObservationCache.swift).
    public static func observe(port: KernelPort, holdings: Holdings, addresses: Set<PCIAddress>,
                               cache: ObservationCache? = nil) throws(KernelCallError) -> ObservedState {
        // Held devices are usually among `addresses` already: test before inserting, so the
        // set is copied only when one is not (an insert into a shared set copies it first).
        var all = addresses
        for g in holdings.guests.values {
            for d in g.devices.values { if let a = d.source.pciAddress, !all.contains(a) { all.insert(a) } }
        }
        for a in holdings.originalDrivers.keys where !all.contains(a) { all.insert(a) }
        for a in holdings.unknownOriginalDrivers ?? [] where !all.contains(a) { all.insert(a) }
        var sysfs: [PCIAddress: SysfsPCIDevice] = [:]
        if let cache {
            sysfs = try cache.devices(all, port: port)
        } else {
            for a in all.sorted() {
                if let d = try port.pciDevice(a) { sysfs[a] = d }
            }
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
        if let cache {
            owners = try cache.owners(of: sysfs, port: port)
        } else {
            for s in sysfs.values {
                if let i = s.vfioDevIndex, let o = try port.vfioDeviceOwner(index: i) { owners[i] = o.uid }
            }
        }
        return ObservedState(holdings: holdings, sysfs: sysfs, deadGuests: dead, lostDevices: lost, owners: owners)
    }

    /// A digest of everything observed: a saved plan is refused when it changed. The text
    /// digested is written piece by piece into the hash (no text of the whole host is built).
    public var fingerprint: String {
        var f = FNV1a()
        for (a, d) in sysfs.sorted(by: { $0.key < $1.key }) {
            f += a; f += " "; f += d.driver ?? "-"; f += " "; f += d.driverOverride ?? "-"; f += " "
            f += d.vfioDevIndex.map(String.init) ?? "-"; f += " "; f += d.iommuGroup.map(String.init) ?? "-"; f += "\n"
        }
        f += "dead "; f += Fingerprint.list(deadGuests.sorted()); f += " lost "; f += Fingerprint.list(lostDevices.sorted())
        f += " owners "; f += Fingerprint.list(owners); f += "\n"
        Fingerprint.canonical(holdings, into: &f)
        return f.hex
    }
}

/// FNV-1a over UTF-8 text fed in pieces: the same digest as over the pieces joined.
struct FNV1a {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325

    static func += (f: inout FNV1a, s: String) {
        var s = s
        s.withUTF8 { for b in $0 { f.h = (f.h ^ UInt64(b)) &* 0x100_0000_01b3 } }
    }

    static func += <T: CustomStringConvertible>(f: inout FNV1a, v: T) { f += v.description }

    var hex: String {
        let hexed = String(h, radix: 16)
        return String(repeating: "0", count: 16 - hexed.count) + hexed
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

    /// A stable text form of the holdings (dictionary order fixed), fed to `f`.
    static func canonical(_ h: Holdings, into f: inout FNV1a) {
        for (a, d) in h.originalDrivers.sorted(by: { $0.key < $1.key }) { f += "orig "; f += a; f += " "; f += d ?? "-"; f += "\n" }
        for (g, r) in h.running.sorted(by: { $0.key < $1.key }) {
            f += "running "; f += g; f += " pid "; f += r.pid; f += " "; f += r.startTime ?? 0; f += " "; f += r.vmm.rawValue; f += "\n"
        }
        for (name, g) in h.guests.sorted(by: { $0.key < $1.key }) {
            f += "guest "; f += name; f += " fd "; f += g.iommufd.fd; f += " ioas "; f += g.ioas.map(String.init) ?? "-"
            f += " uncertain "; f += g.uncertain; f += "\n"
            for (n, d) in g.devices.sorted(by: { $0.key < $1.key }) {
                f += " dev "; f += n; f += " "; f += d.source; f += " "; f += d.cdev?.fd ?? -1; f += " "; f += d.vfioIndex ?? -1
                f += " "; f += d.mockStdev ?? 0; f += " "; f += d.devID; f += " "; f += d.attached ?? 0; f += " "; f += d.owner ?? 0; f += "\n"
            }
            for (n, s) in g.stage2.sorted(by: { $0.key < $1.key }) { f += " s2 "; f += n; f += " "; f += s.hwpt; f += " "; f += s.nestParent; f += "\n" }
            for (n, m) in g.memory.sorted(by: { $0.key < $1.key }) {
                f += " mem "; f += n; f += " "; f += m.iova; f += " "; f += m.length; f += " "; f += m.backing.rawValue; f += " "
                f += m.mapped; f += " "; f += m.memory.userVA; f += " "; f += m.memory.file?.fd ?? -1; f += "\n"
            }
            for (n, v) in g.vsmmus.sorted(by: { $0.key < $1.key }) {
                f += " vsmmu "; f += n; f += " "; f += v.physical; f += " "; f += v.viommu; f += " "; f += v.viommuType.rawValue
                f += " "; f += v.abortHWPT ?? 0; f += " "; f += v.bypassHWPT ?? 0; f += "\n"
                for (t, q) in v.eventQueues.sorted(by: { $0.key < $1.key }) { f += "  evq "; f += t.rawValue; f += " "; f += q.id; f += " "; f += q.fd.fd; f += "\n" }
                for (d, vd) in v.vdevices.sorted(by: { $0.key < $1.key }) { f += "  vdev "; f += d; f += " "; f += vd.id; f += " "; f += vd.virtID; f += "\n" }
            }
        }
    }
}
