import VsmmuKernel

/// What one step makes ready for later ones: a step that `needs` a token depends on the
/// last earlier step that `gives` it (when the plan has one: many needs are conditional,
/// e.g. "the old vIOMMU is gone" only when one is torn down). Names are `guest`,
/// `guest/device`, `guest/vsmmu`, `guest/region` or `guest/iommu`, as the plan prints them.
enum Dep: Hashable, Sendable {
    // a guest's iommufd context
    case iommufd(guest: String)
    case ioas(guest: String)
    case ioasGone(guest: String)
    // a PCI address moving between drivers (docs/kernel-interface.md §8)
    case overrideVFIO(PCIAddress)
    case unboundFromHost(PCIAddress)
    case onVFIO(PCIAddress)
    case cdevClosed(PCIAddress)
    case unboundFromVFIO(PCIAddress)
    case overrideCleared(PCIAddress)
    case backOnHost(PCIAddress)
    // a device (guest/device)
    case cdevOpen(device: String)
    case bound(device: String)
    case detached(device: String)
    case onStage2(device: String)
    case vdevice(device: String)
    // a stage-2 HWPT (guest/iommu)
    case stage2(String)
    case stage2Gone(String)
    // guest memory (guest/region)
    case memoryCreated(String)
    case unmapped(String)
    case released(String)
    // a vSMMU (guest/vsmmu)
    case viommu(vsmmu: String)
    case bypass(vsmmu: String)
    case offNested(vsmmu: String)
    case nestedGone(vsmmu: String)
    case vdevicesGone(vsmmu: String)
    case eventQueuesGone(vsmmu: String)
    case viommuGone(vsmmu: String)

    /// The token without its names (for the check that every kind needed is given).
    enum Kind: Int, CaseIterable, Hashable, Sendable {
        case iommufd, ioas, ioasGone, overrideVFIO, unboundFromHost, onVFIO, cdevClosed, unboundFromVFIO, overrideCleared,
             backOnHost, cdevOpen, bound, detached, onStage2, vdevice, stage2, stage2Gone, memoryCreated, unmapped, released,
             viommu, bypass, offNested, nestedGone, vdevicesGone, eventQueuesGone, viommuGone
    }

    var kind: Kind {
        switch self {
        case .iommufd: return .iommufd
        case .ioas: return .ioas
        case .ioasGone: return .ioasGone
        case .overrideVFIO: return .overrideVFIO
        case .unboundFromHost: return .unboundFromHost
        case .onVFIO: return .onVFIO
        case .cdevClosed: return .cdevClosed
        case .unboundFromVFIO: return .unboundFromVFIO
        case .overrideCleared: return .overrideCleared
        case .backOnHost: return .backOnHost
        case .cdevOpen: return .cdevOpen
        case .bound: return .bound
        case .detached: return .detached
        case .onStage2: return .onStage2
        case .vdevice: return .vdevice
        case .stage2: return .stage2
        case .stage2Gone: return .stage2Gone
        case .memoryCreated: return .memoryCreated
        case .unmapped: return .unmapped
        case .released: return .released
        case .viommu: return .viommu
        case .bypass: return .bypass
        case .offNested: return .offNested
        case .nestedGone: return .nestedGone
        case .vdevicesGone: return .vdevicesGone
        case .eventQueuesGone: return .eventQueuesGone
        case .viommuGone: return .viommuGone
        }
    }
}

/// The token kinds a plan's steps needed and gave (for the check that they match).
struct DependencyKinds: Sendable {
    var needed: Set<Dep.Kind> = []
    var given: Set<Dep.Kind> = []
}
