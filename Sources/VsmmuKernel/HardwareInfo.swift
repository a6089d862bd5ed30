/// The driver payloads of IOMMU_GET_HW_INFO (docs/kernel-interface.md §2.14), decoded and encoded in one place:
/// `vsmmu host` and the executor decode what the kernel reports, the simulated kernel
/// encodes what a host description says. Register bit positions: docs/kernel-interface.md §5.1, §5.7, §5.8, §6.

/// `struct iommu_hw_info_arm_smmuv3` (40 bytes: flags, reserved, idr[6], iidr, aidr).
public struct ARMSMMUv3HWInfo: Hashable, Sendable {
    public static let size = 40
    public var flags: UInt32 = 0
    public var idr: [UInt32] = [UInt32](repeating: 0, count: 6)
    public var iidr: UInt32 = 0
    public var aidr: UInt32 = 0

    public init() {}

    public init?(_ data: [UInt8]) {
        guard data.count >= Self.size else { return nil }
        flags = LE.u32(data, 0)
        idr = (0..<6).map { LE.u32(data, 8 + 4 * $0) }
        iidr = LE.u32(data, 32)
        aidr = LE.u32(data, 36)
    }

    public var bytes: [UInt8] {
        LE.bytes(flags) + LE.bytes(UInt32(0)) + idr.flatMap { LE.bytes($0) } + LE.bytes(iidr) + LE.bytes(aidr)
    }

    /// IDR0.S2P (stage 2) and IDR0.S1P (stage 1): both are needed to nest.
    public var s2p: Bool { idr[0] & 1 != 0 }
    public var s1p: Bool { idr[0] >> 1 & 1 != 0 }
    public var ats: Bool { idr[0] & (1 << 10) != 0 }
    /// IDR1.SSIDSIZE: substream ID bits (PASID).
    public var ssidSize: Int { Int(idr[1] >> 6 & 0x1f) }
    /// IDR3.FWB (stage-2 forced write-back) and IDR3.RIL (range invalidation).
    public var s2fwb: Bool { idr[3] & (1 << 8) != 0 }
    public var ril: Bool { idr[3] & (1 << 10) != 0 }
    /// IDR5.OAS decoded to bits (32…52); nil for a reserved encoding.
    public var oas: Int? { Self.oasWidths.indices.contains(Int(idr[5] & 0x7)) ? Self.oasWidths[Int(idr[5] & 0x7)] : nil }

    /// IDR5.OAS encodings 0…6.
    static let oasWidths = [32, 36, 40, 42, 44, 48, 52]
    /// The largest encodable width at or below `bits`.
    static func oasCode(_ bits: Int) -> UInt32 { UInt32(oasWidths.lastIndex { $0 <= bits } ?? 0) }

    /// The registers a host with these facts reports. Fields the host description does not
    /// carry get typical values: SIDSIZE 16, CMDQS/EVTQS 19, 2-level stream table, AArch64
    /// tables, ASID16/VMID16/CD2L, COHACC; IIDR and AIDR 0. S1P is always set (stage 1 is
    /// assumed present: flags-0 HWPTs are S1), S2P = nesting, FWB = coherent.
    public init(host iommu: HostIOMMU) {
        var idr0: UInt32 = 0
        if iommu.nesting { idr0 |= 1 << 0 }          // S2P
        idr0 |= 1 << 1                               // S1P
        idr0 |= 2 << 2                               // TTF: AArch64
        idr0 |= 1 << 4                               // COHACC
        if iommu.ats { idr0 |= 1 << 10 }             // ATS
        idr0 |= 1 << 12                              // ASID16
        idr0 |= 1 << 18                              // VMID16
        idr0 |= 1 << 19                              // CD2L
        idr0 |= 1 << 27                              // ST_LEVEL: 2-level
        var idr1: UInt32 = 16                        // SIDSIZE
        idr1 |= UInt32(clamping: max(0, min(iommu.ssidSize, 20))) << 6   // SSIDSIZE
        idr1 |= 19 << 16                             // EVTQS
        idr1 |= 19 << 21                             // CMDQS
        var idr3: UInt32 = 0
        if iommu.coherent { idr3 |= 1 << 8 }         // FWB (S2FWB)
        if iommu.ril { idr3 |= 1 << 10 }             // RIL
        var idr5: UInt32 = Self.oasCode(iommu.oas)   // OAS
        idr5 |= 1 << 4                               // GRAN4K
        self.init()
        idr = [idr0, idr1, 0, idr3, 0, idr5]
    }
}

/// `struct iommu_hw_info_vtd` (24 bytes: flags, reserved, cap_reg, ecap_reg).
public struct IntelVTdHWInfo: Hashable, Sendable {
    public static let size = 24
    /// flags: IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17.
    public var flags: UInt32 = 0
    public var cap: UInt64 = 0
    public var ecap: UInt64 = 0

    public init(flags: UInt32 = 0, cap: UInt64, ecap: UInt64) { self.flags = flags; self.cap = cap; self.ecap = ecap }

    public init?(_ data: [UInt8]) {
        guard data.count >= Self.size else { return nil }
        self.init(flags: LE.u32(data, 0), cap: LE.u64(data, 8), ecap: LE.u64(data, 16))
    }

    public var bytes: [UInt8] { LE.bytes(flags) + LE.bytes(UInt32(0)) + LE.bytes(cap) + LE.bytes(ecap) }

    public var nesting: Bool { ecap & (1 << 26) != 0 }          // ecap.NEST
    public var coherent: Bool { ecap & 1 != 0 }                 // ecap.C (page-walk coherency)
    public var deviceTLB: Bool { ecap & (1 << 2) != 0 }         // ecap.DT (ATS)
    public var pasid: Bool { ecap & (1 << 40) != 0 }            // ecap.PASID
    /// ecap.PSS + 1 when PASID is supported, else 0.
    public var pasidBits: Int { pasid ? Int(ecap >> 35 & 0x1f) + 1 : 0 }
    /// cap.MGAW + 1.
    public var addressWidth: Int { Int(cap >> 16 & 0x3f) + 1 }

    /// The registers a host with these facts reports: ERRATA_772415_SPR17 set; MGAW =
    /// oas-1, SAGAW 4-level; ecap C, QI, IR, SMTS, SLTS always, DT = ats, NEST (bit 26) and
    /// FLTS = nesting, PASID (bit 40) and PSS = pasid / ssidSize-1.
    public init(host iommu: HostIOMMU) {
        var cap: UInt64 = UInt64(0x4) << 8                               // SAGAW: 4-level
        cap |= UInt64(max(0, min(iommu.oas, 64) - 1) & 0x3F) << 16       // MGAW
        var ecap: UInt64 = 1 | (1 << 1) | (1 << 3) | (1 << 43) | (1 << 46)  // C, QI, IR, SMTS, SLTS
        if iommu.ats { ecap |= 1 << 2 }
        if iommu.nesting { ecap |= (1 << 26) | (1 << 47) }
        if iommu.pasid {
            ecap |= 1 << 40
            ecap |= UInt64(max(0, min(iommu.ssidSize, 20) - 1) & 0x1F) << 35
        }
        self.init(flags: 0x1, cap: cap, ecap: ecap)
    }
}

/// `struct iommu_hw_info_tegra241_cmdqv` (8 bytes: flags, version, log2vcmdqs, log2vsids, reserved).
public struct Tegra241CMDQVHWInfo: Hashable, Sendable {
    public static let size = 8
    public var flags: UInt32 = 0
    public var version: UInt8
    public var log2VCMDQs: UInt8
    public var log2VSIDs: UInt8

    public init(version: UInt8, log2VCMDQs: UInt8, log2VSIDs: UInt8) {
        self.version = version; self.log2VCMDQs = log2VCMDQs; self.log2VSIDs = log2VSIDs
    }

    public init?(_ data: [UInt8]) {
        guard data.count >= Self.size else { return nil }
        self.init(version: data[4], log2VCMDQs: data[5], log2VSIDs: data[6])
        flags = LE.u32(data, 0)
    }

    public var bytes: [UInt8] { LE.bytes(flags) + [version, log2VCMDQs, log2VSIDs, 0] }
    /// vCMDQs per VINTF.
    public var vcmdqs: Int { 1 << Int(log2VCMDQs) }
}

/// Decoded IOMMU features (docs/kernel-interface.md §5.1, §5.8, §6); nil where the registers cannot tell.
public struct IOMMUFeatures: Hashable, Sendable {
    public var nesting: Bool?
    public var coherent: Bool?
    public var ats: Bool?
    public var ril: Bool?
    public var pasid: Bool?
    public var ssidSize: Int?
    public var oas: Int?
    public var vcmdqs: Int?

    public init() {}

    /// From the ARM SMMUv3 payload.
    public static func armSMMUv3(_ data: [UInt8], maxPasidLog2: UInt8, capabilities: HWInfoCapabilities) -> IOMMUFeatures? {
        guard let info = ARMSMMUv3HWInfo(data) else { return nil }
        var f = IOMMUFeatures()
        // Necessary, not sufficient (errata): the NEST_PARENT probe decides (docs/kernel-interface.md §9.23).
        f.nesting = info.s1p && info.s2p
        // S2FWB makes a vIOMMU possible; without it, only the CANWBS firmware flag can (probe).
        f.coherent = info.s2fwb ? true : nil
        f.ats = info.ats && !capabilities.contains(.pciATSNotSupported)
        f.ril = info.ril
        f.ssidSize = info.ssidSize
        f.pasid = info.ssidSize > 0
        f.oas = info.oas ?? 48
        return f
    }

    /// From the Intel VT-d payload (or cap/ecap read from sysfs in the same layout).
    public static func intelVTd(_ data: [UInt8]) -> IOMMUFeatures? {
        guard let info = IntelVTdHWInfo(data) else { return nil }
        var f = IOMMUFeatures()
        f.nesting = info.nesting
        f.coherent = info.coherent
        f.ats = info.deviceTLB
        f.pasid = info.pasid
        f.ssidSize = info.pasidBits
        f.ril = false
        f.oas = info.addressWidth
        return f
    }
}

/// Little-endian fields of uAPI payloads.
public enum LE {
    public static func u32(_ bytes: [UInt8], _ offset: Int) -> UInt32 {
        var value: UInt32 = 0
        for i in 0..<4 where offset + i < bytes.count { value |= UInt32(bytes[offset + i]) << (8 * UInt32(i)) }
        return value
    }

    public static func u64(_ bytes: [UInt8], _ offset: Int) -> UInt64 {
        var value: UInt64 = 0
        for i in 0..<8 where offset + i < bytes.count { value |= UInt64(bytes[offset + i]) << (8 * UInt64(i)) }
        return value
    }

    public static func bytes(_ value: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: value >> (8 * UInt32($0))) } }
    public static func bytes(_ value: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64($0))) } }
}
