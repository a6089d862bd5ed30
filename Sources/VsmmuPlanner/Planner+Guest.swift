import VsmmuKernel
import VsmmuModel

/// One desired guest against what is held of it, and what the per-kind rules learn from
/// each other (a rebuilt vSMMU re-attaches its devices, a new device needs a vDevice).
struct GuestScope {
    let g: DesiredGuest
    /// What is held (empty when nothing usable is).
    let h: GuestHolding
    var name: String { g.name }
    let desiredDevices: [String: DesiredDevice]
    /// Which held vSMMU has each device's vDevice.
    let heldVSMMUOf: [String: String]
    /// The held abort and bypass HWPTs.
    let nestedHWPTs: Set<ObjectID>
    /// vSMMUs torn down (removed or rebuilt) by this plan.
    var rebuiltVSMMUs = Set<String>()
    /// Devices that need binding (and everything after), and which of them have their cdev open.
    var newDevices = Set<String>()
    var openCdevs = Set<String>()
    /// Devices to attach to their vSMMU's bypass HWPT.
    var needNestedAttach = Set<String>()

    init(_ g: DesiredGuest, _ h: GuestHolding) {
        self.g = g
        self.h = h
        desiredDevices = Dictionary(uniqueKeysWithValues: g.devices.map { ($0.name, $0) })
        var of: [String: String] = [:]
        for (v, vh) in h.vsmmus { for d in vh.vdevices.keys { of[d] = v } }
        heldVSMMUOf = of
        nestedHWPTs = Set(h.vsmmus.values.flatMap { [$0.abortHWPT, $0.bypassHWPT].compactMap { $0 } })
    }

    func key(_ part: String) -> String { "\(name)/\(part)" }
}

extension Planner {
    /// `held` nil: nothing usable is held (a new guest, or one being replaced).
    mutating func guestDiff(_ g: DesiredGuest, held: GuestHolding?, wanted: Set<PCIAddress>) {
        var s = GuestScope(g, held ?? GuestHolding(iommufd: IommufdHandle(fd: -1)))
        contextDiff(s, isNew: held == nil)
        vsmmuTeardowns(&s)
        deviceDiff(&s, wanted: wanted)
        memoryDiff(s)
        stage2Diff(s)
        vsmmuBuilds(&s)
    }

    mutating func contextDiff(_ s: GuestScope, isNew: Bool) {
        let name = s.name
        if isNew {
            add(.openContexts, "guest \(name)", .openIommufd(guest: name), gives: [.iommufd(guest: name)])
            add(.allocIOAS, "guest \(name)", .ioasAlloc(guest: name), needs: [.iommufd(guest: name)], gives: [.ioas(guest: name)])
        } else if s.h.ioas == nil {
            // An earlier apply stopped between opening the context and allocating its IOAS.
            note(.update([AttributeChange(name: "ioas", from: nil, to: "allocated")]), "guest", name, "iommufd context, IOAS")
            add(.allocIOAS, "guest \(name)", .ioasAlloc(guest: name), gives: [.ioas(guest: name)])
        }
    }

    // MARK: memory

    func memoryVerdict(_ want: MemoryRegion?, _ m: MemoryHolding?) -> Verdict {
        guard let m else { return .create }
        guard let want else { return .destroy }
        if want.guestAddress != m.iova { return .replace(.change("guestAddress", YAMLText.hex(m.iova), YAMLText.hex(want.guestAddress))) }
        if want.size != m.length { return .replace(.change("size", YAMLText.size(m.length), YAMLText.size(want.size))) }
        if want.backing != m.backing { return .replace(.change("backing", m.backing.rawValue, want.backing.rawValue)) }
        if !m.mapped { return .replace(.state("mapping", reason: "not-mapped", text: "mapping (an earlier apply stopped before mapping it)")) }
        return .keep
    }

    /// Held regions first (in name order), then new ones (in topology order).
    mutating func memoryDiff(_ s: GuestScope) {
        let desiredMemory = Dictionary(uniqueKeysWithValues: s.g.memory.map { ($0.name, $0) })
        let regions = s.h.memory.keys.sorted() + s.g.memory.map(\.name).filter { s.h.memory[$0] == nil }
        for r in regions {
            let want = desiredMemory[r], m = s.h.memory[r]
            let verdict = memoryVerdict(want, m)
            note(verdict, "memory", s.key(r), want.map(self.memorySummary) ?? "\(YAMLText.size(m!.length)) \(m!.backing.rawValue) at \(YAMLText.hex(m!.iova))")
            switch verdict {
            case .keep, .update: break
            case .destroy: teardownMemory(s.name, r, m!)
            case .replace: teardownMemory(s.name, r, m!); createMemory(s, want!)
            case .create: createMemory(s, want!)
            }
        }
    }

    mutating func createMemory(_ s: GuestScope, _ m: MemoryRegion) {
        let r = "memory \(s.key(m.name))"
        add(.mapMemory, r, .createMemory(guest: s.name, region: m.name, size: m.size, backing: m.backing, hugepageSize: m.hugepageSize),
            needs: [.released(s.key(m.name))], gives: [.memoryCreated(s.key(m.name))])
        add(.mapMemory, r, .mapMemory(guest: s.name, region: m.name, iova: m.guestAddress, file: m.backing != .anonymous),
            needs: [.memoryCreated(s.key(m.name)), .ioas(guest: s.name)] + s.g.devices.map { .onStage2(device: s.key($0.name)) })
    }

    // MARK: stage 2: one HWPT per physical IOMMU in use

    mutating func stage2Diff(_ s: GuestScope) {
        let name = s.name, h = s.h
        let wantS2 = Set(s.g.stage2.map(\.iommu))
        for (i, _) in h.stage2.sorted(by: { $0.key < $1.key }) where !wantS2.contains(i) {
            note(.destroy, "stage2", s.key(i), "HWPT on \(i)")
            let users: [Dep] = h.devices.filter { _, d in d.attached == h.stage2[i]?.hwpt }.map { .detached(device: s.key($0.key)) }
            add(.destroyStage2, "stage2 \(s.key(i))", .destroyStage2(guest: name, iommu: i), needs: users + s.rebuiltVSMMUs.map { .viommuGone(vsmmu: s.key($0)) })
        }
        for s2 in s.g.stage2 where h.stage2[s2.iommu] == nil {
            note(.create, "stage2", s.key(s2.iommu), s2.nestParent ? "nest-parent HWPT (stage 2) on \(s2.iommu)" : "paging HWPT on \(s2.iommu) (no nesting)")
            // Allocate it with a device being bound now, or one already bound.
            add(.allocStage2, "stage2 \(s.key(s2.iommu))", .allocStage2(guest: name, iommu: s2.iommu, viaDevice: s2.viaDevice, nestParent: s2.nestParent),
                needs: [.ioas(guest: name), .bound(device: s.key(s2.viaDevice))], gives: [.stage2(s.key(s2.iommu))])
        }
    }
}
