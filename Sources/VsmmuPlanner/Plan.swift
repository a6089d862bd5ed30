import VsmmuKernel
import VsmmuModel

public struct AttributeChange: Codable, Hashable, Sendable {
    public var name: String
    public var from: String?
    public var to: String?
}

/// What forces a replacement, as a field (terraform's "forces replacement"): the attribute
/// that changes and its values, or for a state rather than a value, the attribute it
/// concerns and the reason (`binding-lost`, `context-lost`, ...).
public struct Replacement: Codable, Hashable, Sendable {
    public var attribute: String
    public var from: String?
    public var to: String?
    /// A stable word for what forces it where no value changes.
    public var reason: String?
    /// The plan's words for it.
    public var text: String

    /// An attribute's value changes: `name (from → to)`.
    public static func change(_ attribute: String, _ from: String, _ to: String) -> Replacement {
        Replacement(attribute: attribute, from: from, to: to, reason: nil, text: "\(attribute) (\(from) → \(to))")
    }

    /// A state forces it: `reason` for scripts, `text` for people.
    public static func state(_ attribute: String, reason: String, text: String) -> Replacement {
        Replacement(attribute: attribute, from: nil, to: nil, reason: reason, text: text)
    }
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
    /// The same as fields (nil in plans saved by an older vsmmu).
    public var replacement: Replacement?
    /// The guest runs with the old value: its VM must be restarted to see the change
    /// (nil: no; optional for plans saved by an older vsmmu).
    public var restartRequired: Bool?

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
    /// Worked out when read: a reconcile that only looks for drift never reads it, and at
    /// 10,000 devices it was a fifth of a converged re-plan (docs/live-speed.md §4.2).
    public var fingerprint: String {
        get { fingerprintSource.text }
        set { fingerprintSource = .text(newValue) }
    }
    var fingerprintSource: FingerprintSource
    public var changes: [ResourceChange]
    public var operations: [PlanStep]
    /// Allocations to record when the plan is applied.
    public var allocations: Allocations
    /// Guest layout the plan predicts (for review; qemu-args uses the same values).
    public var layout: [GuestLayout]
    /// The lifecycle state of the topology's guests that vsmmu holds or a VMM runs (nil in
    /// plans saved by an older vsmmu).
    public var guests: [GuestStatus]?
    /// Guests that other topologies hold on this host, per topology name: the plan leaves
    /// them alone (nil in plans saved by an older vsmmu).
    public var otherTopologies: [String: Int]?
    /// The state directory the plan was made on: a saved plan applies there only.
    public var stateDir: String?
    /// Per guest: placement, `auto` values, peer paths, lifecycle limits (nil in plans saved
    /// by an older vsmmu).
    public var facts: [GuestFacts]?

    enum CodingKeys: String, CodingKey {
        case formatVersion, topology, topologyFile, host, simulated, fingerprintSource = "fingerprint", changes, operations,
             allocations, layout, guests, otherTopologies, stateDir, facts
    }

    /// A plan of bare operations (a launch's release of a guest's held graph).
    public init(releasing operations: [PlanStep], allocations: Allocations) {
        topology = ""; topologyFile = ""; host = ""; simulated = false; fingerprintSource = .text("")
        changes = []; self.operations = operations; self.allocations = allocations; layout = []
    }

    init(topology: String, topologyFile: String, host: String, simulated: Bool, fingerprint: FingerprintSource, changes: [ResourceChange],
         operations: [PlanStep], allocations: Allocations, layout: [GuestLayout]) {
        self.topology = topology; self.topologyFile = topologyFile; self.host = host; self.simulated = simulated
        self.fingerprintSource = fingerprint; self.changes = changes; self.operations = operations; self.allocations = allocations; self.layout = layout
    }

    public var isEmpty: Bool { changes.isEmpty && operations.isEmpty }
    /// Nothing to do but restart running VMs (their guests saw values that changed).
    public var onlyAwaitsRestart: Bool { operations.isEmpty && !changes.isEmpty && changes.allSatisfy { $0.restartRequired == true } }
    public var toAdd: Int { changes.filter { $0.action == .create || $0.action == .replace }.count }
    public var toChange: Int { changes.filter { $0.action == .update }.count }
    public var toDestroy: Int { changes.filter { $0.action == .destroy || $0.action == .replace }.count }
}

/// A plan's fingerprint: its text, or the observation it is the digest of (a value: the
/// digest is the same whenever it is worked out). Saved as the text.
enum FingerprintSource: Codable, Sendable {
    case text(String)
    case observed(ObservedState)

    var text: String {
        switch self {
        case .text(let s): return s
        case .observed(let o): return o.fingerprint
        }
    }

    init(from decoder: Decoder) throws { self = .text(try decoder.singleValueContainer().decode(String.self)) }

    func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(text)
    }
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
    /// A guest RAM region as the guest sees it.
    public struct MemoryLayout: Codable, Hashable, Sendable {
        public var name: String
        public var guestAddress: UInt64
        public var size: UInt64
        public var backing: String
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
    /// nil in plans saved by an older vsmmu.
    public var memory: [MemoryLayout]?
    /// Bytes of guest RAM the guest's VMM pins (all of it is mapped for DMA): its
    /// RLIMIT_MEMLOCK must allow them unless it has CAP_IPC_LOCK (nil in older plans).
    public var lockedMemory: UInt64?
}
