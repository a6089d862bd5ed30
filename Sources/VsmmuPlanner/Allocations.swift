import VsmmuKernel
import VsmmuModel

/// Values vsmmu chooses for the guest's PCI layout: expander bus numbers, IORT
/// identifiers and root-port slots. Kept in the state directory so that they never
/// move while their device stays in the topology (docs/contract.md §2 "Derived values").
public struct Allocations: Codable, Hashable, Sendable {
    public var formatVersion = 1
    public var guests: [String: GuestAllocation] = [:]
    public init() {}

    /// The guests a topology other than `topology` declared, with that topology's name
    /// (docs/contract.md §7). A guest with no recorded owner was recorded by a vsmmu from
    /// before ownership, when one topology held the whole host: it goes with the one planning.
    public func owners(otherThan topology: String) -> [String: String] {
        var out: [String: String] = [:]
        for (g, a) in guests { if let o = a.topology, o != topology { out[g] = o } }
        return out
    }
}

public struct GuestAllocation: Codable, Hashable, Sendable {
    /// The `metadata.name` of the topology that declared the guest: only that topology
    /// plans it (nil: recorded before ownership existed).
    public var topology: String?
    /// What the guest saw when its topology was last applied (every guest-visible value):
    /// a change to any of them is a change of the plan even where no kernel object moves.
    public var layout: GuestLayout?
    /// The guest's facts when its topology was last planned (`vsmmu show` prints them).
    public var facts: GuestFacts?
    public var vsmmus: [String: VSMMUAllocation] = [:]
    /// Root ports on pcie.0 for devices with no vSMMU.
    public var rootPorts = PortAllocation()
    public init() {}
}

extension GuestAllocation {
    /// The same allocated values (what the guest saw and its facts aside).
    func sameValues(_ other: GuestAllocation) -> Bool { vsmmus == other.vsmmus && rootPorts == other.rootPorts }

    /// Whether `previous` holds exactly these values: allocating the guest again from it
    /// keeps every one of them (the allocator's fixed point).
    func keeps(_ previous: GuestAllocation?) -> Bool { previous.map(sameValues) ?? false }
}

public struct VSMMUAllocation: Codable, Hashable, Sendable {
    public var busNumber: Int
    public var identifier: Int
    public var ports = PortAllocation()
}

/// Root-port slots on one bus. A removed device's slot stays as an empty root port
/// (a hole) while a later slot is in use, because firmware numbers the buses behind
/// root ports in slot order: dropping it would renumber every later device (its
/// guest address and vSID). A new device fills the lowest hole first.
public struct PortAllocation: Codable, Hashable, Sendable {
    public var slots: [String: Int] = [:]
    public var holes: [Int] = []
    public init() {}

    /// Every root port present on the bus, in slot order (devices and holes).
    public var ports: [Int] { (Array(slots.values) + holes).sorted() }

    /// The bus number behind the root port at `slot`, on a bus numbered `base`.
    public func secondaryBus(of slot: Int, base: Int) -> Int {
        Self.secondaryBus(of: slot, base: base, ports: ports)
    }

    /// The same, with `ports` computed once for every device on the bus.
    static func secondaryBus(of slot: Int, base: Int, ports: [Int]) -> Int {
        base + 1 + (ports.firstIndex(of: slot) ?? 0)
    }
}

public enum Allocator {
    public static let slotCount = 32

    /// Allocations for `topology`, keeping every value of `previous` that still applies.
    public static func allocate(_ topology: Topology, previous: Allocations) throws(VsmmuError) -> Allocations {
        var next = Allocations()
        for guest in topology.guests {
            next.guests[guest.name] = try allocate(guest, previous: previous.guests[guest.name] ?? GuestAllocation())
            next.guests[guest.name]?.topology = topology.name
        }
        return next
    }

    /// `what` names the bus in an error only (made then, not for every guest).
    static func allocatePorts(_ devices: [Device], previous: PortAllocation, where what: @autoclosure () -> String) throws(VsmmuError) -> PortAllocation {
        var out = PortAllocation()
        out.slots.reserveCapacity(devices.count)
        var taken = Set<Int>()
        for d in devices { if let s = d.slot { out.slots[d.name] = s; taken.insert(s) } }
        for d in devices where d.slot == nil {
            if let s = previous.slots[d.name], !taken.contains(s) { out.slots[d.name] = s; taken.insert(s) }
        }
        var holes = Set(previous.holes)
        for (name, slot) in previous.slots where out.slots[name] == nil { holes.insert(slot) }
        holes.subtract(taken)
        for d in devices where out.slots[d.name] == nil {
            let slot: Int
            if let h = holes.min() {
                slot = h
                holes.remove(h)
            } else {
                guard let free = (0..<slotCount).first(where: { !taken.contains($0) && !holes.contains($0) }) else {
                    throw VsmmuError(.allocation, "\(what()) has no free root-port slot left for device '\(d.name)' (\(slotCount) per bus)")
                }
                slot = free
            }
            out.slots[d.name] = slot
            taken.insert(slot)
        }
        // Holes matter only below the highest slot in use.
        let highest = taken.max() ?? -1
        out.holes = holes.filter { $0 < highest }.sorted()
        return out
    }

    static func allocate(_ guest: Guest, previous: GuestAllocation) throws(VsmmuError) -> GuestAllocation {
        var out = GuestAllocation()
        out.rootPorts = try allocatePorts(guest.devices, previous: previous.rootPorts, where: "pcie.0 of guest '\(guest.name)'")
        let rootNeed = 1 + out.rootPorts.ports.count

        // Identifiers: explicit, else kept, else the lowest free.
        var identifiers = Set(guest.vsmmus.compactMap(\.identifier))
        var ports: [String: PortAllocation] = [:]
        for s in guest.vsmmus {
            ports[s.name] = try allocatePorts(s.devices, previous: previous.vsmmus[s.name]?.ports ?? PortAllocation(), where: "vSMMU '\(s.name)' of guest '\(guest.name)'")
        }
        var ids: [String: Int] = [:]
        for s in guest.vsmmus {
            if let id = s.identifier { ids[s.name] = id; continue }
            if let p = previous.vsmmus[s.name]?.identifier, !identifiers.contains(p) {
                ids[s.name] = p; identifiers.insert(p)
            }
        }
        // From 1: QEMU numbers IORT nodes in one sequence with the ITS group at 0, and with
        // accel=off it gives the SMMUs 1, 2, … in creation order whatever identifier= says
        // (seen with QEMU 11.1.3, scripts/qemu-check.sh); dense values from 1, emitted in
        // identifier order, keep the plan's numbers and the guest's IORT the same.
        for s in guest.vsmmus where ids[s.name] == nil {
            let id = (1...).first { !identifiers.contains($0) }!
            ids[s.name] = id
            identifiers.insert(id)
        }

        // Bus numbers: explicit, else kept, else placed in a free window.
        var needs: [String: Int] = [:]
        for (name, p) in ports { needs[name] = 1 + p.slots.count + p.holes.count }
        func need(_ name: String) -> Int { needs[name] ?? 1 }
        var buses: [String: Int] = [:]
        let explicit = Set(guest.vsmmus.compactMap(\.busNumber))
        for s in guest.vsmmus { if let b = s.busNumber { buses[s.name] = b } }
        for s in guest.vsmmus where buses[s.name] == nil {
            if let b = previous.vsmmus[s.name]?.busNumber, !explicit.contains(b), !buses.values.contains(b) { buses[s.name] = b }
        }
        for s in guest.vsmmus where buses[s.name] == nil {
            let n = need(s.name)
            let used = buses.map { (name, b) in (b, b + need(name) - 1) }
            func free(_ lo: Int, _ hi: Int) -> Bool {
                lo >= rootNeed && hi <= 255 && !used.contains { $0.0 <= hi && lo <= $0.1 }
            }
            var chosen: Int?
            // Aligned windows leave room for each vSMMU to grow; fall back to tighter ones.
            var window = max(16, 1 << (64 - UInt64(max(1, n - 1)).leadingZeroBitCount))
            while chosen == nil && window >= n {
                var b = window
                while b + window - 1 <= 255 {
                    if free(b, b + window - 1) && !buses.values.contains(where: { $0 > b && $0 < b + window }) { chosen = b; break }
                    b += window
                }
                window /= 2
            }
            if chosen == nil { chosen = (rootNeed...max(rootNeed, 256 - n)).first { free($0, $0 + n - 1) } }
            guard let b = chosen else {
                throw VsmmuError(.allocation, "guest '\(guest.name)' has no room for the expander bus of vSMMU '\(s.name)' (it needs \(n) bus numbers)",
                                      hint: "fewer devices or vSMMUs, or explicit busNumber values with room between them")
            }
            buses[s.name] = b
        }

        // QEMU's pxb rule on the final numbers: every range holds its bus and its ports.
        let sorted = guest.vsmmus.map { ($0.name, buses[$0.name]!) }.sorted { $0.1 < $1.1 }
        for (i, (name, b)) in sorted.enumerated() {
            let next = i + 1 < sorted.count ? sorted[i + 1].1 : 256
            if next - b < need(name) {
                throw VsmmuError(.allocation, "vSMMU '\(name)' of guest '\(guest.name)' on bus \(hex2(b)) needs \(need(name)) bus numbers but has \(next - b) before \(next > 255 ? "the end" : hex2(next))",
                                      hint: "bus numbers of existing vSMMUs never move (their vSIDs would change); give this vSMMU an explicit busNumber with more room, or move devices to another vSMMU")
            }
        }
        if let lowest = sorted.first, lowest.1 < rootNeed {
            throw VsmmuError(.allocation, "pcie.0 of guest '\(guest.name)' needs \(rootNeed) bus numbers but vSMMU '\(lowest.0)' starts at \(hex2(lowest.1))")
        }
        for s in guest.vsmmus {
            out.vsmmus[s.name] = VSMMUAllocation(busNumber: buses[s.name]!, identifier: ids[s.name]!, ports: ports[s.name]!)
        }
        return out
    }

    /// A bus or slot number as QEMU and libvirt write it: 0x and at least two digits.
    public static func hex2(_ v: Int) -> String { YAMLText.hex(UInt64(v), width: 2) }
}
