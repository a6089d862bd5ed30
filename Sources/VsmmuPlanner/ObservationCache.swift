import VsmmuKernel

/// The agent's memory of its last observation, kept current by a proven change feed
/// (docs/kernel-interface.md §12). Each observation drains the feed first, forgets what it
/// names, then reads again exactly that, every device's driver_override (no uevent for it)
/// and what was never read; anything the feed cannot vouch for (first drain, overflow)
/// empties the cache: a full read. A change made while the reads run is signalled too, so
/// the next observation re-reads it. One caller at a time (the agent's request lock).
public final class ObservationCache {
    let feed: KernelChangeFeed
    /// The last read of each device (nil: not in sysfs).
    var devices: [PCIAddress: SysfsPCIDevice?] = [:]
    /// The last stat of each cdev node, by vfio index (nil: no node).
    var owners: [Int: UInt32?] = [:]
    /// The last answers, handed out again while nothing changed (no copy of 10,000 entries).
    var requested: Set<PCIAddress> = []
    var order: [PCIAddress] = []
    var present: [PCIAddress: SysfsPCIDevice] = [:]
    var presentOwners: [Int: UInt32] = [:]
    /// Something the owners depend on changed in this observation.
    var ownersStale = true
    /// What the last observation read, for logs, tests and the bench.
    public private(set) var last = Reads()

    public struct Reads: Hashable, Sendable {
        /// Why everything was read again (nil: an incremental observation).
        public var everything: String?
        /// Devices read whole (every sysfs file).
        public var devices = 0
        /// Devices whose driver_override alone was read.
        public var overrides = 0
        /// Cdev nodes stat'ed.
        public var owners = 0
    }

    public init(feed: KernelChangeFeed) { self.feed = feed }

    /// The devices at `addresses` as sysfs shows them now (absent ones left out).
    func devices(_ addresses: Set<PCIAddress>, port: KernelPort) throws(KernelCallError) -> [PCIAddress: SysfsPCIDevice] {
        let changes = feed.drain()
        last = Reads(everything: changes.everything)
        ownersStale = changes.everything != nil || changes.allCdevs || !changes.cdevs.isEmpty
        if changes.everything != nil {
            devices = [:]
            owners = [:]
            present = [:]
        } else {
            for a in changes.devices where devices.removeValue(forKey: a) != nil { present[a] = nil }
            if changes.allCdevs { owners = [:] } else { for i in changes.cdevs { owners[i] = nil } }
        }
        if addresses != requested {
            requested = addresses
            order = addresses.sorted()
            present = present.filter { addresses.contains($0.key) }
            ownersStale = true
        }
        for a in order {
            // What is known of `a`: this observation's answer so far, else an earlier read
            // of it (asked for again after a while).
            var known = present[a]
            let answered = known != nil
            if !answered, let earlier = devices[a] {
                guard let device = earlier else { continue }   // absent, and no uevent since
                known = device
            }
            if let device = known {
                switch try port.driverOverride(a) {
                case .value(let o):
                    last.overrides += 1
                    if device.driverOverride != o || !answered {
                        var d = device
                        d.driverOverride = o
                        present[a] = d
                        devices[a] = d
                        ownersStale = true
                    }
                    continue
                case .noDevice:
                    break   // removed meanwhile (its uevent is queued): read it whole
                }
            }
            last.devices += 1
            ownersStale = true
            let d = try port.pciDevice(a)
            devices[a] = .some(d)
            present[a] = d
        }
        return present
    }

    /// The owner of each cdev that `sysfs` names.
    func owners(of sysfs: [PCIAddress: SysfsPCIDevice], port: KernelPort) throws(KernelCallError) -> [Int: UInt32] {
        guard ownersStale else { return presentOwners }
        var out: [Int: UInt32] = [:]
        for s in sysfs.values {
            guard let i = s.vfioDevIndex else { continue }
            let uid: UInt32?
            if let known = owners[i] {
                uid = known
            } else {
                last.owners += 1
                uid = try port.vfioDeviceOwner(index: i)?.uid
                owners[i] = .some(uid)
            }
            if let uid { out[i] = uid }
        }
        presentOwners = out
        ownersStale = false
        return out
    }
}
