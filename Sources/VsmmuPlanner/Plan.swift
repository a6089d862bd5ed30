import VsmmuKernel
import VsmmuModel

public struct AttributeChange: Codable, Hashable, Sendable {
    public var name: String
    public var from: String?
    public var to: String?
}

/// One resource line of a plan, as terraform prints them.
public struct ResourceChange: Codable, Hashable, Sendable {
    public enum Action: String, Codable, Sendable {
        case create, update, destroy, replace
        public var symbol: String {
            switch self {
            case .create: return "+"
            case .update: return "~"
            case .destroy: return "-"
            case .replace: return "-/+"
            }
        }
    }
    public var action: Action
    /// `guest`, `device`, `stage2`, `memory`, `vsmmu`, `vdevice`.
    public var type: String
    /// e.g. `vm1/gpu0`.
    public var name: String
    public var summary: String
    public var attributes: [AttributeChange]
    /// For a replacement: the attribute that forces it (terraform's "forces replacement").
    public var forcedBy: String?

    public var address: String { "\(type) \(name)" }
}

public struct Plan: Codable, Sendable {
    public static let formatVersion = 1
    public var formatVersion = Plan.formatVersion
    public var topology: String
    public var topologyFile: String
    public var host: String
    public var simulated: Bool
    /// Digest of the observed state the plan was made from (see `ObservedState.fingerprint`).
    public var fingerprint: String
    public var changes: [ResourceChange]
    public var operations: [PlanStep]
    /// Allocations to record when the plan is applied.
    public var allocations: Allocations
    /// Guest layout the plan predicts (for review; qemu-args uses the same values).
    public var layout: [GuestLayout]
    /// The lifecycle state of the topology's guests that vsmmu holds or a VMM runs (nil in
    /// plans saved by an older vsmmu).
    public var guests: [GuestStatus]?

    /// A plan of bare operations (a launch's release of a guest's held graph).
    public init(releasing operations: [PlanStep], allocations: Allocations) {
        topology = ""; topologyFile = ""; host = ""; simulated = false; fingerprint = ""
        changes = []; self.operations = operations; self.allocations = allocations; layout = []
    }

    init(topology: String, topologyFile: String, host: String, simulated: Bool, fingerprint: String, changes: [ResourceChange],
         operations: [PlanStep], allocations: Allocations, layout: [GuestLayout]) {
        self.topology = topology; self.topologyFile = topologyFile; self.host = host; self.simulated = simulated
        self.fingerprint = fingerprint; self.changes = changes; self.operations = operations; self.allocations = allocations; self.layout = layout
    }

    public var isEmpty: Bool { changes.isEmpty && operations.isEmpty }
    public var toAdd: Int { changes.filter { $0.action == .create || $0.action == .replace }.count }
    public var toChange: Int { changes.filter { $0.action == .update }.count }
    public var toDestroy: Int { changes.filter { $0.action == .destroy || $0.action == .replace }.count }
}

public struct GuestLayout: Codable, Hashable, Sendable {
    public struct DeviceLayout: Codable, Hashable, Sendable {
        public var name: String
        public var host: String
        public var vsmmu: String?
        public var slot: Int
        public var guestAddress: String
        public var vsid: UInt64?
    }
    public struct VSMMULayout: Codable, Hashable, Sendable {
        public var name: String
        public var physical: String
        public var busNumber: Int
        public var identifier: Int
        public var viommuType: String
        public var ats: Bool
        public var ril: Bool
        public var ssidSize: Int
        public var oas: Int
        public var cmdqv: Bool
    }
    public var guest: String
    public var vsmmus: [VSMMULayout]
    public var devices: [DeviceLayout]
    /// Bytes of guest RAM the guest's VMM pins (all of it is mapped for DMA): its
    /// RLIMIT_MEMLOCK must allow them unless it has CAP_IPC_LOCK (nil in older plans).
    public var lockedMemory: UInt64?
}
