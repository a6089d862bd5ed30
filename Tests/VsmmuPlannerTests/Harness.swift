import Foundation
import VsmmuTestSupport
import Testing
import VsmmuExecutor
import VsmmuKernel
import VsmmuModel
import VsmmuPlanner
@testable import VsmmuSim
import VsmmuYAML

struct YAMLCodec: HostFileCodec {
    func decode(_ text: String, path: String) throws -> HostDescription {
        try HostDescription.parse(SourceText(path: path, bytes: Array(text.utf8)))
    }
    func encode(_ host: HostDescription) -> String { host.renderYAML() }
}

/// One simulated host with its state directory in a temp dir, driven in-process the
/// way the commands drive it: validate, plan, apply, checkpoint, save.
final class Harness {
    let dir: String
    let initialHost: HostDescription
    var sim: SimulatedKernel
    var store: StateStore

    init(host hostFile: String, environment: [String: String] = [:]) throws {
        dir = NSTemporaryDirectory() + "vsmmu-harness-\(UUID().uuidString)"
        initialHost = try HostDescription.load(path: path(hostFile))
        sim = try SimStore.open(directory: dir + "/sim", initialHost: initialHost, codec: YAMLCodec(), environment: environment)
        store = try StateStore(directory: dir)
    }

    deinit { try? FileManager.default.removeItem(atPath: dir) }

    /// What a new process would see: the simulated kernel and the state directory reloaded from disk.
    func reopen(environment: [String: String] = [:]) throws {
        sim = try SimStore.open(directory: dir + "/sim", initialHost: initialHost, codec: YAMLCodec(), environment: environment)
        store = try StateStore(directory: dir)
    }

    func topology(_ yaml: String) throws -> Topology {
        try Topology.parse(SourceText(path: "t.yaml", bytes: Array(yaml.utf8)))
    }

    func example(_ name: String) throws -> Topology {
        try Topology.load(path: path("examples/\(name).yaml")).0
    }

    func plan(_ t: Topology, destroying: Bool = false) throws -> Plan {
        let v = Validator.validate(t, host: sim.currentHost)
        guard v.isValid else { throw Pipeline.Failure(message: v.diagnostics.map(\.description).joined(separator: "\n")) }
        return try Pipeline.plan(t, validation: v, port: sim, host: sim.currentHost, store: store, simulated: true,
                                 onlyGuests: destroying ? Set(t.guests.map(\.name)) : nil, destroying: destroying)
    }

    @discardableResult
    func apply(_ t: Topology, destroying: Bool = false) throws -> Plan {
        if !store.interrupted.isEmpty {
            _ = Recovery.sweepOrphans(port: sim, holdings: store.holdings)
            try store.checkpoint()
        }
        let p = try plan(t, destroying: destroying)
        do { try Pipeline.apply(p, port: sim, store: store) } catch {
            try? sim.save()
            throw error
        }
        try sim.save()
        return p
    }

    /// The end state, with kernel-chosen numbers (IDs, fds) left out: what two runs
    /// that converged to the same topology must agree on.
    func summary() -> String {
        var lines: [String] = []
        for d in sim.currentHost.pciDevices.sorted(by: { $0.address < $1.address }) {
            lines.append("sysfs \(d.address) \(d.driver ?? "-")")
        }
        for (g, h) in store.holdings.guests.sorted(by: { $0.key < $1.key }) {
            lines.append("guest \(g) ioas=\(h.ioas != nil) uncertain=\(h.uncertain)")
            func attached(_ id: ObjectID?) -> String {
                guard let id else { return "-" }
                if let s = h.stage2.first(where: { $0.value.hwpt == id }) { return "stage2:\(s.key)" }
                for (v, vh) in h.vsmmus { if vh.bypassHWPT == id { return "\(v).bypass" }; if vh.abortHWPT == id { return "\(v).abort" } }
                return "other"
            }
            for (d, dh) in h.devices.sorted(by: { $0.key < $1.key }) {
                lines.append(" device \(d) \(dh.source) attached=\(attached(dh.attached)) owner=\(dh.owner.map(String.init) ?? "-")")
            }
            for (i, s) in h.stage2.sorted(by: { $0.key < $1.key }) { lines.append(" stage2 \(i) np=\(s.nestParent)") }
            for (r, m) in h.memory.sorted(by: { $0.key < $1.key }) { lines.append(" memory \(r) \(m.iova) \(m.length) \(m.backing) mapped=\(m.mapped)") }
            for (v, vh) in h.vsmmus.sorted(by: { $0.key < $1.key }) {
                lines.append(" vsmmu \(v) \(vh.physical) type=\(vh.viommuType) abort=\(vh.abortHWPT != nil) bypass=\(vh.bypassHWPT != nil) evq=\(vh.eventQueues.keys.sorted())")
                for (d, vd) in vh.vdevices.sorted(by: { $0.key < $1.key }) { lines.append("  vdevice \(d) 0x\(String(vd.virtID, radix: 16))") }
            }
        }
        // The kernel side: live objects per context and open fds (leaks show here).
        let objects = sim.state.contexts.values.map { $0.objects.count }.sorted()
        lines.append("kernel objects per context \(objects), open fds \(sim.state.files.count)")
        return lines.joined(separator: "\n")
    }
}

