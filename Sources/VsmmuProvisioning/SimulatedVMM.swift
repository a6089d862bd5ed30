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

/// QEMU's realize sequence for an accelerated-SMMUv3 guest, as the VMM's process issues it
/// (docs/qemu-interface.md §2.1): bind every cdev to the iommufd, one IOAS, per physical
/// IOMMU a stage-2 HWPT (nesting parent under an accelerated vSMMU) with every device
/// attached, guest RAM mapped at its guest address, then per vSMMU GET_HW_INFO, the vIOMMU
/// and the abort and bypass nested HWPTs. vDevices wait for the guest's driver (QEMU
/// allocates one when the guest installs the device's STE). On a simulated host this plays
/// the VMM's kernel side; run it as the VMM's simulated process.
public enum QEMURealize {
    public struct Result: Sendable {
        public var devIDs: [String: ObjectID] = [:]
        public var ioas: ObjectID = 0
        public var viommus: [String: ObjectID] = [:]
    }

    public static func run(_ layout: VMMGuestLayout, files: VMMFiles, port: KernelPort) throws(KernelCallError) -> Result {
        var r = Result()
        for d in layout.devices {
            guard let cdev = files.devices[d.name] else { continue }
            r.devIDs[d.name] = try port.bindIommufd(cdev, iommufd: files.iommufd)
        }
        r.ioas = try port.ioasAlloc(files.iommufd)
        var stage2: [String: ObjectID] = [:]
        for iommu in Set(layout.devices.map(\.iommu)).sorted() {
            let members = layout.devices.filter { $0.iommu == iommu && r.devIDs[$0.name] != nil }
            guard let first = members.first, let firstID = r.devIDs[first.name] else { continue }
            var target = r.ioas
            if layout.nestParent[iommu] == true {
                target = try port.hwptAlloc(files.iommufd, flags: .nestParent, devID: firstID, ptID: r.ioas, dataType: .none, data: [])
            }
            for d in members { if let cdev = files.devices[d.name] { stage2[iommu] = try port.attach(cdev, ptID: target) } }
        }
        for m in layout.memory {
            guard let file = files.memory[m.name] else { continue }
            // QEMU maps its own mapping of the memfd (IOAS_MAP of a user VA); a simulated
            // process has no address space, so the same pages go in by file.
            _ = try port.ioasMap(files.iommufd, ioas: r.ioas, flags: [.fixedIOVA, .writeable, .readable],
                                 source: .file(file, offset: 0), length: m.length, iova: m.iova)
        }
        for v in layout.vsmmus {
            guard let first = layout.devices.first(where: { $0.vsmmu == v.name }), let devID = r.devIDs[first.name],
                  let s2 = stage2[v.physical] else { continue }
            _ = try port.getHwInfo(files.iommufd, devID: devID, requestType: nil)
            let type = v.viommuType
            let data = type == .tegra241CMDQV ? [UInt8](repeating: 0, count: 16) : []
            let viommu = try port.viommuAlloc(files.iommufd, type: type, devID: devID, hwptID: s2, data: data).id
            r.viommus[v.name] = viommu
            for kind in [NestedKind.abort, .bypass] {
                _ = try port.hwptAlloc(files.iommufd, flags: [], devID: devID, ptID: viommu, dataType: .armSMMUv3,
                                       data: NestedData.bytes(dataType: .armSMMUv3, kind: kind))
            }
        }
        return r
    }
}
