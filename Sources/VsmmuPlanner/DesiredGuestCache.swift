import Synchronization
import VsmmuKernel
import VsmmuModel

/// What `DesiredState.build` made of each guest, reused while every input it came from is
/// the same: the agent's reconcile plans the same topology on the same host every interval.
///
/// An entry is used only when all of these are equal to what it was made from:
/// - the host's facts the build reads (`HostFacts`: each IOMMU's name, type and nesting,
///   each PCI device's address, IOMMU and VFIO driver, in order); any change empties the cache;
/// - the guest as the topology declares it (`Guest`, every field, marks included);
/// - the guest's previous allocation, which must hold the very values the entry allocated
///   (allocating again from them gives them back: the allocator's fixed point);
/// - the guest's vSMMUs as the validator resolved them.
/// Owners are never cached (a system account can change): they are resolved on every build.
/// Debug builds check every reuse against building again.
final class DesiredGuestCache: Sendable {
    static let shared = DesiredGuestCache()

    struct HostFacts: Equatable, Sendable {
        struct IOMMU: Equatable, Sendable { var name: String; var type: IOMMUType; var nesting: Bool }
        struct Device: Equatable, Sendable { var address: PCIAddress; var iommu: String?; var vfioDriver: String }
        var iommus: [IOMMU]
        var devices: [Device]

        init(_ host: HostDescription) {
            iommus = host.iommus.map { IOMMU(name: $0.name, type: $0.type, nesting: $0.nesting) }
            devices = host.pciDevices.map { Device(address: $0.address, iommu: $0.iommu, vfioDriver: $0.effectiveVFIODriver) }
        }
    }

    struct Entry: Sendable {
        var guest: Guest
        var allocation: GuestAllocation
        var resolved: [ResolvedVSMMU?]
        /// Without its owner.
        var desired: DesiredGuest
    }

    /// Guests of every topology planned on one host (names are unique per host).
    private let state = Mutex<(host: HostFacts?, entries: [String: Entry])>((nil, [:]))

    /// The entries made on a host with these facts (none after a change of host).
    func entries(for host: HostFacts) -> [String: Entry] {
        state.withLock { $0.host == host ? $0.entries : [:] }
    }

    /// Adds (or replaces) the guests of one build; another host's entries go.
    func store(_ made: [String: Entry], for host: HostFacts) {
        state.withLock { s in
            // A bound for a host whose guests keep changing names (tests): start again.
            if s.host != host || s.entries.count > 100_000 { s = (host, [:]) }
            s.entries.merge(made) { _, new in new }
        }
    }
}
