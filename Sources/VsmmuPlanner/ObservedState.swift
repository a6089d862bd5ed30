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
}
