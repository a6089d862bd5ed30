import Foundation
import VsmmuExecutor
import VsmmuKernel
import VsmmuModel
import VsmmuPlanner
import VsmmuSim
import VsmmuVMM

/// `--vmm adopt` (docs/handoff-adopt.md): the prepared context itself goes to a VMM written
/// to take it: the iommufd, the bound cdevs, the vEVENTQ fds and the guest-RAM memfds, with
/// a map of every object id. vsmmu then holds nothing of the guest; the VMM does.
public struct AdoptHandover {
    public var guest: String
    public var holding: GuestHolding
    /// Placeholder name → fd of this holder, in a stable order (iommufd first).
    public var placeholders: [(name: String, fd: Int32)]

    /// The map of every object id; `fdRef` writes how the receiver finds each fd (an index
    /// into the fds sent, or a simulated fd number).
    public func map(simulated: Bool, fdRef: (Int32) -> JSONValue) -> JSONValue {
        let g = holding
        var devices: [String: JSONValue] = [:]
        for (name, d) in g.devices.sorted(by: { $0.key < $1.key }) {
            var o: [String: JSONValue] = ["host": .string(d.source.description), "devId": .int(Int64(d.devID))]
            if let c = d.cdev { o["fdIndex"] = fdRef(c.fd) }
            if let a = d.attached { o["attachedHwpt"] = .int(Int64(a)) }
            devices[name] = .object(o)
        }
        var vsmmus: [String: JSONValue] = [:]
        for (name, v) in g.vsmmus.sorted(by: { $0.key < $1.key }) {
            var queues: [String: JSONValue] = [:]
            for (t, q) in v.eventQueues.sorted(by: { $0.key < $1.key }) { queues[String(t)] = ["id": .int(Int64(q.id)), "fdIndex": fdRef(q.fd.fd)] }
            var vdevs: [String: JSONValue] = [:]
            for (d, vd) in v.vdevices { vdevs[d] = ["id": .int(Int64(vd.id)), "vsid": .uint(vd.virtID)] }
            vsmmus[name] = ["physical": .string(v.physical), "viommu": .int(Int64(v.viommu)), "viommuType": .int(Int64(v.viommuType)),
                            "abortHwpt": v.abortHWPT.map { .int(Int64($0)) } ?? .null, "bypassHwpt": v.bypassHWPT.map { .int(Int64($0)) } ?? .null,
                            "veventqs": .object(queues), "vdevices": .object(vdevs)]
        }
        var memory: [String: JSONValue] = [:]
        for (name, m) in g.memory.sorted(by: { $0.key < $1.key }) {
            var o: [String: JSONValue] = ["iova": .uint(m.iova), "size": .uint(m.length), "backing": .string(m.backing.rawValue)]
            if let f = m.memory.file { o["fdIndex"] = fdRef(f.fd) }
            memory[name] = .object(o)
        }
        var stage2: [String: JSONValue] = [:]
        for (i, s) in g.stage2 { stage2[i] = .int(Int64(s.hwpt)) }
        return ["guest": .string(guest), "simulated": .bool(simulated), "iommufdFdIndex": fdRef(g.iommufd.fd),
                "ioas": g.ioas.map { .int(Int64($0)) } ?? .null, "stage2": .object(stage2),
                "devices": .object(devices), "vsmmus": .object(vsmmus), "memory": .object(memory)]
    }

    init(guest: String, holding g: GuestHolding) {
        self.guest = guest
        holding = g
        var p: [(String, Int32)] = [(FDPlaceholder.name(guest: guest, thing: .iommufd), g.iommufd.fd)]
        for (name, d) in g.devices.sorted(by: { $0.key < $1.key }) { if let c = d.cdev { p.append((FDPlaceholder.name(guest: guest, thing: .device(name)), c.fd)) } }
        for (name, v) in g.vsmmus.sorted(by: { $0.key < $1.key }) {
            for (t, q) in v.eventQueues.sorted(by: { $0.key < $1.key }) { p.append((FDPlaceholder.name(guest: guest, thing: .eventQueue(vsmmu: name, type: t)), q.fd.fd)) }
        }
        for (name, m) in g.memory.sorted(by: { $0.key < $1.key }) { if let f = m.memory.file { p.append((FDPlaceholder.name(guest: guest, thing: .memory(name)), f.fd)) } }
        placeholders = p
    }
}

extension GuestLifecycle {
    /// The prepared context of `guest`, ready to go to an adopting VMM; nothing changes yet.
    public func adoptable(_ guest: String, store: StateStore) throws -> AdoptHandover {
        AdoptHandover(guest: guest, holding: try checkLaunchable(guest, store: store))
    }

    /// After the fds went to the VMM (SCM_RIGHTS, or a simulated process's transfer): the
    /// holder forgets the context and drops its copies (anonymous guest RAM is unmapped
    /// here; its pages stay pinned by the IOAS the VMM now holds). Records the guest as
    /// running in the VMM.
    public func finishAdopt(_ a: AdoptHandover, pid: Int32, startTime: UInt64?, command: [String], store: StateStore,
                            transferredTo process: SimProcessID? = nil) throws {
        if process == nil {
            for (_, fd) in a.placeholders { port.closeFile(fd) }
        }
        for m in a.holding.memory.values where m.memory.file == nil { port.releaseGuestMemory(m.memory) }
        var devices: [String: PCIAddress] = [:]
        for (name, d) in a.holding.devices { if let addr = d.source.pciAddress { devices[name] = addr } }
        let r = RunningGuest(pid: pid, startTime: startTime, command: command, vmm: .adopt, since: Date().timeIntervalSince1970,
                             devices: devices, simulatedProcess: process?.number)
        try store.record([.guest(a.guest, nil), .running(a.guest, r)])
        try store.checkpoint()
        try session.save()
    }
}
