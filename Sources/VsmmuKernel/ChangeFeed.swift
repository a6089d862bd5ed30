/// Change signals from the kernel (docs/kernel-interface.md §12): what may have changed
/// since the last observation, so that a reconcile re-reads only that, plus what the
/// kernel never signals. A port without such signals has no feed (`openChangeFeed` nil),
/// and every observation reads everything.

/// One uevent as NETLINK_KOBJECT_UEVENT delivers it (the kernel's group 1 messages):
/// `ACTION@DEVPATH\0` then `KEY=VALUE\0` pairs.
public struct Uevent: Hashable, Sendable {
    public enum Action: String, Sendable { case add, remove, change, move, online, offline, bind, unbind }
    public var action: Action
    /// Below /sys, e.g. `/devices/pci0000:00/0000:00:01.0/vfio-dev/vfio0`.
    public var devpath: String
    public var subsystem: String
    /// SYNTH_UUID of a uevent written to a `uevent` file with a UUID (the feed's proof).
    public var synthUUID: String?

    public init(action: Action, devpath: String, subsystem: String, synthUUID: String? = nil) {
        self.action = action; self.devpath = devpath; self.subsystem = subsystem; self.synthUUID = synthUUID
    }

    /// Parses one kernel uevent message; nil for anything else (udev's own "libudev"
    /// messages, unknown actions, truncated text).
    public static func parse(_ bytes: some Collection<UInt8>) -> Uevent? {
        var fields: [String: String] = [:]
        var header: String?
        for part in bytes.split(separator: 0, omittingEmptySubsequences: true) {
            let text = String(decoding: part, as: UTF8.self)
            if header == nil { header = text; continue }
            if let eq = text.firstIndex(of: "=") { fields[String(text[..<eq])] = String(text[text.index(after: eq)...]) }
        }
        guard let header, header.contains("@"), let name = fields["ACTION"], let action = Action(rawValue: name),
              let devpath = fields["DEVPATH"] else { return nil }
        return Uevent(action: action, devpath: devpath, subsystem: fields["SUBSYSTEM"] ?? "", synthUUID: fields["SYNTH_UUID"])
    }

    /// The kernel's message for this uevent (what the simulated kernel hands its feeds).
    public var message: [UInt8] {
        var fields = ["\(action.rawValue)@\(devpath)", "ACTION=\(action.rawValue)", "DEVPATH=\(devpath)", "SUBSYSTEM=\(subsystem)"]
        if let synthUUID { fields.append("SYNTH_UUID=\(synthUUID)") }
        return Array(fields.joined(separator: "\0").utf8) + [0]
    }

    /// The devpath of the iommufd misc device, whose `uevent` file the feed writes to prove
    /// that uevents reach it.
    public static let iommufdMiscDevpath = "/devices/virtual/misc/iommu"
}

/// What a change feed says changed since its previous drain.
public struct KernelChanges: Hashable, Sendable {
    /// Nothing can be vouched for (first drain, overflow, lost feed): observe everything.
    public var everything: String?
    /// PCI devices with a uevent of their own or of their vfio-dev child: presence, driver,
    /// vfio index, IOMMU group.
    public var devices: Set<PCIAddress> = []
    /// VFIO cdev nodes /dev/vfio/devices/vfioN whose owner may have changed.
    public var cdevs: Set<Int> = []
    /// Every cdev's owner may have changed (the watch on /dev/vfio/devices was (re)made).
    public var allCdevs = false

    public init(everything: String? = nil) { self.everything = everything }

    public var isEmpty: Bool { everything == nil && devices.isEmpty && cdevs.isEmpty && !allCdevs }

    /// Takes in one uevent: PCI devices and their vfio-dev children only.
    public mutating func take(_ event: Uevent) {
        guard event.subsystem == "pci" || event.subsystem == "vfio-dev" else { return }
        let parts = event.devpath.split(separator: "/")
        // The device's own name is the last component that is a PCI address (a vfio-dev
        // child's is two above it).
        guard let device = parts.reversed().lazy.compactMap({ PCIAddress(String($0)) }).first else { return }
        devices.insert(device)
        if event.subsystem == "vfio-dev", let last = parts.last, last.hasPrefix("vfio"), let n = Int(last.dropFirst(4)) {
            cdevs.insert(n)
        }
    }

    /// Takes in one inotify event on /dev/vfio/devices naming `name` (IN_ATTRIB,
    /// IN_CREATE, IN_DELETE, …).
    public mutating func takeNode(_ name: String) {
        if name.hasPrefix("vfio"), let n = Int(name.dropFirst(4)) { cdevs.insert(n) }
    }

    public mutating func merge(_ other: KernelChanges) {
        everything = everything ?? other.everything
        devices.formUnion(other.devices)
        cdevs.formUnion(other.cdevs)
        allCdevs = allCdevs || other.allCdevs
    }
}

/// A stream of change signals, drained once per observation.
public protocol KernelChangeFeed: AnyObject {
    /// Everything signalled since the previous drain. The first drain is `everything`.
    func drain() -> KernelChanges
    /// What this kernel does not signal beyond docs/kernel-interface.md §12 (nil: nothing more), for logs.
    var limitation: String? { get }
}

extension KernelChangeFeed {
    public var limitation: String? { nil }
}
