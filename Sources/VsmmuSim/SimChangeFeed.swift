import VsmmuKernel

// The simulated kernel's change signals, as the real kernel gives them (docs/kernel-interface.md
// §12): a uevent for a PCI device's add/remove/bind/unbind and for its vfio-dev child's
// add/remove, an inotify event on /dev/vfio/devices when a cdev node is created, deleted or
// chowned, and nothing for a driver_override write. Feeds receive the kernel's message bytes
// and parse them as the Linux feed does.

/// The uevent socket and inotify watches open on the simulated kernel.
final class SimUevents {
    private var feeds: [WeakFeed] = []
    /// false: uevents reach no socket of this process (one in a network namespace owned by
    /// another user namespace), silently.
    var delivered = true
    /// Proofs sent so far (each names its uevent by a fresh UUID).
    var proofs = 0

    private struct WeakFeed { weak var feed: SimChangeFeed? }

    func register(_ feed: SimChangeFeed) { feeds.append(WeakFeed(feed: feed)) }

    private var live: [SimChangeFeed] {
        feeds.removeAll { $0.feed == nil }
        return feeds.compactMap(\.feed)
    }

    func send(_ event: Uevent) {
        guard delivered else { return }
        let message = event.message
        for feed in live { feed.receive(message) }
    }

    func node(_ name: String) {
        for feed in live { feed.receiveNode(name) }
    }

    /// What the kernel signals when a device changes from `old` to `new` (setDevice's hook).
    func deviceChanged(_ address: PCIAddress, from old: SimPCIDevice?, to new: SimPCIDevice?) {
        guard !feeds.isEmpty else { return }
        let text = address.description   // dddd:bb:ss.f; its root bus is pcidddd:bb
        let path = "/devices/pci\(text.prefix(7))/\(text)"
        func child(_ action: Uevent.Action, _ index: Int) {
            send(Uevent(action: action, devpath: "\(path)/vfio-dev/vfio\(index)", subsystem: "vfio-dev"))
            node("vfio\(index)")   // devtmpfs creates / deletes the node: IN_CREATE / IN_DELETE
        }
        func unbind(_ d: SimPCIDevice) {
            // vfio-pci's remove unregisters the vfio device (its child goes) before the core
            // sends the unbind.
            if let i = d.vfioIndex { child(.remove, i) }
            send(Uevent(action: .unbind, devpath: path, subsystem: "pci"))
        }
        func bind(_ d: SimPCIDevice) {
            if let i = d.vfioIndex { child(.add, i) }
            send(Uevent(action: .bind, devpath: path, subsystem: "pci"))
        }
        func remove(_ d: SimPCIDevice) {
            if d.driver != nil { unbind(d) }
            send(Uevent(action: .remove, devpath: path, subsystem: "pci"))
        }
        func add(_ d: SimPCIDevice) {
            send(Uevent(action: .add, devpath: path, subsystem: "pci"))
            if d.driver != nil { bind(d) }
        }
        switch (old, new) {
        case (nil, nil): return
        case (nil, let d?): add(d)
        case (let d?, nil): remove(d)
        case (let o?, let n?):
            if o.vendor != n.vendor || o.device != n.device || o.classCode != n.classCode || o.iommuGroup != n.iommuGroup
                || o.iommu != n.iommu || o.numaNode != n.numaNode {
                // A device's identity changes only by leaving and coming back (hot-unplug, rescan).
                remove(o)
                add(n)
            } else if o.driver != n.driver || o.vfioIndex != n.vfioIndex {
                if o.driver != nil { unbind(o) }
                if n.driver != nil { bind(n) }
            } else if o.owner != n.owner, let i = n.vfioIndex {
                node("vfio\(i)")   // chown: IN_ATTRIB
            }
            // driver_override: no signal at all.
        }
    }
}

/// A change feed on the simulated kernel: a uevent socket and an inotify watch on
/// /dev/vfio/devices, with bounded queues as the real ones have.
public final class SimChangeFeed: KernelChangeFeed {
    /// Messages the socket holds before the kernel drops the next (ENOBUFS at the next recv).
    public var capacity: Int
    /// Events the inotify queue holds before IN_Q_OVERFLOW.
    public var nodeCapacity: Int
    private var messages: [[UInt8]] = []
    private var nodes: [String] = []
    private var overflowed = false
    private var nodesOverflowed = false
    private var drained = false

    init(capacity: Int, nodeCapacity: Int) { self.capacity = capacity; self.nodeCapacity = nodeCapacity }

    func receive(_ message: [UInt8]) {
        if messages.count >= capacity { overflowed = true; return }
        messages.append(message)
    }

    func receiveNode(_ name: String) {
        if nodes.count >= nodeCapacity { nodesOverflowed = true; return }
        nodes.append(name)
    }

    /// The proof's uevent arrived (and is taken off the queue).
    func takeProof(_ uuid: String) -> Bool {
        guard let i = messages.firstIndex(where: { Uevent.parse($0)?.synthUUID == uuid }) else { return false }
        messages.remove(at: i)
        return true
    }

    public func drain() -> KernelChanges {
        defer { messages = []; nodes = []; overflowed = false; nodesOverflowed = false; drained = true }
        guard drained else { return KernelChanges(everything: "the first observation since the feed opened") }
        if overflowed { return KernelChanges(everything: "the uevent socket overflowed (ENOBUFS)") }
        var changes = KernelChanges()
        for m in messages { if let e = Uevent.parse(m) { changes.take(e) } }
        for n in nodes { changes.takeNode(n) }
        if nodesOverflowed { changes.allCdevs = true }
        return changes
    }
}

extension SimulatedKernel {
    /// Whether uevents reach this process's sockets (false: as in a network namespace of
    /// another user namespace; opening a feed then fails its proof).
    public var ueventsDelivered: Bool {
        get { uevents.delivered }
        set { uevents.delivered = newValue }
    }

    /// Opens a feed and proves it: a `change` uevent with a fresh UUID, written to the
    /// iommufd misc device's `uevent` file, must come back on it.
    public func openChangeFeed() -> ChangeFeedOpening {
        openSimChangeFeed(capacity: 1 << 20, nodeCapacity: 16_384)
    }

    /// `openChangeFeed` with chosen queue sizes (tests overflow them).
    public func openSimChangeFeed(capacity: Int, nodeCapacity: Int) -> ChangeFeedOpening {
        guard state.kernel.iommufd else { return .unavailable("no /dev/iommu: no misc device to prove the uevent feed with") }
        let feed = SimChangeFeed(capacity: capacity, nodeCapacity: nodeCapacity)
        uevents.register(feed)
        uevents.proofs += 1
        let n = String(uevents.proofs)
        let uuid = "00000000-0000-4000-8000-" + String(repeating: "0", count: max(0, 12 - n.count)) + n
        uevents.send(Uevent(action: .change, devpath: Uevent.iommufdMiscDevpath, subsystem: "misc", synthUUID: uuid))
        guard feed.takeProof(uuid) else {
            return .unavailable("the proof uevent written to /sys/class/misc/iommu/uevent never arrived (a network namespace of another user namespace gets no uevents)")
        }
        return .opened(feed)
    }
}

extension SimulatedKernel {
    public func driverOverride(_ address: PCIAddress) throws(KernelCallError) -> DriverOverrideRead {
        try call(.readDriverOverride(address), nil) { () throws(Refusal) in
            guard let device = state.devices[address] else { return .noDevice }
            return .value(device.driverOverride)
        }
    }
}
