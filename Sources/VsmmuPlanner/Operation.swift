import VsmmuKernel
import VsmmuModel

public enum NestedKind: String, Codable, Hashable, Sendable { case abort, bypass }

/// Where a device is attached.
public enum AttachTarget: Codable, Hashable, Sendable, CustomStringConvertible {
    case stage2(iommu: String)
    case nested(vsmmu: String, kind: NestedKind)
    public var description: String {
        switch self {
        case .stage2(let i): return "stage2:\(i)"
        case .nested(let v, let k): return "\(v).\(k.rawValue)"
        }
    }
}

/// One step of a plan: a kernel call (ioctl, sysfs write, open/close) with the
/// arguments that matter. Values only known when it runs (IDs, fds) are named
/// symbolically; the executor looks them up in its holdings.
public enum OpAction: Codable, Hashable, Sendable {
    // host level (sysfs), docs/kernel-interface.md §8 "Safe move to vfio-pci" and "Way back"
    case setDriverOverride(address: PCIAddress, driver: String?)
    case unbindDriver(address: PCIAddress, driver: String)
    case probeDriver(address: PCIAddress, expect: String?)
    /// Drop the record of a device's original driver when there is nothing to give back
    /// (it was on vfio-pci before vsmmu): bookkeeping, no kernel call.
    case forgetOriginalDriver(address: PCIAddress)
    // iommufd context
    case openIommufd(guest: String)
    case ioasAlloc(guest: String)
    case destroyIOAS(guest: String)
    case closeIommufd(guest: String)
    /// Close every fd held for the guest (an interrupted apply left it uncertain).
    case closeGuest(guest: String)
    /// Drop the record of a guest whose iommufd context the kernel already destroyed.
    case forgetGuest(guest: String)
    // devices
    case openDevice(guest: String, device: String, address: PCIAddress)
    case bindDevice(guest: String, device: String)
    case mockDevice(guest: String, device: String, source: String)
    case chownDevice(guest: String, device: String, uid: UInt32, gid: UInt32)
    case attach(guest: String, device: String, target: AttachTarget)
    case detach(guest: String, device: String)
    case closeDevice(guest: String, device: String)
    /// Drop the record of a device whose binding the kernel already undid (drift).
    case forgetDevice(guest: String, device: String)
    // stage 2
    case allocStage2(guest: String, iommu: String, viaDevice: String, nestParent: Bool)
    case destroyStage2(guest: String, iommu: String)
    // guest memory
    case createMemory(guest: String, region: String, size: UInt64, backing: GuestMemoryBacking, hugepageSize: UInt64?)
    case mapMemory(guest: String, region: String, iova: UInt64, file: Bool)
    case unmapMemory(guest: String, region: String)
    case releaseMemory(guest: String, region: String)
    // vSMMU
    case checkHwInfo(guest: String, vsmmu: String, viaDevice: String, expectType: HWInfoType)
    case allocVIOMMU(guest: String, vsmmu: String, physical: String, type: VIOMMUType, viaDevice: String)
    case allocVDevice(guest: String, vsmmu: String, device: String, virtID: UInt64)
    case allocNested(guest: String, vsmmu: String, kind: NestedKind, viaDevice: String, dataType: HWPTDataType)
    case allocEventQueue(guest: String, vsmmu: String, type: VEventQType, depth: UInt32)
    case destroyEventQueue(guest: String, vsmmu: String, type: VEventQType)
    case destroyNested(guest: String, vsmmu: String, kind: NestedKind)
    case destroyVDevice(guest: String, vsmmu: String, device: String)
    case destroyVIOMMU(guest: String, vsmmu: String)
}

public struct PlanStep: Codable, Hashable, Sendable {
    public var index: Int
    /// The resource this step belongs to, as the plan names it (e.g. `device vm1/gpu0`).
    public var resource: String
    public var action: OpAction
    public var dependsOn: [Int]

    public init(index: Int, resource: String, action: OpAction, dependsOn: [Int] = []) {
        self.index = index; self.resource = resource; self.action = action; self.dependsOn = dependsOn
    }

    /// The kernel call the step makes; nil for steps that are bookkeeping or several
    /// calls (closing a guest's fds, releasing its memory).
    public var kernelCall: KernelCall? {
        switch action {
        case .setDriverOverride: return .sysfsDriverOverride
        case .unbindDriver: return .sysfsUnbind
        case .probeDriver: return .sysfsDriversProbe
        case .openIommufd: return .openIommufd
        case .ioasAlloc: return .ioasAlloc
        case .destroyIOAS, .destroyStage2, .destroyVDevice, .destroyVIOMMU, .destroyNested, .destroyEventQueue: return .destroy
        case .closeIommufd: return .closeIommufd
        case .openDevice: return .openVfioDevice
        case .bindDevice: return .bindIommufd
        case .mockDevice: return .testCmd
        case .chownDevice: return .chownVfioDevice
        case .attach: return .attach
        case .detach: return .detach
        case .closeDevice: return .closeVfioDevice
        case .allocStage2, .allocNested: return .hwptAlloc
        case .createMemory(_, _, _, let backing, _): return backing == .anonymous ? .mmapAnon : .memfdCreate
        case .mapMemory(_, _, _, let file): return file ? .ioasMapFile : .ioasMap
        case .unmapMemory: return .ioasUnmap
        case .checkHwInfo: return .getHwInfo
        case .allocVIOMMU: return .viommuAlloc
        case .allocVDevice: return .vdeviceAlloc
        case .allocEventQueue: return .veventqAlloc
        case .forgetOriginalDriver, .closeGuest, .forgetGuest, .forgetDevice, .releaseMemory: return nil
        }
    }

    /// The name the plan shows: the kernel call's, or the step's own.
    public var call: String {
        switch action {
        case .mockDevice: return "IOMMU_TEST_CMD(MOCK_DOMAIN)"
        case .forgetOriginalDriver: return "FORGET_ORIGINAL_DRIVER"
        case .closeGuest: return "CLOSE_GUEST_FDS"
        case .forgetGuest: return "FORGET_GUEST"
        case .forgetDevice: return "FORGET_DEVICE"
        case .releaseMemory: return "RELEASE_GUEST_MEMORY"
        default: return kernelCall?.name ?? ""
        }
    }

    /// Whether the step changes kernel state (GET_HW_INFO only reads; forgetting a
    /// record changes nothing in the kernel).
    public var isMutating: Bool {
        switch action {
        case .checkHwInfo, .forgetGuest, .forgetDevice, .forgetOriginalDriver: return false
        default: return true
        }
    }

    /// Arguments that matter and what the step yields, for `plan --ops`.
    public var arguments: (args: String, yields: String) {
        func q(_ s: String?) -> String { s.map { "\"\($0)\"" } ?? "\"\\n\" (clear)" }
        switch action {
        case .setDriverOverride(let a, let d): return ("\(a) driver_override=\(q(d))", "")
        case .unbindDriver(let a, let d): return ("\(a) from \(d)", "")
        case .probeDriver(let a, let e): return ("\(a)", e.map { "driver \($0)" } ?? "no driver")
        case .forgetOriginalDriver(let a): return ("\(a) stays on vfio-pci, where it was before vsmmu", "")
        case .openIommufd(let g): return ("/dev/iommu for \(g)", "\(g).iommufd")
        case .ioasAlloc(let g): return ("\(g).iommufd flags=0", "\(g).ioas")
        case .destroyIOAS(let g): return ("\(g).ioas", "")
        case .closeIommufd(let g): return ("\(g).iommufd", "")
        case .closeGuest(let g): return ("every fd held for \(g)", "")
        case .forgetGuest(let g): return ("\(g) (its context is gone)", "")
        case .openDevice(let g, let d, let a): return ("/dev/vfio/devices/vfioN of \(a)", "\(g)/\(d).cdev")
        case .bindDevice(let g, let d): return ("\(g)/\(d).cdev iommufd=\(g).iommufd", "\(g)/\(d).dev_id")
        case .mockDevice(let g, let d, let s): return ("\(s) on \(g).ioas", "\(g)/\(d).dev_id")
        case .chownDevice(let g, let d, let u, let gid): return ("\(g)/\(d).cdev uid=\(u) gid=\(gid)", "")
        case .attach(let g, let d, let t):
            switch t {
            case .stage2(let i): return ("\(g)/\(d) pt_id=\(g).stage2[\(i)]", "")
            case .nested(let v, let k): return ("\(g)/\(d) pt_id=\(g)/\(v).\(k.rawValue)", "")
            }
        case .detach(let g, let d): return ("\(g)/\(d)", "")
        case .closeDevice(let g, let d): return ("\(g)/\(d)", "")
        case .forgetDevice(let g, let d): return ("\(g)/\(d) (its binding is gone)", "")
        case .allocStage2(let g, let i, let via, let np):
            return ("flags=\(np ? "NEST_PARENT" : "0") dev_id=\(g)/\(via) pt_id=\(g).ioas", "\(g).stage2[\(i)]")
        case .destroyStage2(let g, let i): return ("\(g).stage2[\(i)]", "")
        case .createMemory(let g, let r, let size, let backing, let huge):
            return ("\(YAMLText.size(size)) \(backing.rawValue)\(huge.map { " hugepages \(YAMLText.size($0))" } ?? "")", "\(g)/\(r).memory")
        case .mapMemory(let g, let r, let iova, let file):
            return ("\(g).ioas iova=\(YAMLText.hex(iova)) flags=FIXED_IOVA|WRITEABLE|READABLE \(file ? "fd" : "user_va") of \(g)/\(r).memory", "")
        case .unmapMemory(let g, let r): return ("\(g).ioas \(g)/\(r)", "")
        case .releaseMemory(let g, let r): return ("\(g)/\(r).memory", "")
        case .checkHwInfo(let g, let v, let via, let t): return ("dev_id=\(g)/\(via) for \(v): expect type \(t.name)", "")
        case .allocVIOMMU(let g, let v, _, let t, let via):
            return ("type=\(t.name) dev_id=\(g)/\(via) hwpt_id=stage2", "\(g)/\(v).viommu")
        case .allocVDevice(let g, let v, let d, let vid):
            return ("viommu=\(g)/\(v).viommu dev_id=\(g)/\(d) virt_id=0x\(String(vid, radix: 16))", "\(g)/\(v)/\(d).vdevice")
        case .allocNested(let g, let v, let k, let via, let dt):
            let data = dt == .armSMMUv3 ? (k == .abort ? " vSTE={0x1,0x0}" : " vSTE={0x9,0x0}") : ""
            return ("pt_id=\(g)/\(v).viommu dev_id=\(g)/\(via) data_type=\(dt.name)\(data)", "\(g)/\(v).\(k.rawValue)")
        case .allocEventQueue(let g, let v, let t, let depth):
            return ("viommu=\(g)/\(v).viommu type=\(t.name) depth=\(depth)", "\(g)/\(v).veventq[\(t.name)] + fd")
        case .destroyEventQueue(let g, let v, let t): return ("close fd, then \(g)/\(v).veventq[\(t.name)]", "")
        case .destroyNested(let g, let v, let k): return ("\(g)/\(v).\(k.rawValue)", "")
        case .destroyVDevice(let g, let v, let d): return ("\(g)/\(v)/\(d).vdevice", "")
        case .destroyVIOMMU(let g, let v): return ("\(g)/\(v).viommu", "")
        }
    }
}
