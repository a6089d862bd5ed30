#if os(Linux)
import Foundation
import Glibc
import VsmmuKernel

/// The sysfs side of the kernel port: reads of PCI devices, IOMMU groups and IOMMUs,
/// and the three binding writes. `SysfsTree` is the real one.
public protocol SysfsAccess {
    func pciAddresses() throws(KernelCallError) -> [PCIAddress]
    func device(_ a: PCIAddress) -> SysfsPCIDevice?
    func groupMembers(_ group: Int) -> [PCIAddress]
    func iommuNames() -> [String]
    func reservedRegions(group: Int) -> [(start: UInt64, last: UInt64, type: String)]
    func driverLoaded(_ name: String) -> Bool
    func writeDriverOverride(_ a: PCIAddress, _ driver: String?) throws(KernelCallError)
    func unbind(_ a: PCIAddress, driver: String) throws(KernelCallError)
    func driversProbe(_ a: PCIAddress) throws(KernelCallError)
}

/// sysfs under a root (`/sys`, or a fake tree in tests), docs/kernel-interface.md §8, read through
/// `files` (this machine, or a remote executor's). Only validated PCI addresses and
/// checked driver names ever become part of a path.
public struct SysfsTree: SysfsAccess, Sendable {
    public let root: String
    public let files: any HostFiles
    public init(root: String = "/sys", files: any HostFiles = LocalHostFiles()) { self.root = root; self.files = files }

    var devices: String { root + "/bus/pci/devices" }

    /// A driver name as sysfs shows it: no path separators, no dot-dot (`DriverName`, the
    /// rule the simulated host is held to as well).
    static func checkedDriver(_ name: String) -> String? { DriverName.isValid(name) ? name : nil }

    func read(_ path: String) -> String? {
        guard let data = try? files.read(path) else { return nil }
        return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func linkName(_ path: String) -> String? {
        guard let target = try? files.readLink(path) else { return nil }
        return (target as NSString).lastPathComponent
    }

    func list(_ path: String) -> [String] { (try? files.listDirectory(path)) ?? [] }

    func hexValue(_ path: String) -> UInt64? {
        guard let s = read(path) else { return nil }
        let digits = s.hasPrefix("0x") ? String(s.dropFirst(2)) : s
        return UInt64(digits, radix: 16)
    }

    public func pciAddresses() throws(KernelCallError) -> [PCIAddress] {
        let names: [String]
        do { names = try files.listDirectory(devices) } catch {
            // A remote that went away says so; anything else means no such directory.
            if error.errno == .ENOENT { throw KernelCallError(.sysfsReadPCIDevices, .ENOENT, "\(devices) is missing") }
            throw error.renamed(.sysfsReadPCIDevices)
        }
        return names.compactMap(PCIAddress.init).sorted()
    }

    /// The driver, IDs and class from one read of the device's `uevent` file (DRIVER=,
    /// PCI_ID=VVVV:DDDD, PCI_CLASS=CCCCCC, written by dev_uevent and pci_uevent): four sysfs
    /// files fewer per device on every full observation. nil when the file is missing or
    /// lacks them (a test's fake tree): then each file is read.
    func ueventFacts(_ dir: String) -> (driver: String?, vendor: UInt16, device: UInt16, classCode: UInt32)? {
        guard let data = try? files.read(dir + "/uevent") else { return nil }
        var driver: String?, id: Substring?, cls: Substring?
        for line in String(decoding: data, as: UTF8.self).split(separator: "\n") {
            if line.hasPrefix("DRIVER=") { driver = String(line.dropFirst(7)) }
            else if line.hasPrefix("PCI_ID=") { id = line.dropFirst(7) }
            else if line.hasPrefix("PCI_CLASS=") { cls = line.dropFirst(10) }
        }
        let parts = id?.split(separator: ":") ?? []
        guard parts.count == 2, let v = UInt16(parts[0], radix: 16), let d = UInt16(parts[1], radix: 16),
              let cls, let c = UInt32(cls, radix: 16) else { return nil }
        return (driver.flatMap(Self.checkedDriver), v, d, c)
    }

    public func device(_ a: PCIAddress) -> SysfsPCIDevice? {
        let dir = devices + "/" + a.description
        let facts = ueventFacts(dir)
        guard facts != nil || files.exists(dir) else { return nil }
        let override = read(dir + "/driver_override").flatMap(Self.overrideValue)
        var vfioIndex: Int?
        if let entries = try? files.listDirectory(dir + "/vfio-dev") {
            vfioIndex = entries.compactMap { $0.hasPrefix("vfio") ? Int($0.dropFirst(4)) : nil }.min()
        }
        return SysfsPCIDevice(
            address: a,
            vendor: facts?.vendor ?? UInt16(truncatingIfNeeded: hexValue(dir + "/vendor") ?? 0),
            device: facts?.device ?? UInt16(truncatingIfNeeded: hexValue(dir + "/device") ?? 0),
            classCode: facts?.classCode ?? UInt32(truncatingIfNeeded: hexValue(dir + "/class") ?? 0),
            driver: facts.map(\.driver) ?? linkName(dir + "/driver").flatMap(Self.checkedDriver),
            driverOverride: override,
            iommuGroup: linkName(dir + "/iommu_group").flatMap { Int($0) },
            iommu: linkName(dir + "/iommu"),
            numaNode: read(dir + "/numa_node").flatMap { Int($0) } ?? -1,
            vfioDevIndex: vfioIndex)
    }

    /// driver_override alone (what an observation over a change feed reads of every device);
    /// a device that is gone cannot be read (ENOENT).
    func driverOverride(_ a: PCIAddress) -> DriverOverrideRead {
        guard let text = read(devices + "/" + a.description + "/driver_override") else { return .noDevice }
        return .value(Self.overrideValue(text))
    }

    /// driver_override as sysfs shows it: `(null)` (or nothing) when none is set.
    static func overrideValue(_ text: String) -> String? { text == "(null)" || text.isEmpty ? nil : text }

    public func groupMembers(_ group: Int) -> [PCIAddress] {
        let dir = root + "/kernel/iommu_groups/\(group)/devices"
        return list(dir).compactMap(PCIAddress.init).sorted()
    }

    public func iommuNames() -> [String] {
        list(root + "/class/iommu").sorted()
    }

    /// `0x%016llx 0x%016llx <type>` per line (docs/kernel-interface.md §8).
    public func reservedRegions(group: Int) -> [(start: UInt64, last: UInt64, type: String)] {
        guard let text = read(root + "/kernel/iommu_groups/\(group)/reserved_regions") else { return [] }
        return text.split(separator: "\n").compactMap { line in
            let f = line.split(separator: " ")
            guard f.count == 3, let s = UInt64(f[0].dropFirst(2), radix: 16), let l = UInt64(f[1].dropFirst(2), radix: 16) else { return nil }
            return (s, l, String(f[2]))
        }
    }

    public func driverLoaded(_ name: String) -> Bool {
        guard let d = Self.checkedDriver(name) else { return false }
        return files.exists(root + "/bus/pci/drivers/" + d)
    }

    /// write(2) of `text` to a sysfs attribute; the errno is the kernel's answer.
    func write(_ call: KernelCall, _ path: String, _ text: String) throws(KernelCallError) {
        // O_TRUNC as `echo x > attr` does: harmless on sysfs, and a fake tree gets whole values.
        do { try files.write(path, Array(text.utf8)) } catch { throw error.renamed(call) }
    }

    public func writeDriverOverride(_ a: PCIAddress, _ driver: String?) throws(KernelCallError) {
        var value = "\n"
        if let driver {
            guard let d = Self.checkedDriver(driver) else { throw KernelCallError(.sysfsDriverOverride, .EINVAL, "bad driver name") }
            value = d
        }
        try write(.sysfsDriverOverride, devices + "/\(a)/driver_override", value)
    }

    public func unbind(_ a: PCIAddress, driver: String) throws(KernelCallError) {
        guard let d = Self.checkedDriver(driver) else { throw KernelCallError(.sysfsUnbind, .EINVAL, "bad driver name") }
        try write(.sysfsUnbind, root + "/bus/pci/drivers/\(d)/unbind", a.description)
    }

    public func driversProbe(_ a: PCIAddress) throws(KernelCallError) {
        try write(.sysfsDriversProbe, root + "/bus/pci/drivers_probe", a.description)
    }
}
#endif
