#if os(Linux)
import Foundation
import Glibc
import VsmmuKernel

/// `vsmmu host`: the Host description of this machine (docs/contract.md §3), from sysfs and, for one
/// device per IOMMU that is already on vfio-pci, GET_HW_INFO and two probes in a private
/// iommufd context (everything in it dies with the fd). What cannot be known without a
/// bound device is listed under `unknown`, never guessed.
public struct HostDiscovery {
    public let kernel: LinuxKernel
    public init(kernel: LinuxKernel) { self.kernel = kernel }

    public struct Result {
        public var host: HostDescription
        public var notes: [String]
    }

    /// `probed`: IOMMUs already probed (by name). A device the caller holds bound cannot be
    /// bound again for a probe, so a long-lived holder (the agent) keeps what it learned.
    ///
    /// `probeDriverless`: when no device behind an IOMMU is on vfio-pci but one has no driver
    /// (and nothing else in its IOMMU group has one), bind that device to vfio-pci for the
    /// probe and give it back to no driver. A device without a driver serves no one, so
    /// this disturbs nothing; a device with a driver is never moved for a probe.
    public func describe(probed: [String: HostIOMMU] = [:], probedDevices: [PCIAddress: HostPCIDevice] = [:],
                         probeDriverless: Bool = false) throws(KernelCallError) -> Result {
        var notes: [String] = []
        // uname of the kernel the port works on (a remote executor's, not necessarily this one).
        let (release, hostname) = kernel.files.systemName()
        let devices = try kernel.pciDevices()
        var iommus: [HostIOMMU] = []
        // The selftest mock IOMMU shows in sysfs as iommufd_selftest_iommu.N; it is described
        // by probing the mock (below), not from sysfs.
        let allNames = kernel.sysfs.iommuNames()
        let mockName = allNames.first { $0.hasPrefix("iommufd_selftest_iommu") }
        for name in allNames where name != mockName {
            let behind = devices.filter { $0.iommu == name }
            var regions: [ReservedRegion] = []
            for g in Set(behind.compactMap(\.iommuGroup)).sorted() {
                for r in kernel.sysfs.reservedRegions(group: g) {
                    let rr = ReservedRegion(start: r.start, size: r.last &- r.start &+ 1, type: r.type)
                    if !regions.contains(rr) { regions.append(rr) }
                }
            }
            if var cached = probed[name] {
                cached.reservedRegions = regions.sorted { $0.start < $1.start }
                iommus.append(cached)
                continue
            }
            let type: IOMMUType = name.hasPrefix("smmu3.") ? .armSMMUv3 : name.hasPrefix("dmar") ? .intelVTd : name.hasPrefix("ivhd") ? .amdVi : .selftest
            var f = IOMMUFeatures()
            if kernel.hasIommufd, let probe = behind.first(where: { $0.driver == "vfio-pci" && $0.vfioDevIndex != nil }) {
                do { f = try probeFeatures(probe, type: type) } catch {
                    notes.append("\(name): probing through \(probe.address) failed: \(error)")
                }
            } else if type == .intelVTd, let caps = intelRegisters(name) {
                // VT-d exports cap/ecap in sysfs (docs/kernel-interface.md §6): no device needs binding.
                f = IOMMUFeatures.intelVTd(caps) ?? IOMMUFeatures()
            } else if probeDriverless, kernel.hasIommufd, let spare = behind.first(where: { isSpare($0, among: devices) }) {
                do {
                    f = try probeThroughDriverless(spare, type: type)
                    notes.append("\(name): probed through \(spare.address), which had no driver: bound to vfio-pci for the probe, then given back to no driver")
                } catch {
                    notes.append("\(name): probing through \(spare.address) (no driver) failed: \(error)")
                }
            } else {
                notes.append("\(name): no device behind it is bound to vfio-pci or free of a driver, so its features cannot be read (GET_HW_INFO needs a device on vfio-pci); bind one and run `vsmmu host` again")
            }
            var unknown: [String] = []
            func known<T>(_ v: T?, _ field: String, _ fallback: T) -> T {
                if let v { return v }
                unknown.append(field)
                return fallback
            }
            let iommu = HostIOMMU(
                name: name, type: type,
                nesting: known(f.nesting, "nesting", false), coherent: known(f.coherent, "coherent", false),
                ats: known(f.ats, "ats", false), ril: known(f.ril, "ril", false), pasid: known(f.pasid, "pasid", false),
                ssidSize: known(f.ssidSize, "ssidSize", 0), oas: known(f.oas, "oas", 48),
                reservedRegions: regions.sorted { $0.start < $1.start }, cmdqvVCMDQs: f.vcmdqs, unknown: unknown)
            iommus.append(iommu)
        }
        let selftestName = mockName ?? "selftest"
        if let selftest = probed[selftestName] {
            iommus.append(selftest)
        } else if kernel.hasIommufd, var selftest = probeSelftest() {
            selftest.name = selftestName
            iommus.append(selftest)
        }
        // Per device (docs/contract.md §3): the VFIO driver and BARs from files; ATS, PASID width and
        // CANWBS through the device when it is on a VFIO driver with its cdev free.
        let aliases = modulesAliases(release: release)
        let variantsBuiltIn = aliases == nil && variantDriverRegistered()
        if aliases == nil { notes.append("\(modulesDirectory(release: release))/modules.alias cannot be read: vfioDriver is known only for devices on a VFIO driver\(variantsBuiltIn ? "" : ", or vfio-pci where the kernel has no modules and no variant driver")") }
        var pci: [HostPCIDevice] = []
        for d in devices {
            var h = fileFacts(d, release: release, aliases: aliases, variantsBuiltIn: variantsBuiltIn)
            if VFIODriver.isVFIO(d.driver), d.vfioDevIndex != nil, let name = d.iommu,
               let type = iommus.first(where: { $0.name == name })?.type, type != .selftest {
                do {
                    guard kernel.hasIommufd else { throw KernelCallError(.getHwInfo, .ENOENT, "no /dev/iommu") }
                    let f = try probeDeviceFacts(d, type: type)
                    h.ats = f.ats
                    h.pasidWidth = f.pasidWidth
                    if type == .armSMMUv3 { if let c = f.canwbs { h.canwbs = c } else { h.unknown.append(.canwbs) } }
                } catch where probedDevices[d.address] != nil {
                    let cached = probedDevices[d.address]!
                    h.ats = cached.ats; h.pasidWidth = cached.pasidWidth; h.canwbs = cached.canwbs
                } catch {
                    h.unknown += type == .armSMMUv3 ? [.ats, .pasidWidth, .canwbs] : [.ats, .pasidWidth]
                    notes.append("\(d.address): GET_HW_INFO through it failed (\(error)): its ATS, PASID width\(type == .armSMMUv3 ? " and CANWBS" : "") are unknown")
                }
            } else if probeDriverless, kernel.hasIommufd, isSpare(d, among: devices), let name = d.iommu,
                      let type = iommus.first(where: { $0.name == name })?.type, type != .selftest {
                // A device serving no one: on vfio-pci for the probe, then back to no driver.
                do {
                    let f = try withDriverless(d) { (bound) throws(KernelCallError) in try probeDeviceFacts(bound, type: type) }
                    h.ats = f.ats
                    h.pasidWidth = f.pasidWidth
                    if type == .armSMMUv3 { if let c = f.canwbs { h.canwbs = c } else { h.unknown.append(.canwbs) } }
                    notes.append("\(d.address): its ATS, PASID width\(type == .armSMMUv3 ? " and CANWBS" : "") read with it on vfio-pci for a moment (it had no driver, and has none again)")
                } catch {
                    h.unknown += type == .armSMMUv3 ? [.ats, .pasidWidth, .canwbs] : [.ats, .pasidWidth]
                    notes.append("\(d.address): probing it (no driver) failed (\(error)): its ATS, PASID width\(type == .armSMMUv3 ? " and CANWBS" : "") are unknown")
                }
            }
            pci.append(h)
        }
        let page = pageSize()
        if page == nil { notes.append("the kernel's page size cannot be read (\(hostBase)/proc/self/smaps): kernel.pageSize is left out") }
        let kernelFacts = KernelFacts(release: release, iommufd: kernel.hasIommufd, vfioCdev: kernel.hasVfioCdev, pageSize: page)
        return Result(host: HostDescription(name: hostname, kernel: kernelFacts, iommus: iommus, pciDevices: pci), notes: notes)
    }

    /// An endpoint with no driver, in an IOMMU group where every other device is on no driver, vfio-pci or
    /// pcieport (so its cdev can be opened once it is on vfio-pci).
    func isSpare(_ d: SysfsPCIDevice, among devices: [SysfsPCIDevice]) -> Bool {
        // Bridges (class 06) are never endpoints to hand to vfio-pci.
        guard d.driver == nil, d.classCode >> 16 != 0x06, let group = d.iommuGroup else { return false }
        return devices.allSatisfy { $0.iommuGroup != group || $0.driver == nil || $0.driver == "vfio-pci" || $0.driver == "pcieport" }
    }

    /// driver_override + drivers_probe to vfio-pci, the probe, then unbind and clear the
    /// override (no drivers_probe: it had no driver and stays so), also when the probe fails.
    func probeThroughDriverless(_ d: SysfsPCIDevice, type: IOMMUType) throws(KernelCallError) -> IOMMUFeatures {
        try withDriverless(d) { (bound) throws(KernelCallError) in try probeFeatures(bound, type: type) }
    }

    /// `body` with the driverless device on vfio-pci, then back on no driver (also on failure).
    func withDriverless<T>(_ d: SysfsPCIDevice, _ body: (SysfsPCIDevice) throws(KernelCallError) -> T) throws(KernelCallError) -> T {
        let a = d.address
        try kernel.writeDriverOverride(a, "vfio-pci")
        defer {
            let now: SysfsPCIDevice?? = try? kernel.pciDevice(a)
            if case .some(.some(let d)) = now, d.driver == "vfio-pci" { try? kernel.unbindDriver(a, driver: "vfio-pci") }
            try? kernel.writeDriverOverride(a, nil)
        }
        try kernel.driversProbe(a)
        guard let bound = try kernel.pciDevice(a), bound.driver == "vfio-pci", bound.vfioDevIndex != nil else {
            throw KernelCallError(.sysfsDriversProbe, .ENODEV, "\(a) did not bind to vfio-pci for the probe")
        }
        return try body(bound)
    }

    /// /sys/class/iommu/dmarN/intel-iommu/{cap,ecap} as the 24-byte iommu_hw_info_vtd layout.
    func intelRegisters(_ name: String) -> [UInt8]? {
        guard let tree = kernel.sysfs as? SysfsTree,
              let cap = tree.hexValue(tree.root + "/class/iommu/\(name)/intel-iommu/cap"),
              let ecap = tree.hexValue(tree.root + "/class/iommu/\(name)/intel-iommu/ecap") else { return nil }
        return IntelVTdHWInfo(cap: cap, ecap: ecap).bytes
    }

    /// GET_HW_INFO and the nesting/vIOMMU probes, in a throwaway context.
    func probeFeatures(_ d: SysfsPCIDevice, type: IOMMUType) throws(KernelCallError) -> IOMMUFeatures {
        try withThrowawayBinding(d) { (ctx, devID, info) throws(KernelCallError) -> IOMMUFeatures in
            switch info.dataType {
            case .armSMMUv3:
                guard var f = IOMMUFeatures.armSMMUv3(info.data, maxPasidLog2: info.maxPasidLog2, capabilities: info.capabilities) else { return IOMMUFeatures() }
                let ioas = try kernel.ioasAlloc(ctx)
                // Nesting for real: errata can hide it behind set IDR bits (docs/kernel-interface.md §9.23).
                do throws(KernelCallError) {
                    let s2 = try kernel.hwptAlloc(ctx, flags: .nestParent, devID: devID, ptID: ioas, dataType: .none, data: [])
                    f.nesting = true
                    // vIOMMU possible = nesting and (CANWBS or S2FWB): the only way to see CANWBS.
                    do throws(KernelCallError) {
                        let v = try kernel.viommuAlloc(ctx, type: .armSMMUv3, devID: devID, hwptID: s2, data: [])
                        f.coherent = true
                        try? kernel.destroy(ctx, id: v.id)
                    } catch where error.errno == .EOPNOTSUPP {
                        f.coherent = false
                    }
                    try? kernel.destroy(ctx, id: s2)
                } catch where error.errno == .EOPNOTSUPP {
                    f.nesting = false
                    if f.coherent == nil { f.coherent = false }
                }
                if let cmdqv = try? kernel.getHwInfo(ctx, devID: devID, requestType: .tegra241CMDQV), let info = Tegra241CMDQVHWInfo(cmdqv.data) {
                    f.vcmdqs = info.vcmdqs
                }
                return f
            case .intelVTD:
                return IOMMUFeatures.intelVTd(info.data) ?? IOMMUFeatures()
            default:
                return IOMMUFeatures()
            }
        }
    }

    /// A kernel built with CONFIG_IOMMUFD_TEST answers IOMMU_TEST_CMD: describe its mock IOMMU.
    func probeSelftest() -> HostIOMMU? {
        guard let ctx = try? kernel.openIommufd() else { return nil }
        defer { kernel.close(ctx) }
        guard let ioas = try? kernel.ioasAlloc(ctx), let mock = try? kernel.mockDomain(ctx, ptID: ioas),
              let info = try? kernel.getHwInfo(ctx, devID: mock.idevID, requestType: nil), info.dataType == .selftest else { return nil }
        return HostIOMMU(name: "selftest", type: .selftest, nesting: true, coherent: true, ats: false, ril: false, pasid: true,
                         ssidSize: 20, oas: 48, reservedRegions: [], cmdqvVCMDQs: nil)
    }
}
#endif
