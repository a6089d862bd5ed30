import VsmmuKernel

// MARK: IOMMU_HWPT_INVALIDATE (docs/kernel-interface.md §2.17, ARM §5.5, the kernel's functions: §10)

/// ARM command-queue opcodes a guest may forward through its vIOMMU (docs/kernel-interface.md §5.5); any other is EIO.
let armInvalidateOpcodes: Set<UInt8> = [0x10, 0x11, 0x12, 0x13, 0x30, 0x05, 0x06, 0x40]
/// The opcodes whose StreamID field is a vSID the kernel translates (docs/kernel-interface.md §5.5).
let armVSIDOpcodes: Set<UInt8> = [0x05, 0x06, 0x40]

/// The selftest mock's invalidation data type, for nested HWPTs and vIOMMUs alike
/// (IOMMU_HWPT_INVALIDATE_DATA_SELFTEST = IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST).
let selftestInvalidateDataType: InvalidateDataType = 0xdeadbeef

extension SimulatedKernel {
    /// The core's checks in its order (hw_pagetable.c iommufd_hwpt_invalidate), then the
    /// target's driver: nested HWPTs of the mock and VT-d, vIOMMUs of the mock and ARM.
    func hwptInvalidateImpl(_ fd: Int32, hwptID: ObjectID, dataType: InvalidateDataType, entryLen: UInt32, entryNum: UInt32, entries: [UInt8]) throws(Refusal) -> UInt32 {
        let cid = try context(ofIommufd: fd)
        if entryNum != 0 {
            if entries.isEmpty { throw Refusal(.EINVAL, "entry_num \(entryNum) with no data") }
            if entryLen == 0 || entryLen > 4096 { throw Refusal(.EINVAL, "entry_len \(entryLen) is not in 1...4096") }
            if entryNum > 1 << 19 { throw Refusal(.EINVAL, "entry_num \(entryNum) exceeds 2^19") }
        }
        guard let target = object(cid, hwptID) else { throw Refusal(.ENOENT, missing(cid, hwptID, "hwpt_id")) }
        let array = InvalidationArray(type: dataType, entryLen: Int(entryLen), entryNum: Int(entryNum), bytes: entries)
        switch target {
        case .hwptNested(let nested):
            switch hostIOMMU(nested.iommu)?.type {
            case .selftest?: return try selftestNestedInvalidate(array)
            case .intelVTd?: return try vtdNestedInvalidate(array)
            default:
                // ARM (and AMD) nested HWPTs have no invalidation op: the guest's commands go to the vIOMMU.
                throw Refusal(.EOPNOTSUPP, "a \(nested.iommu) nested HWPT has no invalidation op; use the vIOMMU")
            }
        case .viommu(let viommu):
            switch hostIOMMU(viommu.iommu)?.type {
            case .armSMMUv3?: return try armVIOMMUInvalidate(cid, viommuID: hwptID, array)
            case .selftest?: return try selftestVIOMMUInvalidate(cid, viommuID: hwptID, array)
            default: throw Refusal(.EOPNOTSUPP, "invalidation on a \(viommu.iommu) vIOMMU is not modelled")
            }
        default:
            throw Refusal(.EINVAL, "hwpt_id \(hwptID) is a \(target.typeName), not a nested HWPT or a vIOMMU")
        }
    }

    /// selftest.c mock_domain_cache_invalidate_user: entries {u32 flags, u32 iotlb_id},
    /// each copied on its own (iommu_copy_struct_from_user_array: exactly 8 bytes).
    private func selftestNestedInvalidate(_ array: InvalidationArray) throws(Refusal) -> UInt32 {
        if array.type != selftestInvalidateDataType { throw Refusal(.EINVAL, "data_type \(hex(array.type.rawValue)) is not the mock's 0xdeadbeef") }
        for k in 0..<array.entryNum {
            let inv = try copyDriverStruct(try array.entry(k), minimum: 8, size: 8, what: "iommu_hwpt_invalidate_selftest entry \(k)")
            if le32(inv, 0) & ~UInt32(1) != 0 { throw Refusal(.EOPNOTSUPP, "unknown flags \(hex(le32(inv, 0))) (entry \(k))") }
            if le32(inv, 4) > 3 { throw Refusal(.EINVAL, "iotlb_id \(le32(inv, 4)) is above 3 (entry \(k))") }
        }
        return UInt32(array.entryNum)
    }

    /// VT-d nested.c intel_nested_cache_invalidate_user (from the source; no lab has VT-d
    /// nesting): entries iommu_hwpt_vtd_s1_invalidate {u64 addr, u64 npages, u32 flags,
    /// u32 reserved}, exactly 24 bytes each.
    private func vtdNestedInvalidate(_ array: InvalidationArray) throws(Refusal) -> UInt32 {
        if array.type != .vtdS1 { throw Refusal(.EINVAL, "data_type \(hex(array.type.rawValue)) is not VTD_S1 (0)") }
        for k in 0..<array.entryNum {
            let inv = try copyDriverStruct(try array.entry(k), minimum: 24, size: 24, what: "iommu_hwpt_vtd_s1_invalidate entry \(k)")
            let addr = le64(inv, 0), npages = le64(inv, 8)
            if le32(inv, 16) & ~UInt32(1) != 0 || le32(inv, 20) != 0 { throw Refusal(.EOPNOTSUPP, "unknown flags or non-zero reserved (entry \(k))") }
            if addr % 4096 != 0 || (npages == UInt64.max && addr != 0) { throw Refusal(.EINVAL, "addr \(hex(addr)) unaligned, or npages all with addr != 0 (entry \(k))") }
        }
        return UInt32(array.entryNum)
    }

    /// selftest.c mock_viommu_cache_invalidate: an empty array of the right type is fine;
    /// else the whole array is copied first (iommu_copy_struct_from_full_user_array), then
    /// each entry {u32 flags, u32 vdev_id, u32 cache_id} is checked: flags, cache_id ≤ 3, and
    /// vdev_id must be a vDevice's virt_id on this vIOMMU.
    private func selftestVIOMMUInvalidate(_ cid: Int, viommuID: ObjectID, _ array: InvalidationArray) throws(Refusal) -> UInt32 {
        if array.entryNum == 0 && array.type == selftestInvalidateDataType { return 0 }
        let cmds = try array.copyAll(type: selftestInvalidateDataType, size: 12, sim: self, what: "iommu_viommu_invalidate_selftest")
        for (k, cmd) in cmds.enumerated() {
            if le32(cmd, 0) & ~UInt32(1) != 0 { throw Refusal(.EOPNOTSUPP, "unknown flags \(hex(le32(cmd, 0))) (entry \(k))") }
            if le32(cmd, 8) > 3 { throw Refusal(.EINVAL, "cache_id \(le32(cmd, 8)) is above 3 (entry \(k))") }
            let vdevID = UInt64(le32(cmd, 4))
            if !hasVDevice(cid, viommu: viommuID, virtID: vdevID) { throw Refusal(.EINVAL, "no vDevice \(hex(vdevID)) on vIOMMU \(viommuID) (entry \(k))") }
        }
        return UInt32(array.entryNum)
    }

    /// arm-smmu-v3-iommufd.c arm_vsmmu_cache_invalidate: the whole array is copied first
    /// (E2BIG for any entry), then the commands are converted one by one
    /// (arm_vsmmu_convert_user_cmd: EIO for an opcode a guest may not send or an unknown vSID).
    private func armVIOMMUInvalidate(_ cid: Int, viommuID: ObjectID, _ array: InvalidationArray) throws(Refusal) -> UInt32 {
        let cmds = try array.copyAll(type: .armSMMUv3, size: Int(InvalidateDataType.armEntrySize), sim: self, what: "iommu_viommu_arm_smmuv3_invalidate")
        for (k, cmd) in cmds.enumerated() {
            let opcode = cmd[0]
            if !armInvalidateOpcodes.contains(opcode) { throw Refusal(.EIO, "opcode \(hex(UInt32(opcode))) is not accepted from a guest (entry \(k))") }
            if armVSIDOpcodes.contains(opcode) {
                let vsid = le64(cmd, 0) >> 32
                if !hasVDevice(cid, viommu: viommuID, virtID: vsid) { throw Refusal(.EIO, "vSID \(hex(vsid)) has no vDevice on vIOMMU \(viommuID) (entry \(k))") }
            }
        }
        return UInt32(array.entryNum)
    }

    private func hasVDevice(_ cid: Int, viommu: ObjectID, virtID: UInt64) -> Bool {
        objects(cid).contains { entry in
            if case .vdevice(let v) = entry.object { return v.viommu == viommu && v.virtID == virtID }
            return false
        }
    }
}

/// The user's array as the kernel's struct iommu_user_data_array sees it.
struct InvalidationArray {
    var type: InvalidateDataType
    var entryLen: Int
    var entryNum: Int
    var bytes: [UInt8]

    /// Entry k's bytes; past the end of the user's buffer the copy faults (EFAULT).
    func entry(_ k: Int) throws(Refusal) -> [UInt8] {
        let start = k * entryLen
        guard start + entryLen <= bytes.count else { throw Refusal(.EFAULT, "entry \(k) lies beyond the \(bytes.count)-byte array") }
        return Array(bytes[start..<(start + entryLen)])
    }

    /// iommu.h iommu_copy_struct_from_full_user_array: type (EINVAL), a non-empty array
    /// (EINVAL), then every entry copied (EFAULT, E2BIG) before the driver looks at any.
    func copyAll(type wanted: InvalidateDataType, size: Int, sim: SimulatedKernel, what: String) throws(Refusal) -> [[UInt8]] {
        if type != wanted { throw Refusal(.EINVAL, "data_type \(hex(type.rawValue)) is not \(hex(wanted.rawValue))") }
        if entryNum == 0 { throw Refusal(.EINVAL, "\(what): the driver rejects an empty array") }
        if bytes.count < entryLen * entryNum { throw Refusal(.EFAULT, "the array is shorter than entry_len × entry_num") }
        var out: [[UInt8]] = []
        for k in 0..<entryNum { out.append(try sim.copyArrayEntry(try entry(k), size: size, what: "\(what) entry \(k)")) }
        return out
    }
}
