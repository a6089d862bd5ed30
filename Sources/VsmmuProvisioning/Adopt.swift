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

    /// The map of every object id, each fd written as `fd(holderFD)`: an index into the
    /// fds sent over the socket, or a simulated fd number.
    public func map(simulated: Bool, fd: (Int32) -> Int32) -> AdoptMap {
        let g = holding
        var m = AdoptMap(guest: guest, simulated: simulated, iommufdFd: fd(g.iommufd.fd), ioas: g.ioas)
        for (name, d) in g.devices {
            m.devices[name] = .init(host: d.source.description, devId: d.devID, attachedHwpt: d.attached, fd: d.cdev.map { fd($0.fd) })
        }
        for (name, v) in g.vsmmus {
            var queues: [String: AdoptMap.EventQueue] = [:]
            for (t, q) in v.eventQueues { queues[String(t.rawValue)] = .init(id: q.id, fd: fd(q.fd.fd)) }
            m.vsmmus[name] = .init(physical: v.physical, viommu: v.viommu, viommuType: v.viommuType.rawValue, abortHwpt: v.abortHWPT, bypassHwpt: v.bypassHWPT,
                                   veventqs: queues, vdevices: v.vdevices.mapValues { .init(id: $0.id, vsid: $0.virtID) })
        }
        for (name, r) in g.memory {
            m.memory[name] = .init(iova: r.iova, size: r.length, backing: r.backing.rawValue, fd: r.memory.file.map { fd($0.fd) })
        }
        for (i, s) in g.stage2 { m.stage2[i] = s.hwpt }
        return m
    }

    init(guest: String, holding g: GuestHolding) {
        self.guest = guest
        holding = g
        var p: [(String, Int32)] = [(FDPlaceholder.name(guest: guest, thing: .iommufd), g.iommufd.fd)]
        for (name, d) in g.devices.sorted(by: { $0.key < $1.key }) { if let c = d.cdev { p.append((FDPlaceholder.name(guest: guest, thing: .device(name)), c.fd)) } }
        for (name, v) in g.vsmmus.sorted(by: { $0.key < $1.key }) {
            for (t, q) in v.eventQueues.sorted(by: { $0.key < $1.key }) { p.append((FDPlaceholder.name(guest: guest, thing: .eventQueue(vsmmu: name, type: t.rawValue)), q.fd.fd)) }
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

/// What `--vmm adopt` and `vsmmu handoff` give the VMM besides the fds (docs/handoff-adopt.md,
/// a stable interface): every object id of the guest's context. JSON with sorted keys.
public struct AdoptMap: Codable, Hashable, Sendable {
    public static let currentFormat = 1
    public var formatVersion = AdoptMap.currentFormat
    public var guest: String
    /// On a simulated host the fd numbers are the simulated kernel's (nothing real is passed).
    public var simulated: Bool
    public var iommufdFd: Int32
    public var ioas: ObjectID?
    /// Physical IOMMU → stage-2 (nesting parent) HWPT id.
    public var stage2: [String: ObjectID] = [:]
    public var devices: [String: Device] = [:]
    public var vsmmus: [String: VSMMU] = [:]
    public var memory: [String: Memory] = [:]

    public struct Device: Codable, Hashable, Sendable {
        public var host: String
        public var devId: ObjectID
        public var attachedHwpt: ObjectID?
        /// The bound VFIO cdev (none for a selftest mock device).
        public var fd: Int32?
    }
    public struct EventQueue: Codable, Hashable, Sendable { public var id: ObjectID; public var fd: Int32 }
    public struct VDevice: Codable, Hashable, Sendable { public var id: ObjectID; public var vsid: UInt64 }
    public struct VSMMU: Codable, Hashable, Sendable {
        public var physical: String
        public var viommu: ObjectID
        /// IOMMU_VIOMMU_TYPE_*.
        public var viommuType: UInt32
        public var abortHwpt: ObjectID?
        public var bypassHwpt: ObjectID?
        /// By vEVENTQ type (1: ARM SMMUv3, 2: Tegra241 CMDQV).
        public var veventqs: [String: EventQueue]
        public var vdevices: [String: VDevice]
    }
    public struct Memory: Codable, Hashable, Sendable {
        public var iova: UInt64
        public var size: UInt64
        public var backing: String
        /// The memfd (none for anonymous RAM).
        public var fd: Int32?
    }

    init(guest: String, simulated: Bool, iommufdFd: Int32, ioas: ObjectID?) {
        self.guest = guest; self.simulated = simulated; self.iommufdFd = iommufdFd; self.ioas = ioas
    }

    /// Every fd field rewritten (an index into the fds received → the fd number here).
    public func renumbered(_ f: (Int32) -> Int32) -> AdoptMap {
        var m = self
        m.iommufdFd = f(iommufdFd)
        m.devices = devices.mapValues { var d = $0; d.fd = d.fd.map(f); return d }
        m.vsmmus = vsmmus.mapValues { var v = $0; v.veventqs = v.veventqs.mapValues { .init(id: $0.id, fd: f($0.fd)) }; return v }
        m.memory = memory.mapValues { var r = $0; r.fd = r.fd.map(f); return r }
        return m
    }

    public func json(pretty: Bool = false) -> String {
        let e = JSONEncoder()
        e.outputFormatting = pretty ? [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes] : [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: (try? e.encode(self)) ?? Data(), as: UTF8.self)
    }
}
