#if os(Linux)
import Foundation
import Glibc
import VsmmuKernel

/// Per-device host facts read from files (docs/contract.md §3): the VFIO driver the kernel would match
/// (modules.alias, as libvirt picks variant drivers), the memory BARs (sysfs `resource`),
/// the kernel's page size.
public enum VFIODriverMatch {
    /// `alias vfio_pci:<pattern> <module>` lines of modules.alias.
    public static func aliases(_ modulesAlias: String) -> [(pattern: String, module: String)] {
        modulesAlias.split(separator: "\n").compactMap { line in
            let parts = line.split(separator: " ", omittingEmptySubsequences: true)
            guard parts.count == 3, parts[0] == "alias", parts[1].hasPrefix("vfio_pci:") else { return nil }
            return (String(parts[1]), String(parts[2]))
        }
    }

    /// The VFIO driver for a device's modalias (`pci:v…d…sv…sd…bc…sc…i…`): the matching
    /// `vfio_pci:` alias with the fewest wildcards (a device's own variant driver over the
    /// catch-all), its module named as the driver registers (vfio_pci is `vfio-pci`);
    /// vfio-pci when none matches. nil for a modalias that is not a PCI one.
    public static func driver(modalias: String, aliases: [(pattern: String, module: String)]) -> String? {
        let m = modalias.trimmingCharacters(in: .whitespacesAndNewlines)
        guard m.hasPrefix("pci:") else { return nil }
        let subject = "vfio_pci:" + m.dropFirst(4)
        var best: (wildcards: Int, module: String)?
        for a in aliases where fnmatch(a.pattern, subject, 0) == 0 {
            let w = a.pattern.filter { $0 == "*" }.count
            if best == nil || w < best!.wildcards { best = (w, a.module) }
        }
        guard let module = best?.module, module != "vfio_pci" else { return genericVFIODriver }
        return DriverName.isValid(module) ? module : nil
    }

    /// The six standard BARs from sysfs `resource` ("start end flags" per line): memory
    /// BARs only (IORESOURCE_MEM), with their size and flags.
    public static func bars(resource: String) -> [PCIBar] {
        var bars: [PCIBar] = []
        for (i, line) in resource.split(separator: "\n").prefix(6).enumerated() {
            let f = line.split(separator: " ").compactMap { UInt64($0.dropFirst(2), radix: 16) }
            guard f.count == 3, f[2] & 0x200 != 0, f[1] > f[0] else { continue }   // IORESOURCE_MEM, non-empty
            bars.append(PCIBar(index: i, size: f[1] - f[0] + 1, prefetchable: f[2] & 0x2000 != 0, bits64: f[2] & 0x10_0000 != 0))
        }
        return bars
    }

    /// PAGE_SIZE from `KernelPageSize:` in /proc/self/smaps (of whichever process reads it:
    /// this one, or a remote executor).
    public static func pageSize(smaps: String) -> UInt64? {
        for line in smaps.split(separator: "\n") where line.hasPrefix("KernelPageSize:") {
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            if f.count == 3, f[2] == "kB", let kb = UInt64(f[1]) { return kb * 1024 }
        }
        return nil
    }
}

/// What a bridge's config space says (sysfs `config`, docs/kernel-interface.md §11).
public enum PCIConfig {
    /// A type-1 header's secondary bus number (offset 0x19); nil for another header or a
    /// short read. The first 64 bytes are readable by every user.
    public static func secondaryBus(_ c: [UInt8]) -> Int? {
        guard c.count > 0x19, c[0x0e] & 0x7f == 1 else { return nil }
        return Int(c[0x19])
    }

    public enum ACS: Equatable, Sendable {
        case control(UInt16)
        /// No ACS extended capability (or no extended config space at all).
        case absent
        /// The extended config space could not be read (64 bytes: not CAP_SYS_ADMIN).
        case unreadable
    }

    /// The ACS Control register, found by walking the extended capability list from 0x100.
    public static func acs(_ c: [UInt8]) -> ACS {
        guard c.count > 64 else { return .unreadable }
        guard c.count > 0x100 + 4 else { return .absent }     // 256 bytes: conventional config space only
        func dword(_ o: Int) -> UInt32 { UInt32(c[o]) | UInt32(c[o + 1]) << 8 | UInt32(c[o + 2]) << 16 | UInt32(c[o + 3]) << 24 }
        var offset = 0x100
        for _ in 0..<((4096 - 0x100) / 4) {                    // a loop in the list cannot hang the walk
            guard offset >= 0x100, offset + 4 <= c.count else { return .absent }
            let header = dword(offset)
            if header == 0 || header == 0xffff_ffff { return .absent }
            if header & 0xffff == 0x000d {
                guard offset + 8 <= c.count else { return .unreadable }
                return .control(UInt16(c[offset + 6]) | UInt16(c[offset + 7]) << 8)
            }
            offset = Int(header >> 20) & 0xffc
            if offset == 0 { return .absent }
        }
        return .absent
    }
}

extension HostDiscovery {
    func text(_ path: String) -> String? {
        (try? kernel.files.read(path)).map { String(decoding: $0, as: UTF8.self) }
    }

    /// The kernel's page size from /proc beside the sysfs root (what a remote executor
    /// serves too); nil when it cannot be read.
    func pageSize() -> UInt64? {
        if let known = kernel.pageSizeRead { return known }
        kernel.pageSizeRead = text(hostBase + "/proc/self/smaps").flatMap(VFIODriverMatch.pageSize(smaps:))
        return kernel.pageSizeRead
    }

    /// The directory sysfs is in, "" for `/sys` (a test's fake tree: its root).
    var hostBase: String {
        let root = (kernel.sysfs as? SysfsTree)?.root ?? "/sys"
        let base = (root as NSString).deletingLastPathComponent
        return base == "/" ? "" : base
    }

    /// The facts of each device read from files: vfioDriver and bars. A device on a VFIO
    /// driver is on the one it has; without modules.alias a kernel with no module
    /// directory and no variant driver built in has only vfio-pci; else unknown.
    func fileFacts(_ d: SysfsPCIDevice, release: String, aliases: [(pattern: String, module: String)]?, variantsBuiltIn: Bool) -> HostPCIDevice {
        var h = HostPCIDevice(address: d.address, vendor: d.vendor, device: d.device, classCode: d.classCode, driver: d.driver,
                              iommuGroup: d.iommuGroup, iommu: d.iommu, numaNode: d.numaNode)
        if VFIODriver.isVFIO(d.driver) { h.vfioDriver = d.driver }
        guard let tree = kernel.sysfs as? SysfsTree else { return h }
        let dir = tree.root + "/bus/pci/devices/" + d.address.description
        if VFIODriver.isVFIO(d.driver) {
        } else if let aliases, let modalias = text(dir + "/modalias"), let v = VFIODriverMatch.driver(modalias: modalias, aliases: aliases) {
            h.vfioDriver = v
        } else if aliases == nil && !variantsBuiltIn && !kernel.files.exists(modulesDirectory(release: release)) {
            h.vfioDriver = genericVFIODriver
        } else {
            h.unknown.append(.vfioDriver)
        }
        if let resource = text(dir + "/resource") { h.bars = VFIODriverMatch.bars(resource: resource) } else { h.unknown.append(.bars) }
        // A bridge: where it sits in the hierarchy and its ACS, for peer paths (docs/kernel-interface.md §11).
        if d.classCode >> 8 == 0x0604 {
            let config = (try? kernel.files.read(dir + "/config")) ?? []
            h.secondaryBus = PCIConfig.secondaryBus(config)
            switch PCIConfig.acs(config) {
            case .control(let c): h.acsControl = c
            case .absent: break
            case .unreadable: h.unknown.append(.acsControl)
            }
        }
        return h
    }

    /// /lib/modules/RELEASE beside the sysfs root (`/sys` → `/`; a test's fake tree → its root).
    func modulesDirectory(release: String) -> String { hostBase + "/lib/modules/" + release }

    func modulesAliases(release: String) -> [(pattern: String, module: String)]? {
        text(modulesDirectory(release: release) + "/modules.alias").map(VFIODriverMatch.aliases)
    }

    /// A variant driver (`*_vfio_pci`) registered with the PCI bus (built in or loaded).
    func variantDriverRegistered() -> Bool {
        guard let tree = kernel.sysfs as? SysfsTree else { return false }
        let names = (try? kernel.files.listDirectory(tree.root + "/bus/pci/drivers")) ?? []
        return names.contains { $0 != genericVFIODriver && VFIODriver.isVFIO($0) }
    }

    /// GET_HW_INFO through the device (its ATS and PASID width) and, on ARM, whether a
    /// vIOMMU can be made through it (its CANWBS), in a throwaway context.
    func probeDeviceFacts(_ d: SysfsPCIDevice, type: IOMMUType) throws(KernelCallError) -> (ats: Bool, pasidWidth: Int, canwbs: Bool?) {
        try withThrowawayBinding(d) { (ctx, devID, info) throws(KernelCallError) in
            let ats = !info.capabilities.contains(.pciATSNotSupported)
            var canwbs: Bool?
            if type == .armSMMUv3 {
                let ioas = try kernel.ioasAlloc(ctx)
                if let s2 = try? kernel.hwptAlloc(ctx, flags: .nestParent, devID: devID, ptID: ioas, dataType: .none, data: []) {
                    do throws(KernelCallError) {
                        let v = try kernel.viommuAlloc(ctx, type: .armSMMUv3, devID: devID, hwptID: s2, data: [])
                        canwbs = true
                        try? kernel.destroy(ctx, id: v.id)
                    } catch where error.errno == .EOPNOTSUPP {
                        canwbs = false
                    }
                }
            }
            return (ats, Int(info.maxPasidLog2), canwbs)
        }
    }

    /// `body` with the device bound to a fresh iommufd context and its GET_HW_INFO answer;
    /// the context and the cdev close afterwards (the kernel destroys what `body` made).
    func withThrowawayBinding<T>(_ d: SysfsPCIDevice, _ body: (IommufdHandle, ObjectID, HwInfo) throws(KernelCallError) -> T) throws(KernelCallError) -> T {
        let ctx = try kernel.openIommufd()
        defer { kernel.close(ctx) }
        let dev = try kernel.openVfioDevice(index: d.vfioDevIndex!)
        defer { kernel.close(dev) }
        let devID = try kernel.bindIommufd(dev, iommufd: ctx)
        return try body(ctx, devID, try kernel.getHwInfo(ctx, devID: devID, requestType: nil))
    }
}
#endif
