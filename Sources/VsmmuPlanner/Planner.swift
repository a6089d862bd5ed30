import VsmmuKernel
import VsmmuModel

/// Diffs the desired graph against what the kernel holds and orders the operations:
/// teardown in reverse dependency order first, then creation in docs/contract.md §5 order.
///
/// One rule per resource kind (guest, device, memory, stage2, vsmmu; the files
/// Planner+*.swift) decides a `Verdict` for each resource, and both the plan's summary
/// line and the resource's operations follow from that verdict.
public struct Planner {
    /// Buckets in execution order. Teardown mirrors creation (docs/kernel-interface.md §0 T1–T11).
    enum Phase: Int, CaseIterable {
        case dropContexts, relatch, destroyNested, destroyVDevices, destroyEventQueues, destroyVIOMMUs,
             unmapMemory, releaseMemory, destroyStage2, destroyIOAS, closeDevices, closeContexts, giveBack,
             openContexts, allocIOAS, moveToVFIO, bindDevices, allocStage2, attachStage2, mapMemory,
             buildVSMMUs, attachNested, updateOwners
    }

    struct Pending {
        var resource: String
        var action: OpAction
        var needs: [Dep]
        var gives: [Dep]
    }

    /// What the diff decided for one resource.
    enum Verdict {
        case keep
        case create
        case update([AttributeChange])
        case replace(Replacement)
        case destroy
    }

    let desired: DesiredState
    let observed: ObservedState
    var phases: [[Pending]] = Array(repeating: [], count: Phase.allCases.count)
    var changes: [ResourceChange] = []
    /// The dependency token kinds needed and given, one bit per kind (a set per step was
    /// a third of the plan from empty's `add`).
    var neededKinds: UInt64 = 0
    var givenKinds: UInt64 = 0
    var kinds: DependencyKinds {
        func set(_ mask: UInt64) -> Set<Dep.Kind> { Set(Dep.Kind.allCases.filter { mask & (1 << UInt64($0.rawValue)) != 0 }) }
        return DependencyKinds(needed: set(neededKinds), given: set(givenKinds))
    }
    /// Off: every guest goes through the full diff (tests compare both ways).
    var convergedShortcut = true

    public static func plan(desired: DesiredState, observed: ObservedState, topologyFile: String, hostName: String, simulated: Bool) -> Plan {
        var p = Planner(desired: desired, observed: observed)
        p.diff()
        let ops = p.order()
        let layout = Planner.layout(desired)
        var allocations = desired.allocations
        var noted: Set<String>?
        for l in layout {
            allocations.guests[l.guest]?.layout = l
            // Only a guest vsmmu holds has a VM that saw the earlier values; an equal layout
            // has no visible change (the common case: compared, not diffed field by field).
            guard observed.holdings.guests[l.guest] != nil, let before = desired.previous.guests[l.guest]?.layout, before != l else { continue }
            if noted == nil { noted = Set(p.changes.map(\.address)) }
            let visible = visibleChanges(before, l).filter { !noted!.contains($0.address) }
            p.changes += visible
            for c in visible { noted!.insert(c.address) }
        }
        return Plan(topology: desired.topologyName, topologyFile: topologyFile, host: hostName, simulated: simulated,
                    fingerprint: .observed(observed), changes: p.changes, operations: ops,
                    allocations: allocations, layout: layout)
    }

    /// What a launch runs before it hands a prepared guest to its VMM (docs/contract.md
    /// §6): every object of the guest's context destroyed and every fd closed, in a
    /// destroy's order, but guest RAM kept (its memfds go to the VMM) and host state
    /// (drivers, cdev owners) untouched.
    public static func release(guest: String, holding: GuestHolding, observed: ObservedState) -> [PlanStep] {
        var p = Planner(desired: DesiredState(topologyName: "", guests: [], allocations: Allocations()), observed: observed)
        p.teardownGuest(guest, holding)
        return p.order().filter {
            if case .releaseMemory = $0.action { return false }
            return true
        }
    }

    /// The dependency token kinds the plan for `desired` against `observed` needs and gives.
    static func dependencyKinds(desired: DesiredState, observed: ObservedState) -> DependencyKinds {
        var p = Planner(desired: desired, observed: observed)
        p.diff()
        return p.kinds
    }

    mutating func add(_ phase: Phase, _ resource: String, _ action: OpAction, needs: [Dep] = [], gives: [Dep] = []) {
        phases[phase.rawValue].append(Pending(resource: resource, action: action, needs: needs, gives: gives))
        for d in needs { neededKinds |= 1 << UInt64(d.kind.rawValue) }
        for d in gives { givenKinds |= 1 << UInt64(d.kind.rawValue) }
    }

    /// The plan's line for one resource (nothing for `.keep`).
    mutating func note(_ verdict: Verdict, _ type: String, _ name: String, _ summary: String) {
        let action: ResourceChange.Action
        var attributes: [AttributeChange] = []
        var replacement: Replacement?
        switch verdict {
        case .keep: return
        case .create: action = .create
        case .update(let a): action = .update; attributes = a
        case .replace(let r): action = .replace; replacement = r
        case .destroy: action = .destroy
        }
        changes.append(ResourceChange(action: action, type: type, name: name, summary: summary, attributes: attributes,
                                      forcedBy: replacement?.text, replacement: replacement))
    }

    /// Flattens the phases and turns needs into step dependencies.
    func order() -> [PlanStep] {
        var ops: [PlanStep] = []
        var producer: [Dep: Int] = [:]
        ops.reserveCapacity(phases.reduce(0) { $0 + $1.count })
        producer.reserveCapacity(phases.reduce(0) { n, b in b.reduce(n) { $0 + $1.gives.count } })
        for bucket in phases {
            for p in bucket {
                let index = ops.count + 1
                // The producers in order, each once (as a set of them sorted).
                var deps: [Int] = []
                deps.reserveCapacity(p.needs.count)
                for n in p.needs { if let i = producer[n] { deps.append(i) } }
                deps.sort()
                var unique: [Int] = []
                unique.reserveCapacity(deps.count)
                for d in deps where unique.last != d { unique.append(d) }
                ops.append(PlanStep(index: index, resource: p.resource, action: p.action, dependsOn: unique))
                for g in p.gives { producer[g] = index }
            }
        }
        return ops
    }

    // MARK: - the diff

    mutating func diff() {
        // Addresses some desired guest uses: never given back to their host driver.
        var wanted = Set<PCIAddress>()
        wanted.reserveCapacity(desired.guests.reduce(0) { $0 + $1.devices.count })
        for g in desired.guests { for d in g.devices { if let a = d.source.pciAddress { wanted.insert(a) } } }
        let desiredNames = Set(desired.guests.map(\.name))
        for name in Set(observed.holdings.guests.keys).subtracting(desiredNames).sorted() {
            removedGuest(name, observed.holdings.guests[name]!, wanted: wanted)
        }
        strayAddresses(wanted: wanted)
        for g in desired.guests { desiredGuest(g, wanted: wanted) }
    }

    /// A held guest the topology no longer has: its context goes, its devices go back.
    mutating func removedGuest(_ name: String, _ h: GuestHolding, wanted: Set<PCIAddress>) {
        note(.destroy, "guest", name, "iommufd context, IOAS and every object in it")
        if observed.deadGuests.contains(name) {
            add(.dropContexts, "guest \(name)", .forgetGuest(guest: name))
        } else if h.uncertain {
            add(.dropContexts, "guest \(name)", .closeGuest(guest: name))
        } else {
            teardownGuest(name, h)
        }
        for (dname, d) in h.devices.sorted(by: { $0.key < $1.key }) where d.cdev != nil {
            if let a = d.source.pciAddress, !wanted.contains(a) {
                note(.destroy, "device", "\(name)/\(dname)", "\(a) back to \(self.originalDriverText(a))")
                giveBack(a, resource: "device \(name)/\(dname)")
            }
        }
    }

    /// Devices vsmmu moved that no guest holds or wants any more (a removed guest's
    /// record was lost, or an interrupted apply): give them back too.
    mutating func strayAddresses(wanted: Set<PCIAddress>) {
        // Only the few addresses no guest wants are looked at further (on a converged host, none).
        let unknown = (observed.holdings.unknownOriginalDrivers ?? []).filter { !wanted.contains($0) }
        let recorded = observed.holdings.originalDrivers.keys.filter { !wanted.contains($0) }
        guard !unknown.isEmpty || !recorded.isEmpty else { return }
        var held = Set<PCIAddress>()
        for g in observed.holdings.guests.values { for d in g.devices.values { if let a = d.source.pciAddress { held.insert(a) } } }
        for a in unknown.sorted() where !held.contains(a) {
            add(.giveBack, "device \(a)", .forgetOriginalDriver(address: a))
        }
        for a in recorded.filter({ !held.contains($0) }).sorted() {
            let s = observed.sysfs[a]
            let original = observed.holdings.originalDrivers[a] ?? nil
            if VFIODriver.isVFIO(original) {
                add(.giveBack, "device \(a)", .forgetOriginalDriver(address: a))
                continue
            }
            if s?.driver == original && s?.driverOverride == nil { continue }
            note(.destroy, "device", a.description, "back to \(originalDriverText(a))")
            giveBack(a, resource: "device \(a)")
        }
    }

    /// A guest of the topology: its context is created, kept or replaced, then its resources diffed.
    mutating func desiredGuest(_ g: DesiredGuest, wanted: Set<PCIAddress>) {
        var h = observed.holdings.guests[g.name]
        if let held = h {
            var reason: Replacement?
            if observed.deadGuests.contains(g.name) {
                reason = .state("context", reason: "context-lost", text: "context lost: the process that held its iommufd fd exited")
            } else if held.uncertain {
                reason = .state("context", reason: "interrupted", text: "an interrupted apply left its iommufd context uncertain")
            } else if g.stage2.contains(where: { s in held.stage2[s.iommu].map { $0.nestParent != s.nestParent } ?? false }) {
                reason = .state("stage2.nestParent", reason: "nest-parent-changes", text: "a stage-2 HWPT changes its nest-parent flag")
            }
            if let reason {
                note(.replace(reason), "guest", g.name, "iommufd context, IOAS")
                add(.dropContexts, "guest \(g.name)", observed.deadGuests.contains(g.name) ? .forgetGuest(guest: g.name) : .closeGuest(guest: g.name))
                h = nil
            } else if convergedShortcut, isConverged(g, held) {
                assert(fullDiffPlansNothing(g, held, wanted: wanted), "guest \(g.name): isConverged disagrees with the full diff")
                return
            }
        } else {
            note(.create, "guest", g.name, "iommufd context, IOAS")
        }
        guestDiff(g, held: h, wanted: wanted)
    }

    func originalDriverText(_ a: PCIAddress) -> String {
        if observed.holdings.originalUnknown(a) { return "its original driver, which is unknown (its record was lost): it stays on vfio-pci; bind it by hand" }
        guard let o = observed.holdings.originalDrivers[a] else { return "its original driver" }
        return o ?? "no driver"
    }
}
