import VsmmuKernel
import VsmmuModel
import VsmmuPlanner
import VsmmuVMM

/// The plan as people read it: terraform-like lines, then the summary.
enum PlanText {
    static func render(_ plan: Plan, ops: Bool) -> String {
        var out = ""
        let where_ = "host \(plan.host)\(plan.simulated ? " (simulated)" : ""), topology \(plan.topology.isEmpty ? plan.topologyFile : plan.topology)"
        if plan.changes.isEmpty {
            if plan.operations.isEmpty {
                return "No changes. The kernel holds what \(plan.topologyFile) asks for on \(where_).\n" + others(plan) + lifecycle(plan)
            }
        } else {
            out += "vsmmu will make these changes on \(where_):\n" + others(plan) + "\n"
            let width = plan.changes.map { "\($0.type) \($0.name)".count }.max() ?? 0
            for c in plan.changes {
                let symbol = c.action.symbol
                let pad = String(repeating: " ", count: 3 - symbol.count)
                let address = "\(c.type) \(c.name)"
                var line = "\(pad)\(symbol) \(address)\(String(repeating: " ", count: width - address.count))  \(c.summary)"
                for a in c.attributes { line += "; \(a.name): \(a.from ?? "none") → \(a.to ?? "none")" }
                if let f = c.forcedBy { line += " (forces replacement: \(f))" }
                out += line + "\n"
            }
            out += "\n"
        }
        if ops {
            out += "Operations (\(plan.operations.count), in order; \(plan.operations.filter(\.isMutating).count) change the kernel):\n"
            let callWidth = plan.operations.map(\.call.count).max() ?? 0
            let numWidth = String(plan.operations.count).count
            for op in plan.operations {
                let (args, yields) = op.arguments
                let n = String(op.index)
                var line = "  \(String(repeating: " ", count: numWidth - n.count))\(n)  \(op.call)\(String(repeating: " ", count: callWidth - op.call.count))  \(args)"
                if !yields.isEmpty { line += " -> \(yields)" }
                if !op.dependsOn.isEmpty { line += "  [after \(op.dependsOn.map(String.init).joined(separator: ","))]" }
                out += line + "\n"
            }
            out += "\n"
        }
        for g in plan.layout where (g.lockedMemory ?? 0) > 0 {
            out += "Locked memory: guest \(g.guest)'s VMM pins \(YAMLText.size(g.lockedMemory ?? 0)) of guest RAM (RLIMIT_MEMLOCK at least that plus what the VMM maps besides, firmware and ROMs, or CAP_IPC_LOCK; `vsmmu launch` raises it to guest RAM + \(YAMLText.size(VMMLockedMemory.margin))).\n"
        }
        out += facts(plan)
        out += "Plan: \(plan.toAdd) to add, \(plan.toChange) to change, \(plan.toDestroy) to destroy.\n"
        return out + lifecycle(plan)
    }

    /// Per guest the plan changes: placement, `auto` values, peer paths, lifecycle limits.
    static func facts(_ plan: Plan) -> String {
        let changed = Set(plan.changes.map { $0.name.split(separator: "/").first.map(String.init) ?? $0.name })
        var out = ""
        for f in plan.facts ?? [] where changed.contains(f.guest) && !f.isEmpty {
            out += "Guest \(f.guest):\n"
            for line in f.lines { out += "  \(line)\n" }
        }
        return out.isEmpty ? "" : out + "\n"
    }

    /// What other topologies hold on this host (docs/contract.md §7): never part of this plan.
    static func others(_ plan: Plan) -> String {
        guard let o = plan.otherTopologies, !o.isEmpty else { return "" }
        let total = o.values.reduce(0, +)
        let list = o.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: ", ")
        return "Other topologies hold \(total) guest\(total == 1 ? "" : "s") on this host (\(list)); this plan leaves them alone.\n"
    }

    /// One line per guest a VMM holds (docs/contract.md §6): vsmmu plans none of its
    /// objects, and says what the running checks found.
    static func lifecycle(_ plan: Plan) -> String {
        var out = ""
        for s in plan.guests ?? [] where s.state == .running || s.state == .handedOver {
            out += "Guest \(s.name) is \(s.state == .running ? "running" : "handed over"): pid \(s.pid ?? 0) (\(s.command ?? "?")) holds its devices; vsmmu plans none of its objects.\n"
            for n in s.notes { out += "  \(n)\n" }
        }
        return out
    }
}

/// The plan for pipelines: versioned, keys sorted, stable across runs.
enum PlanJSON {
    static func render(_ plan: Plan) -> JSONValue {
        let changes: [JSONValue] = plan.changes.map { c in
            var o: [String: JSONValue] = ["action": .string(c.action.rawValue), "type": .string(c.type), "name": .string(c.name),
                                          "summary": .string(c.summary)]
            if let f = c.forcedBy { o["forcedBy"] = .string(f) }
            if let r = c.replacement {
                var f: [String: JSONValue] = ["attribute": .string(r.attribute)]
                if let from = r.from { f["from"] = .string(from) }
                if let to = r.to { f["to"] = .string(to) }
                if let reason = r.reason { f["reason"] = .string(reason) }
                o["replacement"] = .object(f)
            }
            if c.restartRequired == true { o["restartRequired"] = .bool(true) }
            if !c.attributes.isEmpty {
                o["attributes"] = .array(c.attributes.map { a in
                    ["name": .string(a.name), "from": a.from.map(JSONValue.string) ?? .null, "to": a.to.map(JSONValue.string) ?? .null]
                })
            }
            return .object(o)
        }
        let ops: [JSONValue] = plan.operations.map { op in
            let (args, yields) = op.arguments
            return ["index": .int(Int64(op.index)), "call": .string(op.call), "resource": .string(op.resource),
                    "arguments": .string(args), "yields": yields.isEmpty ? .null : .string(yields),
                    "mutating": .bool(op.isMutating), "dependsOn": .array(op.dependsOn.map { .int(Int64($0)) })]
        }
        let layout: [JSONValue] = plan.layout.map { g in
            ["guest": .string(g.guest),
             "vsmmus": .array(g.vsmmus.map { v in
                 ["name": .string(v.name), "physical": .string(v.physical), "busNumber": .int(Int64(v.busNumber)),
                  "identifier": .int(Int64(v.identifier)), "viommuType": .string(v.viommuType), "ats": .bool(v.ats), "ril": .bool(v.ril),
                  "ssidSize": .int(Int64(v.ssidSize)), "oas": .int(Int64(v.oas)), "cmdqv": .bool(v.cmdqv)]
             }),
             "lockedMemory": g.lockedMemory.map { .uint($0) } ?? .null,
             "devices": .array(g.devices.map { d in
                 ["name": .string(d.name), "host": .string(d.host), "vsmmu": d.vsmmu.map(JSONValue.string) ?? .null, "slot": .int(Int64(d.slot)),
                  "guestAddress": .string(d.guestAddress), "vsid": d.vsid.map { .string(YAMLText.hex($0)) } ?? .null]
             })]
        }
        return ["formatVersion": .int(Int64(Plan.formatVersion)), "topology": .string(plan.topology), "topologyFile": .string(plan.topologyFile),
                "host": .string(plan.host), "simulated": .bool(plan.simulated), "fingerprint": .string(plan.fingerprint),
                "summary": ["add": .int(Int64(plan.toAdd)), "change": .int(Int64(plan.toChange)), "destroy": .int(Int64(plan.toDestroy))],
                "changes": .array(changes),
                "otherTopologies": .object((plan.otherTopologies ?? [:]).mapValues { .int(Int64($0)) }), "operations": .array(ops), "layout": .array(layout),
                "facts": .array((plan.facts ?? []).map(factsJSON)),
                "guests": .array((plan.guests ?? []).map { s in
                    var o: [String: JSONValue] = ["name": .string(s.name), "state": s.state.map { .string($0.rawValue) } ?? .null]
                    if let pid = s.pid { o["pid"] = .int(Int64(pid)) }
                    if let c = s.command { o["command"] = .string(c) }
                    if let v = s.vmm { o["vmm"] = .string(v.rawValue) }
                    if !s.notes.isEmpty { o["notes"] = .array(s.notes.map { .string($0) }) }
                    return .object(o)
                })]
    }
}

extension PlanJSON {
    /// A guest's facts (GuestFacts), keys sorted like the rest of the plan.
    static func factsJSON(_ f: GuestFacts) -> JSONValue {
        func str(_ s: String?) -> JSONValue { s.map(JSONValue.string) ?? .null }
        return ["guest": .string(f.guest),
                "placement": .array(f.placement.map { d in
                    ["device": .string(d.device), "host": .string(d.host), "requested": .string(d.requested), "vsmmu": str(d.vsmmu),
                     "physical": str(d.physical), "reason": .string(d.reason)]
                }),
                "autos": .array(f.autos.map { a in ["subject": .string(a.subject), "value": .string(a.value), "reason": .string(a.reason)] }),
                "peers": .array(f.peers.map { p in
                    ["device": .string(p.device), "peer": .string(p.peer), "vsmmu": str(p.vsmmu), "route": .string(p.route.rawValue),
                     "text": .string(p.text),
                     "kernelParameter": p.kernelParameter.map { k in ["value": .string(k), "takesEffect": "at reboot"] } ?? .null,
                     "bridges": .array(p.bridges.map { b in
                         ["address": .string(b.address), "acsControl": b.acsControl.map { .string(YAMLText.hex(UInt64($0), width: 4)) } ?? .null,
                          "unknown": .bool(b.unknown), "redirects": .array(b.redirects.map { .string($0) })]
                     })]
                }),
                "lifecycle": .array(f.lifecycle.map { l in
                    ["kind": .string(l.kind.rawValue), "vsmmus": .array(l.vsmmus.map { .string($0) }), "device": str(l.device), "text": .string(l.text)]
                })]
    }
}
