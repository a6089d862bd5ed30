import Foundation
import VsmmuKernel
import VsmmuModel
import VsmmuPlanner

/// An apply's progress as an operator reads it (terraform's): a resource's line when its
/// first step starts, and one when its last step is done, with the time it took and the
/// ids the kernel gave it. The per-call lines are the executor's `calls`.
struct ResourceLines {
    var last: [String: Int] = [:]
    var started: [String: Date] = [:]
    let verbs: [String: (start: String, end: String)]

    init(_ plan: Plan) {
        for op in plan.operations { last[op.resource] = op.index }
        var v: [String: (String, String)] = [:]
        for c in plan.changes {
            switch c.action {
            case .create: v[c.address] = ("Creating...", "Creation complete")
            case .destroy: v[c.address] = ("Destroying...", "Destruction complete")
            case .replace: v[c.address] = ("Replacing...", "Replacement complete")
            case .update: v[c.address] = ("Modifying...", "Modifications complete")
            }
        }
        verbs = v
    }

    /// A resource's own change, else its guest's (a destroyed guest's vSMMUs), else a modification.
    func verb(_ r: String) -> (start: String, end: String) {
        if let v = verbs[r] { return v }
        if let name = r.split(separator: " ", maxSplits: 1).last, let guest = name.split(separator: "/").first, let v = verbs["guest \(guest)"] { return v }
        return ("Modifying...", "Modifications complete")
    }

    mutating func starting(_ op: PlanStep) -> String? {
        guard started[op.resource] == nil else { return nil }
        started[op.resource] = Date()
        return "\(op.resource): \(verb(op.resource).start)"
    }

    func finished(_ op: PlanStep, ids: @autoclosure () -> String) -> String? {
        guard last[op.resource] == op.index, let t = started[op.resource] else { return nil }
        let seconds = String(format: "%.1f", Date().timeIntervalSince(t))
        let ids = ids()
        return "\(op.resource): \(verb(op.resource).end) after \(seconds)s" + (ids.isEmpty ? "" : " [\(ids)]")
    }

    /// The ids a resource holds now, as the plan's `--ops` names them.
    static func ids(_ resource: String, _ h: Holdings) -> String {
        let parts = resource.split(separator: " ", maxSplits: 1).map(String.init)
        guard parts.count == 2 else { return "" }
        let path = parts[1].split(separator: "/", maxSplits: 1).map(String.init)
        guard let g = h.guests[path[0]] else { return "" }
        let name = path.count > 1 ? path[1] : ""
        switch parts[0] {
        case "guest":
            return "iommufd fd \(g.iommufd.fd)" + (g.ioas.map { ", ioas \($0)" } ?? "")
        case "device":
            guard let d = g.devices[name] else { return "" }
            var s = "dev_id \(d.devID)"
            for (_, v) in g.vsmmus { if let vd = v.vdevices[name] { s += ", vdevice \(vd.id) (vSID \(YAMLText.hex(vd.virtID)))" } }
            return s
        case "stage2":
            return g.stage2[name].map { "hwpt \($0.hwpt)" } ?? ""
        case "memory":
            return g.memory[name].map { "iova \(YAMLText.hex($0.iova))" } ?? ""
        case "vsmmu":
            guard let v = g.vsmmus[name] else { return "" }
            var s = "viommu \(v.viommu)"
            if let a = v.abortHWPT { s += ", abort \(a)" }
            if let b = v.bypassHWPT { s += ", bypass \(b)" }
            let queues = v.eventQueues.values.map(\.id).sorted()
            if !queues.isEmpty { s += ", veventq " + queues.map(String.init).joined(separator: ",") }
            return s
        default:
            return ""
        }
    }
}
