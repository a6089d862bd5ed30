import VsmmuKernel
import VsmmuModel

/// Guest-visible values (vSMMU features, bus numbers, identifiers, slots, guest addresses,
/// vSIDs, memory layout): part of the desired state even where no kernel object depends on
/// them, because the VMM is started with them (docs/contract.md §4).
extension Planner {
    /// `~` lines for what differs between what the guest saw (`before`) and `now`;
    /// `restart`: the guest runs, so its VM must be restarted to see them.
    public static func visibleChanges(_ before: GuestLayout, _ now: GuestLayout, restart: Bool = false) -> [ResourceChange] {
        var out: [ResourceChange] = []
        func add(_ type: String, _ name: String, _ summary: String, _ attributes: [AttributeChange]) {
            guard !attributes.isEmpty else { return }
            out.append(ResourceChange(action: .update, type: type, name: "\(now.guest)/\(name)",
                                      summary: summary + (restart ? " (the VM must be restarted)" : ""),
                                      attributes: attributes, forcedBy: nil, restartRequired: restart ? true : nil))
        }
        func diff<T: Equatable>(_ name: String, _ a: T, _ b: T, _ text: (T) -> String, into list: inout [AttributeChange]) {
            if a != b { list.append(AttributeChange(name: name, from: text(a), to: text(b))) }
        }
        func onOff(_ b: Bool) -> String { b ? "on" : "off" }
        func plain<T>(_ v: T) -> String { "\(v)" }
        let oldV = Dictionary(before.vsmmus.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        for v in now.vsmmus {
            guard let o = oldV[v.name] else { continue }
            var a: [AttributeChange] = []
            diff("ats", o.ats, v.ats, onOff, into: &a)
            diff("ril", o.ril, v.ril, onOff, into: &a)
            diff("ssidSize", o.ssidSize, v.ssidSize, plain, into: &a)
            diff("oas", o.oas, v.oas, plain, into: &a)
            diff("cmdqv", o.cmdqv, v.cmdqv, onOff, into: &a)
            diff("busNumber", o.busNumber, v.busNumber, Allocator.hex2, into: &a)
            diff("identifier", o.identifier, v.identifier, plain, into: &a)
            add("vsmmu", v.name, "\(v.viommuType) vIOMMU on \(v.physical)", a)
        }
        let oldD = Dictionary(before.devices.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        for d in now.devices {
            guard let o = oldD[d.name] else { continue }
            var a: [AttributeChange] = []
            diff("slot", o.slot, d.slot, Allocator.hex2, into: &a)
            diff("guestAddress", o.guestAddress, d.guestAddress, plain, into: &a)
            diff("vsid", o.vsid, d.vsid, { $0.map { YAMLText.hex($0) } ?? "none" }, into: &a)
            add("device", d.name, d.host, a)
        }
        let oldM = Dictionary((before.memory ?? []).map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        for m in now.memory ?? [] {
            guard let o = oldM[m.name] else { continue }
            var a: [AttributeChange] = []
            diff("guestAddress", o.guestAddress, m.guestAddress, { YAMLText.hex($0) }, into: &a)
            diff("size", o.size, m.size, { YAMLText.size($0) }, into: &a)
            diff("backing", o.backing, m.backing, plain, into: &a)
            add("memory", m.name, "\(YAMLText.size(m.size)) \(m.backing) at \(YAMLText.hex(m.guestAddress))", a)
        }
        return out
    }
}
