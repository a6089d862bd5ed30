#if os(Linux)
import CVsmmuUAPI
import Foundation
import Glibc
import VsmmuKernel

/// The real kernel's change signals (docs/kernel-interface.md §12): a uevent socket and an
/// inotify watch of /dev/vfio/devices, drained before each observation.
final class LinuxChangeFeed: KernelChangeFeed {
    let socket: Int32
    let inotify: Int32
    let cdevDirectory: String
    /// The watch on `cdevDirectory`; nil while the directory is missing (no device is on a
    /// VFIO driver) or after the watch went with it.
    private var watch: Int32?
    private var drained = false
    private var buffer = [UInt8](repeating: 0, count: 16 * 1024)

    /// `inotify` -1: a kernel without inotify (CONFIG_INOTIFY_USER off): every drain says
    /// every cdev owner may have changed (one stat each per observation).
    init(socket: Int32, inotify: Int32, cdevDirectory: String) {
        self.socket = socket; self.inotify = inotify; self.cdevDirectory = cdevDirectory
        rewatch()
    }

    deinit {
        Glibc.close(socket)
        if inotify >= 0 { Glibc.close(inotify) }
    }

    var limitation: String? {
        inotify >= 0 ? nil : "this kernel has no inotify (CONFIG_INOTIFY_USER): every cdev owner is read on each observation"
    }

    private func rewatch() {
        guard inotify >= 0 else { return }
        let wd = vsmmu_inotify_watch(inotify, cdevDirectory)
        watch = wd >= 0 ? wd : nil
    }

    /// Receives datagrams until `body` says stop or none is queued; true after ENOBUFS or an
    /// error that loses datagrams.
    @discardableResult
    func receive(_ body: (Uevent) -> Bool) -> Bool {
        var lost = false
        while true {
            let n = buffer.withUnsafeMutableBytes { vsmmu_uevent_recv(socket, $0.baseAddress, $0.count) }
            if n == -Int(EAGAIN) { return lost }
            if n == -Int(ENOBUFS) { lost = true; continue }
            if n == -Int(EPERM) { continue }
            if n < 0 { return true }
            if let e = Uevent.parse(buffer[0..<n]), !body(e) { return lost }
        }
    }

    func drain() -> KernelChanges {
        var changes = KernelChanges()
        let lost = receive { changes.take($0); return true }
        var overflow: UInt32 = 0, ignored: UInt32 = 0, gone: UInt32 = 0
        vsmmu_inotify_flags(&overflow, &ignored, &gone)
        var events = [UInt8](repeating: 0, count: 16 * 1024)
        var name = [CChar](repeating: 0, count: 256)
        while inotify >= 0 {
            let n = events.withUnsafeMutableBytes { vsmmu_inotify_read(inotify, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            var offset = 0
            var mask: UInt32 = 0
            while events.withUnsafeBytes({ vsmmu_inotify_event($0.baseAddress, n, &offset, &name, name.count, &mask) }) == 1 {
                if mask & overflow != 0 { changes.allCdevs = true }
                if mask & (ignored | gone) != 0 { watch = nil; changes.allCdevs = true }
                changes.takeNode(String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
            }
        }
        // Without a watch nothing vouches for the owners; a new one starts from a full read.
        if watch == nil {
            rewatch()
            changes.allCdevs = true
        }
        if !drained {
            drained = true
            return KernelChanges(everything: "the first observation since the feed opened")
        }
        if lost { return KernelChanges(everything: "the uevent socket overflowed (ENOBUFS)") }
        return changes
    }
}

extension LinuxKernel {
    /// Opens the uevent socket and the cdev watch, then proves that uevents reach this
    /// process: `change UUID` written to the iommufd misc device's `uevent` file must come
    /// back within two seconds (docs/kernel-interface.md §12).
    public func openChangeFeed() -> ChangeFeedOpening {
        guard files is LocalHostFiles, sysfsRootPath == "/sys", devRoot == "/dev" else {
            return .unavailable("the kernel is not this machine's own /sys and /dev (\(files.location))")
        }
        let socket = vsmmu_uevent_open(16 << 20)
        guard socket >= 0 else { return .unavailable("NETLINK_KOBJECT_UEVENT socket: \(Errno(-socket).name)") }
        // Without inotify the uevents still vouch for the devices; owners are read each time.
        let inotify = max(-1, vsmmu_inotify_open())
        let feed = LinuxChangeFeed(socket: socket, inotify: inotify, cdevDirectory: devRoot + "/vfio/devices")
        let uuid = UUID().uuidString.lowercased()
        let uevent = sysfsRootPath + "/class/misc/iommu/uevent"
        do { try files.write(uevent, Array("change \(uuid)".utf8)) } catch {
            return .unavailable("cannot write \(uevent) to prove the feed: \(error.errno.name)")
        }
        let deadline = ContinuousClock.now + .seconds(2)
        var proven = false
        while !proven {
            let left = deadline - ContinuousClock.now
            guard left > .zero else { break }
            let ms = Int32(max(1, left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000))
            guard vsmmu_uevent_wait(socket, ms) == 1 else { break }
            feed.receive { event in
                proven = event.synthUUID == uuid
                return !proven
            }
        }
        guard proven else {
            return .unavailable("the proof uevent written to \(uevent) never arrived (a network namespace of another user namespace gets no uevents)")
        }
        return .opened(feed)
    }

    public func driverOverride(_ address: PCIAddress) throws(KernelCallError) -> DriverOverrideRead {
        guard let tree = sysfs as? SysfsTree else {
            return try pciDevice(address).map { .value($0.driverOverride) } ?? .noDevice
        }
        return tree.driverOverride(address)
    }
}

#endif
