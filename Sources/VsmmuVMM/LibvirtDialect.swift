/// Which libvirt a domain is written for (docs/qemu-interface.md §3.4). They differ in how
/// an accelerated SMMUv3 is spelled, and in what an older release can say at all; a
/// dialect never gets a vSMMU it cannot express (an `<iommu model='smmuv3'>` without
/// accel is QEMU's *emulated* SMMUv3): it is refused and the dialect that can is named.
public enum LibvirtDialect: String, Sendable, CaseIterable {
    /// Upstream libvirt: `<driver pciBus accel ats ril ssidsize oas cmdqv>` on
    /// `<iommu model='smmuv3'>` since 12.7.0 (the schema qemu-check validates is 12.9's).
    case upstream
    /// NVIDIA's libvirt builds that KubeVirt's Grace support runs on (11.9.0+nvidia):
    /// the same element with `ssidSize` spelled in camel case (KubeVirt VEP 199).
    case nvidia

    /// A libvirt release, major.minor.
    public struct Version: Comparable, Sendable, CustomStringConvertible {
        public var major: Int
        public var minor: Int
        public init(_ major: Int, _ minor: Int) { self.major = major; self.minor = minor }
        public init?(_ text: String) {
            let parts = text.split(separator: ".").map { Int($0) }
            guard parts.count >= 2, parts.count <= 3, parts.allSatisfy({ $0 != nil }), let a = parts[0], let b = parts[1] else { return nil }
            self.init(a, b)
        }
        public static func < (a: Version, b: Version) -> Bool { (a.major, a.minor) < (b.major, b.minor) }
        public var description: String { "\(major).\(minor)" }
    }

    /// The release the output is written for when none is given.
    public var defaultVersion: Version { self == .upstream ? Version(12, 9) : Version(11, 9) }

    /// The domain-level `<iommufd enabled fdgroup>` the hand-over needs.
    public static let iommufdFDGroupSince = Version(12, 2)
    /// The accel attributes of `<iommu model='smmuv3'><driver>`.
    public static let smmuAccelSince = Version(12, 7)

    /// The smmuv3 `<driver>` attribute for the SubstreamID width.
    var ssidSizeAttribute: String { self == .upstream ? "ssidsize" : "ssidSize" }

    public var label: String {
        switch self {
        case .upstream: "upstream libvirt"
        case .nvidia: "NVIDIA's libvirt"
        }
    }

    /// Why this release cannot write the guest, or nil.
    func refusal(_ version: Version, acceleratedVSMMUs: [String]) -> String? {
        guard self == .upstream else { return nil }
        if version < Self.iommufdFDGroupSince {
            return "upstream libvirt \(version) has no domain-level <iommufd fdgroup> (since \(Self.iommufdFDGroupSince).0), which the hand-over passes the guest's iommufd through"
        }
        if version < Self.smmuAccelSince, !acceleratedVSMMUs.isEmpty {
            return "upstream libvirt \(version) cannot say accel=on (smmuv3 <driver accel> since \(Self.smmuAccelSince).0): its <iommu model='smmuv3'> is QEMU's emulated SMMUv3, not the accelerated vSMMU "
                + acceleratedVSMMUs.joined(separator: ", ") + " the plan describes; write it with --dialect upstream --libvirt-version \(Self.smmuAccelSince) (or later) or --dialect nvidia"
        }
        return nil
    }
}
