import VsmmuExecutor
import VsmmuKernel
import VsmmuPlanner

/// What a VMM needs to know of a prepared guest to build its own graph: the devices with
/// their physical IOMMU and vSMMU, the stage-2 kind per IOMMU, guest RAM and the vSMMUs.
/// Taken from the holding the launch is about to release.
public struct VMMGuestLayout: Sendable {
    public struct Device: Sendable { public var name: String; public var address: PCIAddress; public var iommu: String; public var vsmmu: String? }
    public struct VSMMU: Sendable { public var name: String; public var physical: String; public var viommuType: VIOMMUType }
    public struct Memory: Sendable { public var name: String; public var iova: UInt64; public var length: UInt64 }
    public var devices: [Device] = []
    public var vsmmus: [VSMMU] = []
    public var memory: [Memory] = []
    /// Physical IOMMU → whether its stage-2 HWPT is a nesting parent.
    public var nestParent: [String: Bool] = [:]

    public init(holding h: GuestHolding, port: KernelPort) throws(KernelCallError) {
        for (name, d) in h.devices.sorted(by: { $0.key < $1.key }) {
            guard let a = d.source.pciAddress else { continue }
            let iommu = try port.pciDevice(a)?.iommu ?? ""
            let vsmmu = h.vsmmus.sorted { $0.key < $1.key }.first { $0.value.vdevices[name] != nil }?.key
            devices.append(Device(name: name, address: a, iommu: iommu, vsmmu: vsmmu))
        }
        vsmmus = h.vsmmus.sorted { $0.key < $1.key }.map { VSMMU(name: $0.key, physical: $0.value.physical, viommuType: $0.value.viommuType) }
        memory = h.memory.sorted { $0.key < $1.key }.map { Memory(name: $0.key, iova: $0.value.iova, length: $0.value.length) }
        for (iommu, s) in h.stage2 { nestParent[iommu] = s.nestParent }
    }
}

/// The fds a VMM gets at launch, by what they are.
public struct VMMFiles: Sendable {
    public var iommufd: IommufdHandle
    public var devices: [String: DeviceHandle]
    public var memory: [String: KernelFile]
    public init(iommufd: IommufdHandle, devices: [String: DeviceHandle], memory: [String: KernelFile]) {
        self.iommufd = iommufd; self.devices = devices; self.memory = memory
    }
}

/// QEMU 11's realize sequence (docs/qemu-interface.md §2.1), device by device as the
/// command line orders them: bind the cdev; the first device of a container makes its IOAS,
/// asks GET_HW_INFO, allocates the stage-2 HWPT (a nesting parent for a device behind an
/// accelerated vSMMU; DIRTY_TRACKING too when the IOMMU reports it), attaches, reads the IOVA
/// ranges and maps guest RAM (MAP_FILE of the memfd); a later device tries the container's
/// HWPTs, newest first, and on EINVAL (another physical IOMMU) gets a HWPT of its own in the
/// same IOAS; then GET_HW_INFO again and, for a device behind a vSMMU, the vSMMU's vIOMMU with
/// its abort and bypass nested HWPTs (once per vSMMU) and the device moved onto bypass.
/// Devices behind accelerated vSMMUs share one container; the others share a second one (a
/// second IOAS, guest RAM mapped again). vDevices and vEVENTQs wait for the guest's driver.
/// On a simulated host this plays the VMM's kernel side: run it as the VMM's process.
public enum QEMURealize {
    public struct Result: Sendable {
        public var devIDs: [String: ObjectID] = [:]
        /// IOAS per container: index 0 for the accelerated devices, 1 for the others.
        public var ioas: [Int: ObjectID] = [:]
        public var viommus: [String: ObjectID] = [:]
        public var attached: [String: ObjectID] = [:]
    }

    /// One VFIO container: an IOAS and the HWPTs made in it, newest last.
    struct Container { var ioas: ObjectID; var hwpts: [ObjectID] }

    public static func run(_ layout: VMMGuestLayout, files: VMMFiles, port: KernelPort) throws(KernelCallError) -> Result {
        var r = Result()
        var containers: [Int: Container] = [:]
        var viommuBypass: [String: ObjectID] = [:]
        let ifd = files.iommufd
        for d in layout.devices {
            guard let cdev = files.devices[d.name] else { continue }
            let devID = try port.bindIommufd(cdev, iommufd: ifd)
            r.devIDs[d.name] = devID
            let accelerated = d.vsmmu != nil
            let key = accelerated ? 0 : 1
            var s2: ObjectID
            if var c = containers[key] {
                var joined: ObjectID?
                for hwpt in c.hwpts.reversed() {
                    do { joined = try port.attach(cdev, ptID: hwpt); break } catch {
                        guard error.errno == .EINVAL else { throw error }   // incompatible: next
                    }
                }
                if let joined { s2 = joined } else {
                    s2 = try allocStage2(port, ifd, devID: devID, ioas: c.ioas, nestParent: layout.nestParent[d.iommu] == true)
                    _ = try port.attach(cdev, ptID: s2)
                    c.hwpts.append(s2)
                }
                containers[key] = c
            } else {
                let ioas = try port.ioasAlloc(ifd)
                s2 = try allocStage2(port, ifd, devID: devID, ioas: ioas, nestParent: accelerated && layout.nestParent[d.iommu] == true)
                _ = try port.attach(cdev, ptID: s2)
                _ = try port.ioasIovaRanges(ifd, ioas: ioas)
                for m in layout.memory {
                    // A simulated process has no address space: anonymous RAM (IOAS_MAP of a
                    // user VA) cannot be played; memfd RAM goes in by file, as QEMU does.
                    guard let file = files.memory[m.name] else { continue }
                    _ = try port.ioasMap(ifd, ioas: ioas, flags: [.fixedIOVA, .writeable, .readable],
                                         source: .file(file, offset: 0), length: m.length, iova: m.iova)
                }
                containers[key] = Container(ioas: ioas, hwpts: [s2])
                r.ioas[key] = ioas
            }
            r.attached[d.name] = s2
            _ = try port.getHwInfo(ifd, devID: devID, requestType: nil)
            guard let vname = d.vsmmu, let v = layout.vsmmus.first(where: { $0.name == vname }) else { continue }
            _ = try port.getHwInfo(ifd, devID: devID, requestType: nil)
            if viommuBypass[vname] == nil {
                let type = v.viommuType
                let data = type == .tegra241CMDQV ? [UInt8](repeating: 0, count: 16) : []
                let viommu = try port.viommuAlloc(ifd, type: type, devID: devID, hwptID: s2, data: data).id
                r.viommus[vname] = viommu
                var bypass: ObjectID = 0
                for kind in [NestedKind.abort, .bypass] {
                    let id = try port.hwptAlloc(ifd, flags: [], devID: devID, ptID: viommu, dataType: .armSMMUv3,
                                                data: NestedData.bytes(dataType: .armSMMUv3, kind: kind))
                    if kind == .bypass { bypass = id }
                }
                viommuBypass[vname] = bypass
            }
            if let bypass = viommuBypass[vname] { r.attached[d.name] = try port.attach(cdev, ptID: bypass) }
        }
        return r
    }

    /// The container's stage-2 HWPT: NEST_PARENT when a vSMMU asked for one, and
    /// DIRTY_TRACKING whenever the IOMMU reports it (QEMU 11 asks for both together).
    static func allocStage2(_ port: KernelPort, _ ifd: IommufdHandle, devID: ObjectID, ioas: ObjectID, nestParent: Bool) throws(KernelCallError) -> ObjectID {
        let info = try port.getHwInfo(ifd, devID: devID, requestType: nil)
        var flags: HWPTAllocFlags = []
        if info.capabilities.contains(.dirtyTracking) { flags.insert(.dirtyTracking) }
        if nestParent { flags.insert(.nestParent) }
        return try port.hwptAlloc(ifd, flags: flags, devID: devID, ptID: ioas, dataType: .none, data: [])
    }
}
