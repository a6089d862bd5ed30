import VsmmuKernel

// IOMMU_HWPT_ALLOC (docs/kernel-interface.md §2.13, ARM §5.2/§5.3, VT-d §6, selftest §7.3) and
// IOMMU_GET_HW_INFO (docs/kernel-interface.md §2.14, §5.1, §5.7, §5.8).

/// The selftest mock domain's aperture (docs/kernel-interface.md §7.3, §9.19).
let mockAperture = IovaRange(start: 0x100_0000, last: 0x7FFF_FFFF)
/// The selftest mock domain's page size (MOCK_IO_PAGE_SIZE = PAGE_SIZE / 2, docs/kernel-interface.md §7.3).
let mockPageSize: UInt64 = 0x800

/// ARM SMMUv3 vSTE masks of the fields a guest may set (docs/kernel-interface.md §5.3).
let vsteWord0Allowed: UInt64 = 0xF80F_FFFF_FFFF_FFFF
let vsteWord1Allowed: UInt64 = 0x0000_0000_3800_00FF

extension SimulatedKernel {
    func hostIOMMU(_ name: String) -> HostIOMMU? { indexes.iommuPositions[name].map { state.iommus[$0] } }

    /// The IOMMU instance a device object sits behind.
    /// The PCI device behind an iommufd device (nil for a selftest mock).
    func pciDevice(of device: DeviceObject) -> SimPCIDevice? {
        if case .vfio(let address) = device.origin { return state.devices[address] }
        return nil
    }

    /// ARM: the master's root complex is CANWBS (IOMMU_CAP_ENFORCE_CACHE_COHERENCY);
    /// without a per-device fact, the IOMMU's `coherent`.
    func deviceCANWBS(_ device: DeviceObject, _ iommu: HostIOMMU) -> Bool {
        pciDevice(of: device)?.canwbs ?? iommu.coherent
    }

    func iommu(of device: DeviceObject) throws(Refusal) -> HostIOMMU {
        guard let iommu = hostIOMMU(device.iommu) else {
            throw Refusal(.ENODEV, "the device's IOMMU \(device.iommu) no longer exists")
        }
        return iommu
    }

    /// [0, 2^bits - 1].
    func addressSpace(bits: Int) -> IovaRange {
        bits >= 64 ? IovaRange(start: 0, last: UInt64.max) : IovaRange(start: 0, last: (UInt64(1) << UInt64(max(bits, 1))) - 1)
    }

    /// The aperture of a paging domain the driver of `iommu` makes with `flags`.
    /// ARM S2 (nest parent): [0, 2^OAS-1] (docs/kernel-interface.md §5.2). ARM S1 (flags 0): the input range is
    /// the CPU VA size; the simulation assumes 48 bits (VA_BITS=48, not in docs/kernel-interface.md).
    /// VT-d / AMD: [0, 2^oas-1] with the host's address width (a simplification).
    /// Selftest: [0x1000000, 0x7FFFFFFF] (docs/kernel-interface.md §7.3).
    func domainAperture(_ iommu: HostIOMMU, flags: HWPTAllocFlags) -> IovaRange {
        switch iommu.type {
        case .selftest: return mockAperture
        case .armSMMUv3: return flags.contains(.nestParent) ? addressSpace(bits: iommu.oas) : addressSpace(bits: 48)
        case .intelVTd, .amdVi: return addressSpace(bits: iommu.oas)
        }
    }

    /// Driver data (iommu.h __iommu_copy_struct_from_user, also per entry of
    /// iommu_copy_struct_from_user_array): shorter than the struct's first version or
    /// longer than the kernel's struct → EINVAL, whatever the tail (7.2 checks the length
    /// before copy_struct_from_user could say E2BIG); a shorter one is zero-extended.
    func copyDriverStruct(_ data: [UInt8], minimum: Int, size: Int, what: String) throws(Refusal) -> [UInt8] {
        if data.count < minimum { throw Refusal(.EINVAL, "\(what): data_len \(data.count) is below \(minimum)") }
        if data.count > size { throw Refusal(.EINVAL, "\(what): data_len \(data.count) is above the kernel's \(size)-byte struct") }
        return data + [UInt8](repeating: 0, count: size - data.count)
    }

    /// One entry of iommu_copy_struct_from_full_user_array (copy_struct_from_user): a longer
    /// entry must have a zero tail (E2BIG), a shorter one is zero-extended.
    func copyArrayEntry(_ data: [UInt8], size: Int, what: String) throws(Refusal) -> [UInt8] {
        if data.count > size, data[size...].contains(where: { $0 != 0 }) {
            throw Refusal(.E2BIG, "\(what): non-zero bytes beyond the \(size)-byte struct")
        }
        return data.count >= size ? Array(data[0..<size]) : data + [UInt8](repeating: 0, count: size - data.count)
    }

    // MARK: IOMMU_HWPT_ALLOC

    func hwptAllocImpl(_ fd: Int32, flags: HWPTAllocFlags, devID: ObjectID, ptID: ObjectID, dataType: HWPTDataType, data: [UInt8]) throws(Refusal) -> ObjectID {
        let cid = try context(ofIommufd: fd)
        if dataType == .none && !data.isEmpty { throw Refusal(.EINVAL, "data_type NONE with data_len \(data.count)") }
        if dataType != .none && data.isEmpty { throw Refusal(.EINVAL, "data_type \(hex(dataType.rawValue)) with data_len 0") }
        guard let device = deviceObject(cid, devID) else { throw Refusal(.ENOENT, missing(cid, devID, "dev_id")) }
        // docs/kernel-interface.md §2.13/§9.1: an unknown pt_id is EINVAL here, not ENOENT.
        guard let pt = object(cid, ptID) else { throw Refusal(.EINVAL, missing(cid, ptID, "pt_id")) }
        let iommu = try iommu(of: device)

        let hwpt: SimObject
        switch pt {
        case .ioas:
            var paging = try pagingHWPT(cid, flags: flags, iommu: iommu, ioas: ptID, dataType: dataType, data: data)
            // docs/kernel-interface.md §5.2: a HWPT made through a CANWBS device enforces coherency.
            if iommu.type == .armSMMUv3 && deviceCANWBS(device, iommu) { paging.enforcesCoherency = true }
            hwpt = .hwptPaging(paging)
        case .hwptPaging(let parent):
            hwpt = .hwptNested(try nestedOnParent(flags: flags, device: device, iommu: iommu, parentID: ptID, parent: parent, dataType: dataType, data: data))
        case .viommu(let viommu):
            hwpt = .hwptNested(try nestedOnVIOMMU(flags: flags, device: device, viommuID: ptID, viommu: viommu, dataType: dataType, data: data))
        default:
            throw Refusal(.EINVAL, "pt_id \(ptID) is a \(pt.typeName), not an IOAS, HWPT_PAGING or VIOMMU")
        }
        // The port carries no fault_id, so with FAULT_ID_VALID it is 0: never a FAULT
        // object. The kernel looks it up after the driver made the domain (docs/kernel-interface.md §2.13).
        if flags.contains(.faultIDValid) { throw Refusal(.ENOENT, "fault_id 0 is not a FAULT object") }

        let id = allocateID(cid)
        setObject(cid, id, hwpt)
        if case .hwptPaging(let paging) = hwpt { try pinAll(cid, ioas: paging.ioas) }
        return id
    }

    /// pt_id = IOAS: a paging HWPT (docs/kernel-interface.md §2.13), driver rules per IOMMU type.
    private func pagingHWPT(_ cid: Int, flags: HWPTAllocFlags, iommu: HostIOMMU, ioas: ObjectID, dataType: HWPTDataType, data: [UInt8]) throws(Refusal) -> PagingHWPT {
        let unknown = flags.subtracting([.nestParent, .dirtyTracking, .faultIDValid, .pasid])
        if !unknown.isEmpty { throw Refusal(.EOPNOTSUPP, "unknown flag bits \(hex(unknown.rawValue))") }
        let nestParent = flags.contains(.nestParent)
        let dirty = flags.contains(.dirtyTracking)
        if nestParent && flags.contains(.faultIDValid) { throw Refusal(.EOPNOTSUPP, "FAULT_ID_VALID with NEST_PARENT") }
        let driverFlags = flags.subtracting(.faultIDValid)

        switch iommu.type {
        case .armSMMUv3:
            // docs/kernel-interface.md §5.2: no driver data; flags 0 / PASID / DIRTY (S1), or exactly NEST_PARENT (S2).
            if !data.isEmpty { throw Refusal(.EOPNOTSUPP, "the ARM SMMUv3 driver takes no data for a paging HWPT") }
            switch driverFlags {
            case [], .pasid:
                break
            case .nestParent:
                if !iommu.nesting { throw Refusal(.EOPNOTSUPP, "\(iommu.name) has no nesting feature (IDR0.S1P+S2P)") }
            case .dirtyTracking, [.dirtyTracking, .pasid]:
                // Dirty tracking needs HTTU, which the host description does not model: assumed absent.
                throw Refusal(.EOPNOTSUPP, "\(iommu.name) has no dirty tracking")
            default:
                throw Refusal(.EOPNOTSUPP, "NEST_PARENT cannot be combined with other flags on ARM SMMUv3")
            }
        case .intelVTd, .amdVi:
            if !data.isEmpty { throw Refusal(.EOPNOTSUPP, "the \(iommu.type.rawValue) driver takes no data for a paging HWPT") }
            if dirty { throw Refusal(.EOPNOTSUPP, "\(iommu.name) has no dirty tracking (not modelled)") }
            if nestParent && !iommu.nesting { throw Refusal(.EOPNOTSUPP, "\(iommu.name) has no nesting capability") }
        case .selftest:
            // selftest.c mock_domain_alloc_paging_flags: dirty tracking supported; data
            // of type SELFTEST (iotlb, pagetable_type) only.
            if !data.isEmpty {
                if dataType != .selftest { throw Refusal(.EOPNOTSUPP, "the mock takes only data_type SELFTEST") }
                let cfg = try copyDriverStruct(data, minimum: 4, size: 8, what: "iommu_hwpt_selftest")
                let pagetableType = le32(cfg, 4)
                // The x86 lab's 7.2 answers EOPNOTSUPP (not EINVAL) for an unknown type.
                if pagetableType > 1 { throw Refusal(.EOPNOTSUPP, "unknown mock pagetable_type \(pagetableType)") }
            }
        }
        let aperture = domainAperture(iommu, flags: flags)
        try checkDomainJoin(cid, ioas: ioas, aperture: aperture, pageSize: domainPageSize(iommu))
        return PagingHWPT(ioas: ioas, iommu: iommu.name, flags: flags, automatic: false, aperture: aperture)
    }

    /// pt_id = HWPT_PAGING: a nested HWPT directly on the parent (VT-d style, docs/kernel-interface.md §2.13, §6).
    private func nestedOnParent(flags: HWPTAllocFlags, device: DeviceObject, iommu: HostIOMMU, parentID: ObjectID, parent: PagingHWPT,
                                dataType: HWPTDataType, data: [UInt8]) throws(Refusal) -> NestedHWPT {
        if !flags.subtracting([.faultIDValid, .pasid]).isEmpty {
            throw Refusal(.EOPNOTSUPP, "flags \(hex(flags.rawValue)) are not allowed for a nested HWPT")
        }
        if data.isEmpty { throw Refusal(.EOPNOTSUPP, "a nested HWPT needs driver data") }
        guard iommu.type == .intelVTd || iommu.type == .selftest else {
            // docs/kernel-interface.md §9.20: ARM (and AMD) have no nested allocator on a HWPT: use the vIOMMU.
            throw Refusal(.EOPNOTSUPP, "the \(iommu.type.rawValue) driver allocates nested HWPTs only on a vIOMMU")
        }
        if parent.automatic { throw Refusal(.EINVAL, "HWPT \(parentID) is an automatic HWPT") }
        if !parent.nestParent { throw Refusal(.EINVAL, "HWPT \(parentID) was not allocated with NEST_PARENT") }
        if hostIOMMU(parent.iommu)?.type != iommu.type { throw Refusal(.EINVAL, "HWPT \(parentID) belongs to another IOMMU driver") }
        switch iommu.type {
        case .intelVTd:
            if !iommu.nesting { throw Refusal(.EOPNOTSUPP, "\(iommu.name) has no nesting capability") }
            if dataType != .vtdS1 { throw Refusal(.EOPNOTSUPP, "VT-d nested HWPTs take data_type VTD_S1 (1)") }
            let s1 = try copyDriverStruct(data, minimum: 24, size: 24, what: "iommu_hwpt_vtd_s1")
            if le64(s1, 0) & ~UInt64(0x7) != 0 { throw Refusal(.EINVAL, "unknown iommu_hwpt_vtd_s1 flags") }
        default:
            if dataType != .selftest { throw Refusal(.EOPNOTSUPP, "the mock takes only data_type SELFTEST") }
            _ = try copyDriverStruct(data, minimum: 4, size: 8, what: "iommu_hwpt_selftest")
        }
        return NestedHWPT(parent: .paging(parentID), iommu: device.iommu, config: .driverData, vste: nil)
    }

    /// pt_id = VIOMMU: a nested HWPT on a vIOMMU (ARM SMMUv3 / selftest, docs/kernel-interface.md §2.13, §5.3).
    private func nestedOnVIOMMU(flags: HWPTAllocFlags, device: DeviceObject, viommuID: ObjectID, viommu: VIOMMUObject,
                                dataType: HWPTDataType, data: [UInt8]) throws(Refusal) -> NestedHWPT {
        if device.iommu != viommu.iommu {
            throw Refusal(.EINVAL, "the device is behind \(device.iommu), vIOMMU \(viommuID) behind \(viommu.iommu)")
        }
        if !flags.subtracting([.faultIDValid, .pasid]).isEmpty {
            throw Refusal(.EOPNOTSUPP, "flags \(hex(flags.rawValue)) are not allowed for a nested HWPT")
        }
        if data.isEmpty { throw Refusal(.EOPNOTSUPP, "a nested HWPT needs driver data") }
        let driverFlags = flags.subtracting(.faultIDValid)
        switch hostIOMMU(viommu.iommu)?.type {
        case .armSMMUv3?:
            if !driverFlags.isEmpty { throw Refusal(.EOPNOTSUPP, "ARM nested HWPTs take no flags (PASID refused)") }
            if dataType != .armSMMUv3 { throw Refusal(.EINVAL, "data_type \(hex(dataType.rawValue)) is not ARM_SMMUV3 (2)") }
            if data.count != 16 { throw Refusal(.EINVAL, "a vSTE is exactly 16 bytes, got \(data.count)") }
            let (config, words) = try validateVSTE(data)
            return NestedHWPT(parent: .viommu(viommuID), iommu: viommu.iommu, config: config, vste: words)
        case .selftest?:
            if dataType != .selftest { throw Refusal(.EOPNOTSUPP, "the mock takes only data_type SELFTEST") }
            _ = try copyDriverStruct(data, minimum: 4, size: 8, what: "iommu_hwpt_selftest")
            return NestedHWPT(parent: .viommu(viommuID), iommu: viommu.iommu, config: .driverData, vste: nil)
        default:
            // docs/kernel-interface.md §6: AMD's vIOMMU has no nested allocator.
            throw Refusal(.EOPNOTSUPP, "vIOMMU \(viommuID) has no nested HWPT allocator")
        }
    }

    /// arm_smmu_validate_vste (docs/kernel-interface.md §5.3): V=0 is accepted whatever else is set (stored as
    /// zeros, acts as abort); with V=1 every bit outside the masks, a Config other than
    /// 0/4/5, or EATS other than 0/1 is EIO. EATS is removed from the stored vSTE.
    func validateVSTE(_ data: [UInt8]) throws(Refusal) -> (NestedConfig, [UInt64]) {
        let word0 = le64(data, 0)
        var word1 = le64(data, 8)
        if word0 & 1 == 0 { return (.abort, [0, 0]) }
        if word0 & ~vsteWord0Allowed != 0 { throw Refusal(.EIO, "vSTE word 0 sets bits \(hex(word0 & ~vsteWord0Allowed)) outside the allowed mask") }
        if word1 & ~vsteWord1Allowed != 0 { throw Refusal(.EIO, "vSTE word 1 sets bits \(hex(word1 & ~vsteWord1Allowed)) outside the allowed mask") }
        let config: NestedConfig
        switch (word0 >> 1) & 0x7 {
        case 0: config = .abort
        case 4: config = .bypass
        case 5: config = .stage1
        case let other: throw Refusal(.EIO, "vSTE Config \(other) is not abort (0), bypass (4) or S1 translate (5)")
        }
        // EATS: 0 (abort) or 1 (translate); 2 (S1CHK) and the reserved 3 are refused.
        let eats = (word1 >> 28) & 0x3
        if eats > 1 { throw Refusal(.EIO, "vSTE EATS \(eats) is not 0 or 1") }
        word1 &= ~(UInt64(0x3) << 28)
        return (config, [word0, word1])
    }

    // MARK: IOMMU_GET_HW_INFO

    func hwInfoImpl(_ fd: Int32, devID: ObjectID, requestType: HWInfoType?) throws(Refusal) -> HwInfo {
        let cid = try context(ofIommufd: fd)
        guard let device = deviceObject(cid, devID) else { throw Refusal(.ENOENT, missing(cid, devID, "dev_id")) }
        let iommu = try iommu(of: device)
        let requested = requestType ?? .none   // without INPUT_TYPE: DEFAULT
        func refuse() -> Refusal { Refusal(.EOPNOTSUPP, "\(iommu.name) does not report hw_info type \(hex(requested.rawValue))") }
        // Dirty tracking is not modelled for hardware IOMMUs. ATS and the PASID width are
        // this device's (its capability, within what the IOMMU allows), else the IOMMU's.
        let pci = pciDevice(of: device)
        let iommuPasid = iommu.pasid ? max(0, min(iommu.ssidSize, 20)) : 0
        let ats = iommu.ats && (pci?.ats ?? true)
        var capabilities: HWInfoCapabilities = ats ? [] : .pciATSNotSupported
        var maxPasid = UInt8(clamping: min(iommuPasid, max(0, pci?.pasidWidth ?? iommuPasid)))
        let type: HWInfoType
        let payload: [UInt8]
        switch iommu.type {
        case .armSMMUv3:
            if requested == .none || requested == .armSMMUv3 {
                type = .armSMMUv3; payload = ARMSMMUv3HWInfo(host: iommu).bytes
            } else if requested == .tegra241CMDQV, iommu.cmdqvVCMDQs != nil {
                type = .tegra241CMDQV; payload = tegra241Info(iommu).bytes
            } else {
                throw refuse()
            }
        case .intelVTd:
            guard requested == .none || requested == .intelVTD else { throw refuse() }
            type = .intelVTD; payload = IntelVTdHWInfo(host: iommu).bytes
        case .amdVi:
            // EFR/EFR2 bit layouts are not in docs/kernel-interface.md: the payload is zeros.
            guard requested == .none || requested == .amd else { throw refuse() }
            type = .amd; payload = [UInt8](repeating: 0, count: 16)
        case .selftest:
            guard requested == .none || requested == .selftest else { throw refuse() }
            type = .selftest
            payload = le32Bytes(0) + le32Bytes(0xdead_beef)   // iommu_test_hw_info {flags, test_reg}
            // selftest.c mock_domain_capable: dirty tracking yes, PCI ATS no; PASID only
            // for devices made with MOCK_FLAGS_DEVICE_PASID (MOCK_DOMAIN never sets it).
            capabilities = [.dirtyTracking, .pciATSNotSupported]
            maxPasid = 0
        }
        return HwInfo(dataType: type, data: payload, maxPasidLog2: maxPasid, capabilities: capabilities)
    }

    /// vCMDQs per VINTF as the driver reports them: a power of two.
    func log2VCMDQs(_ iommu: HostIOMMU) -> UInt8 {
        let count = max(1, iommu.cmdqvVCMDQs ?? 1)
        return UInt8(63 - UInt64(count).leadingZeroBitCount)
    }

    /// SID-replacement slots per VINTF (PARAM 15:12). Not in the host description: the
    /// simulation reports 2^4 = 16 (assumed) and enforces it for vDevices.
    var tegraLog2VSIDs: UInt8 { 4 }

    /// The Tegra241 CMDQV payload (docs/kernel-interface.md §5.7); version 1 (assumed).
    func tegra241Info(_ iommu: HostIOMMU) -> Tegra241CMDQVHWInfo {
        Tegra241CMDQVHWInfo(version: 1, log2VCMDQs: log2VCMDQs(iommu), log2VSIDs: tegraLog2VSIDs)
    }
}

// MARK: little-endian helpers (VsmmuKernel's LE)

func le32(_ bytes: [UInt8], _ offset: Int) -> UInt32 { LE.u32(bytes, offset) }
func le64(_ bytes: [UInt8], _ offset: Int) -> UInt64 { LE.u64(bytes, offset) }
func le32Bytes(_ value: UInt32) -> [UInt8] { LE.bytes(value) }
func le64Bytes(_ value: UInt64) -> [UInt8] { LE.bytes(value) }
