import ArgumentParser
import Foundation
import VsmmuProvisioning
import VsmmuExecutor
import VsmmuKernel
import VsmmuModel
import VsmmuPlanner

struct Show: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show",
        abstract: "Show what is applied now: objects, IDs, bindings, and drift.",
        discussion: """
        Reads the state directory's holdings and checks them against the kernel (read-only \
        calls). Drift is listed: contexts the kernel destroyed, device bindings undone \
        outside vsmmu.

        Example:
          vsmmu show --host examples/hosts/grace-2smmu-cmdqv.yaml --format json
        """)


    @OptionGroup var kernel: KernelOptions

    @Option(help: "text (the YAML document), yaml or json.")
    var format: OutputFormat = .text

    func run() throws {
        var request = Request(.show)
        request.format = format.rawValue
        let code = try Dispatch.run(request, file: nil, kernel: kernel)
        if code != 0 { throw ExitCode(code) }
    }
}

enum ShowDocument {
    static func build(_ o: ObservedState, host: String, simulated: Bool, interrupted: Int, lost: LostState? = nil, lifecycle: [GuestStatus] = [],
                      facts: [String: GuestFacts] = [:]) -> JSONValue {
        var guests: [String: JSONValue] = [:]
        var drift: [JSONValue] = []
        // Guests a VMM holds: vsmmu holds none of their objects (docs/contract.md §6).
        for s in lifecycle where s.state == .running || s.state == .handedOver {
            guard let r = o.holdings.running[s.name] else { continue }
            var devices: [String: JSONValue] = [:]
            for (d, a) in r.devices { devices[d] = ["host": .string(a.description), "driver": o.sysfs[a]?.driver.map(JSONValue.string) ?? .null] }
            var entry: [String: JSONValue] = ["state": .string(s.state!.rawValue), "pid": .int(Int64(r.pid)), "command": .string(r.commandLine),
                                              "vmm": .string(r.vmm.rawValue), "since": .string(ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: r.since))),
                                              "devices": .object(devices)]
            if let remote = r.remote { entry["remote"] = .string(remote) }
            if !s.notes.isEmpty { entry["notes"] = .array(s.notes.map { .string($0) }) }
            for n in s.notes { drift.append(.string("guest \(s.name) (running, pid \(r.pid)): \(n)")) }
            guests[s.name] = .object(entry)
        }
        for (name, g) in o.holdings.guests {
            let dead = o.deadGuests.contains(name)
            if dead { drift.append(.string("guest \(name): its iommufd context is gone (the holding process exited); apply re-creates it")) }
            if g.uncertain { drift.append(.string("guest \(name): an apply was interrupted inside it; apply rebuilds it")) }
            var devices: [String: JSONValue] = [:]
            for (d, h) in g.devices {
                var o2: [String: JSONValue] = ["host": .string(h.source.description), "devId": .int(Int64(h.devID)),
                                               "attachedHwpt": h.attached.map { .int(Int64($0)) } ?? .null]
                if let c = h.cdev { o2["cdevFd"] = .int(Int64(c.fd)) }
                if let i = h.vfioIndex { o2["cdev"] = .string("/dev/vfio/devices/vfio\(i)") }
                if let s = h.mockStdev { o2["mockStdevId"] = .int(Int64(s)) }
                if let u = h.owner { o2["ownerUid"] = .int(Int64(u)) }
                let lost = o.lostDevices.contains("\(name)/\(d)")
                o2["state"] = .string(dead ? "lost" : lost ? "drift" : "ok")
                if lost, let a = h.source.pciAddress {
                    drift.append(.string("device \(name)/\(d): \(a) is on \(o.sysfs[a]?.driver ?? "no driver"), not vfio-pci; its binding is gone"))
                }
                devices[d] = .object(o2)
            }
            var stage2: [String: JSONValue] = [:]
            for (i, s) in g.stage2 { stage2[i] = ["hwptId": .int(Int64(s.hwpt)), "nestParent": .bool(s.nestParent)] }
            var memory: [String: JSONValue] = [:]
            for (r, m) in g.memory {
                memory[r] = ["iova": .string(YAMLText.hex(m.iova)), "size": .string(YAMLText.size(m.length)), "backing": .string(m.backing.rawValue),
                             "mapped": .bool(m.mapped), "memfd": m.memory.file.map { .int(Int64($0.fd)) } ?? .null]
            }
            var vsmmus: [String: JSONValue] = [:]
            for (v, h) in g.vsmmus {
                var vdevs: [String: JSONValue] = [:]
                for (d, vd) in h.vdevices { vdevs[d] = ["vdeviceId": .int(Int64(vd.id)), "vsid": .string(YAMLText.hex(vd.virtID))] }
                var queues: [String: JSONValue] = [:]
                for (t, q) in h.eventQueues { queues[String(t.rawValue)] = ["veventqId": .int(Int64(q.id)), "fd": .int(Int64(q.fd.fd))] }
                vsmmus[v] = ["physical": .string(h.physical), "viommuId": .int(Int64(h.viommu)), "viommuType": .string(h.viommuType.name),
                             "abortHwptId": h.abortHWPT.map { .int(Int64($0)) } ?? .null, "bypassHwptId": h.bypassHWPT.map { .int(Int64($0)) } ?? .null,
                             "vdevices": .object(vdevs), "veventqs": .object(queues)]
            }
            guests[name] = ["iommufdFd": .int(Int64(g.iommufd.fd)), "ioasId": g.ioas.map { .int(Int64($0)) } ?? .null,
                            "state": .string(dead ? "lost" : g.uncertain ? "uncertain" : GuestLifecycleState.prepared.rawValue),
                            "devices": .object(devices), "stage2": .object(stage2), "memory": .object(memory), "vsmmus": .object(vsmmus)]
        }
        // What the guest's VMM will live with, and which values were auto (GuestFacts).
        for (name, f) in facts {
            guard case .object(var entry)? = guests[name] else { continue }
            entry["lifecycle"] = .array(f.lifecycle.map { .string($0.text) })
            entry["auto"] = .array((f.placement.filter { $0.requested == "auto" }.map { "device \($0.device) vsmmu: \($0.vsmmu ?? "none")" }
                                    + f.autos.map { "\($0.subject): \($0.value)" }).map { .string($0) })
            if !f.peers.isEmpty {
                entry["peers"] = .array(f.peers.map { p in
                    var o: [String: JSONValue] = ["devices": .array([.string(p.device), .string(p.peer)]), "route": .string(p.route.rawValue), "text": .string(p.text)]
                    if let k = p.kernelParameter { o["kernelParameter"] = .string(k + " (takes effect at reboot)") }
                    return .object(o)
                })
            }
            guests[name] = .object(entry)
        }
        var bindings: [String: JSONValue] = [:]
        for (a, orig) in o.holdings.originalDrivers {
            bindings[a.description] = ["driver": o.sysfs[a]?.driver.map(JSONValue.string) ?? .null, "originalDriver": orig.map(JSONValue.string) ?? .null]
        }
        for a in o.holdings.unknownOriginalDrivers ?? [] {
            bindings[a.description] = ["driver": o.sysfs[a]?.driver.map(JSONValue.string) ?? .null, "originalDriver": "unknown"]
        }
        if interrupted > 0 { drift.append(.string("\(interrupted) step(s) of an earlier apply did not finish; the next apply recovers")) }
        var doc: [String: JSONValue] = ["host": .string(host), "simulated": .bool(simulated), "guests": .object(guests), "bindings": .object(bindings),
                                        "drift": .array(drift.sorted { $0.rendered() < $1.rendered() })]
        // A lost holdings.json: what says state existed, and how to rebuild it.
        if let lost {
            doc["lostState"] = ["missing": .string(lost.holdingsPath), "found": .array(lost.found.map(JSONValue.string)),
                                "recover": "vsmmu apply FILE --rebuild-state"]
        }
        return .object(doc)
    }

    /// YAML rendering of the same document (block style, keys sorted).
    static func yaml(_ v: JSONValue) -> String {
        var out = ""
        func scalar(_ v: JSONValue) -> String {
            switch v {
            case .null: return "null"
            case .bool(let b): return b ? "true" : "false"
            case .int(let i): return String(i)
            case .uint(let u): return String(u)
            case .string(let s): return YAMLText.quoted(s)
            case .array(let a) where a.isEmpty: return "[]"
            case .object(let o) where o.isEmpty: return "{}"
            default: return ""
            }
        }
        func emit(_ v: JSONValue, indent: Int) {
            let pad = String(repeating: "  ", count: indent)
            switch v {
            case .object(let o) where !o.isEmpty:
                for k in o.keys.sorted() {
                    let child = o[k]!
                    let s = scalar(child)
                    if s.isEmpty { out += "\(pad)\(YAMLText.quoted(k)):\n"; emit(child, indent: indent + 1) }
                    else { out += "\(pad)\(YAMLText.quoted(k)): \(s)\n" }
                }
            case .array(let a) where !a.isEmpty:
                for item in a {
                    let s = scalar(item)
                    if s.isEmpty { out += "\(pad)-\n"; emit(item, indent: indent + 1) } else { out += "\(pad)- \(s)\n" }
                }
            default:
                out += pad + scalar(v) + "\n"
            }
        }
        emit(v, indent: 0)
        return out
    }
}
