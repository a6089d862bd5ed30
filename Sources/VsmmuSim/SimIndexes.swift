import VsmmuKernel

// Derived indexes over `SimState`, so that no call scans every device, fd, guest memory
// or context. They are never persisted (kernel.json is `SimState` alone): they are built
// from the state when a kernel is made or loaded (`SimIndexes.rebuild`), then kept up to
// date by the mutation helpers at the bottom of this file (`setDevice`, `setFile`,
// `setMemory`, `setObject`/`removeObject`, `removeContext`, `setIOMMUs`), which are the
// only way the simulation writes those parts of the state.

/// A binary min-heap of Ints.
struct MinHeap {
    private var items: [Int] = []

    var min: Int? { items.first }
    var count: Int { items.count }

    mutating func push(_ value: Int) {
        items.append(value)
        var i = items.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            if items[parent] <= items[i] { break }
            items.swapAt(parent, i)
            i = parent
        }
    }

    @discardableResult
    mutating func popMin() -> Int? {
        guard let top = items.first else { return nil }
        let last = items.removeLast()
        if !items.isEmpty {
            items[0] = last
            let n = items.count
            var i = 0
            while true {
                let left = 2 * i + 1, right = left + 1
                var smallest = i
                if left < n && items[left] < items[smallest] { smallest = left }
                if right < n && items[right] < items[smallest] { smallest = right }
                if smallest == i { break }
                items.swapAt(i, smallest)
                i = smallest
            }
        }
        return top
    }
}

/// The lowest free number from `start` (fds from 3, vfio indexes from 0); which numbers
/// are in use is asked through `isUsed`, so the truth stays in the state. Invariant:
/// every free number below `floor` is in `freed` (a min-heap with lazy deletion: a number
/// taken again since it was freed is dropped when it surfaces). Amortized O(log n).
struct LowestFreeAllocator {
    let start: Int
    private(set) var floor: Int
    private var freed = MinHeap()
    private var inHeap = Set<Int>()

    init(start: Int) {
        self.start = start
        floor = start
    }

    mutating func lowest(isUsed: (Int) -> Bool) -> Int {
        while let top = freed.min {
            if !isUsed(top) { return top }
            freed.popMin()
            inHeap.remove(top)
        }
        while isUsed(floor) { floor += 1 }
        return floor
    }

    /// `value` is no longer used (calling it for a number still in use is harmless).
    mutating func released(_ value: Int) {
        guard value >= start, value < floor, inHeap.insert(value).inserted else { return }
        freed.push(value)
    }
}

/// A guest memory mapped in the process (vaMapped), for the sorted VA index.
struct LiveRegion: Hashable {
    var userVA: UInt64
    var lastVA: UInt64
    var id: Int

    func precedes(_ other: LiveRegion) -> Bool { (userVA, id) < (other.userVA, other.id) }
}

extension OpenFile {
    /// The iommufd context this open file keeps alive (docs/kernel-interface.md §4.4).
    var referencedContext: Int? {
        switch self {
        case .iommufd(let c): return c
        case .vfioDevice(let vfio): return vfio.context
        case .veventq(let c, _): return c
        case .memfd: return nil
        }
    }
}

final class SimIndexes {
    // Unchecked exclusivity: like the kernel's state, used by one thread, accesses never
    // overlap (the runtime's checks cost more than most index updates).
    // Devices.
    /// vfio index → the devices holding it (one, unless a state was edited by hand).
    @exclusivity(unchecked) private(set) var vfioOwners: [Int: Set<PCIAddress>] = [:]
    @exclusivity(unchecked) private var vfioFree = LowestFreeAllocator(start: 0)
    /// iommu_group → member addresses.
    @exclusivity(unchecked) private(set) var groupMembers: [Int: Set<PCIAddress>] = [:]
    /// How many devices are bound to, natively use, or have as their VFIO driver each
    /// driver (`driver`, `nativeDriver` and `vfioDriver` each count once).
    @exclusivity(unchecked) private(set) var driverRefs: [String: Int] = [:]

    // Open files.
    @exclusivity(unchecked) private var fdFree = LowestFreeAllocator(start: 3)
    /// PCI address → the fds of its open VFIO cdevs (bound or not).
    @exclusivity(unchecked) private(set) var cdevFDs: [PCIAddress: Set<Int32>] = [:]
    /// Context → how many open files keep it alive.
    @exclusivity(unchecked) private(set) var contextRefs: [Int: Int] = [:]

    // Guest memory.
    /// Memories mapped in the process, sorted by (userVA, id).
    @exclusivity(unchecked) private(set) var liveRegions: [LiveRegion] = []
    /// Memory ID → how many IOAS mappings (of every context) reference it.
    @exclusivity(unchecked) private(set) var mappingRefs: [Int: Int] = [:]
    /// Memories that may have become collectable (not mapped, memfd closed, no mapping)
    /// since the last collection: a superset of the collectable ones.
    @exclusivity(unchecked) var collectable: Set<Int> = []

    // iommufd objects.
    /// Context → its objects, by ascending ID (the order every walk of a context's objects
    /// takes): a copy of `state.contexts[cid].objects` kept in order, so that a walk is
    /// one lookup, not a sort or a lookup per ID (docs/live-speed.md §5).
    @exclusivity(unchecked) private(set) var ordered: [Int: [(id: ObjectID, object: SimObject)]] = [:]

    // IOMMUs.
    /// IOMMU name → position of its first entry in `state.iommus`.
    @exclusivity(unchecked) private(set) var iommuPositions: [String: Int] = [:]

    init() {}

    /// Forget everything and index `state` from scratch (kernel creation, snapshot load).
    func rebuild(from state: SimState) {
        vfioOwners = [:]
        vfioFree = LowestFreeAllocator(start: 0)
        groupMembers = [:]
        driverRefs = [:]
        fdFree = LowestFreeAllocator(start: 3)
        cdevFDs = [:]
        contextRefs = [:]
        liveRegions = []
        mappingRefs = [:]
        collectable = []
        ordered = [:]
        iommusChanged(state.iommus)
        for (address, device) in state.devices { deviceChanged(address, from: nil, to: device) }
        for (fd, file) in state.files { fileChanged(fd, from: nil, to: file) }
        for (cid, context) in state.contexts {
            for object in context.objects.values { objectChanged(from: nil, to: object) }
            if !context.objects.isEmpty { ordered[cid] = context.objects.sorted { $0.key < $1.key }.map { ($0.key, $0.value) } }
        }
        for (id, memory) in state.memories {
            memoryChanged(id, from: nil, to: memory)
            // A snapshot may hold memory that nothing holds any more: the next collection
            // removes it, as a full scan would.
            collectable.insert(id)
        }
    }

    // MARK: devices

    func deviceChanged(_ address: PCIAddress, from old: SimPCIDevice?, to new: SimPCIDevice?) {
        if old?.vfioIndex != new?.vfioIndex {
            if let index = old?.vfioIndex, var owners = vfioOwners[index] {
                owners.remove(address)
                if owners.isEmpty {
                    vfioOwners[index] = nil
                    vfioFree.released(index)
                } else {
                    vfioOwners[index] = owners
                }
            }
            if let index = new?.vfioIndex { vfioOwners[index, default: []].insert(address) }
        }
        if old?.iommuGroup != new?.iommuGroup {
            if let group = old?.iommuGroup, var members = groupMembers[group] {
                members.remove(address)
                groupMembers[group] = members.isEmpty ? nil : members
            }
            if let group = new?.iommuGroup { groupMembers[group, default: []].insert(address) }
        }
        if old?.driver != new?.driver || old?.nativeDriver != new?.nativeDriver || old?.vfioDriver != new?.vfioDriver {
            if let driver = old?.driver { dropDriverRef(driver) }
            if let driver = old?.nativeDriver { dropDriverRef(driver) }
            if let driver = old?.vfioDriver { dropDriverRef(driver) }
            if let driver = new?.driver { driverRefs[driver, default: 0] += 1 }
            if let driver = new?.nativeDriver { driverRefs[driver, default: 0] += 1 }
            if let driver = new?.vfioDriver { driverRefs[driver, default: 0] += 1 }
        }
    }

    private func dropDriverRef(_ driver: String) {
        let count = (driverRefs[driver] ?? 0) - 1
        driverRefs[driver] = count > 0 ? count : nil
    }

    /// The lowest vfio index no device holds.
    func lowestFreeVfioIndex() -> Int {
        vfioFree.lowest { vfioOwners[$0] != nil }
    }

    /// The device holding vfio index `index` (the lowest address if several do).
    func vfioOwner(_ index: Int) -> PCIAddress? {
        guard let owners = vfioOwners[index] else { return nil }
        return owners.count == 1 ? owners.first : owners.min()
    }

    func sortedMembers(ofGroup group: Int) -> [PCIAddress] {
        (groupMembers[group] ?? []).sorted()
    }

    // MARK: open files

    func fileChanged(_ fd: Int32, from old: OpenFile?, to new: OpenFile?) {
        if let old {
            if let cid = old.referencedContext {
                let count = (contextRefs[cid] ?? 0) - 1
                contextRefs[cid] = count > 0 ? count : nil
            }
            if case .vfioDevice(let vfio) = old, var fds = cdevFDs[vfio.address] {
                fds.remove(fd)
                cdevFDs[vfio.address] = fds.isEmpty ? nil : fds
            }
        }
        if let new {
            if let cid = new.referencedContext { contextRefs[cid, default: 0] += 1 }
            if case .vfioDevice(let vfio) = new { cdevFDs[vfio.address, default: []].insert(fd) }
        } else if old != nil {
            fdFree.released(Int(fd))
        }
    }

    /// The lowest fd number from 3 for which `isOpen` is false.
    func lowestFreeFD(isOpen: (Int32) -> Bool) -> Int32 {
        Int32(fdFree.lowest { isOpen(Int32(truncatingIfNeeded: $0)) })
    }

    /// The fds of a device's open cdevs, ascending.
    func sortedCdevFDs(of address: PCIAddress) -> [Int32] {
        guard let fds = cdevFDs[address] else { return [] }
        return fds.count == 1 ? Array(fds) : fds.sorted()
    }

    func isContextReferenced(_ cid: Int) -> Bool { (contextRefs[cid] ?? 0) > 0 }

    // MARK: guest memory

    func memoryChanged(_ id: Int, from old: GuestMemoryRecord?, to new: GuestMemoryRecord?) {
        let oldRegion = old.flatMap { $0.vaMapped ? LiveRegion(userVA: $0.userVA, lastVA: $0.lastVA, id: id) : nil }
        let newRegion = new.flatMap { $0.vaMapped ? LiveRegion(userVA: $0.userVA, lastVA: $0.lastVA, id: id) : nil }
        if oldRegion != newRegion {
            if let oldRegion {
                let i = regionInsertionPoint(oldRegion)
                if i < liveRegions.count && liveRegions[i] == oldRegion { liveRegions.remove(at: i) }
            }
            if let newRegion { liveRegions.insert(newRegion, at: regionInsertionPoint(newRegion)) }
        }
        if let new {
            if !new.vaMapped && new.fd == nil { collectable.insert(id) }
        } else {
            collectable.remove(id)
        }
    }

    /// First position whose region does not precede `region`.
    private func regionInsertionPoint(_ region: LiveRegion) -> Int {
        var low = 0, high = liveRegions.count
        while low < high {
            let mid = (low + high) / 2
            if liveRegions[mid].precedes(region) { low = mid + 1 } else { high = mid }
        }
        return low
    }

    /// Position of the last live region starting at or below `va`.
    private func lastRegionStarting(atOrBelow va: UInt64) -> Int? {
        var low = 0, high = liveRegions.count
        while low < high {
            let mid = (low + high) / 2
            if liveRegions[mid].userVA <= va { low = mid + 1 } else { high = mid }
        }
        return low > 0 ? low - 1 : nil
    }

    /// The mapped memory that contains [va, last] (mapped memories never overlap).
    func liveMemory(covering va: UInt64, through last: UInt64) -> Int? {
        guard let i = lastRegionStarting(atOrBelow: va) else { return nil }
        let region = liveRegions[i]
        return va >= region.userVA && last <= region.lastVA ? region.id : nil
    }

    /// The mapped memory that starts at `va`.
    func liveMemory(startingAt va: UInt64) -> Int? {
        var low = 0, high = liveRegions.count
        while low < high {
            let mid = (low + high) / 2
            if liveRegions[mid].userVA < va { low = mid + 1 } else { high = mid }
        }
        return low < liveRegions.count && liveRegions[low].userVA == va ? liveRegions[low].id : nil
    }

    // MARK: iommufd objects (mapping references to guest memory)

    func objectChanged(from old: SimObject?, to new: SimObject?) {
        // Add the new references before dropping the old ones, so that a memory the
        // object keeps referencing never looks collectable.
        if case .ioas(let ioas)? = new {
            for mapping in ioas.mappings { if let id = mapping.memoryID { mappingRefs[id, default: 0] += 1 } }
        }
        if case .ioas(let ioas)? = old {
            for mapping in ioas.mappings {
                guard let id = mapping.memoryID else { continue }
                let count = (mappingRefs[id] ?? 0) - 1
                if count > 0 {
                    mappingRefs[id] = count
                } else {
                    mappingRefs[id] = nil
                    collectable.insert(id)
                }
            }
        }
    }

    func isMemoryReferenced(_ id: Int) -> Bool { (mappingRefs[id] ?? 0) > 0 }

    // MARK: iommufd objects (in ID order)

    /// The objects of context `cid`, by ascending ID.
    func objects(of cid: Int) -> [(id: ObjectID, object: SimObject)] { ordered[cid] ?? [] }

    /// Object `id` of context `cid`: a binary search of the ordered objects (no hashing,
    /// no copy of the context).
    func object(_ cid: Int, _ id: ObjectID) -> SimObject? {
        guard let list = ordered[cid] else { return nil }
        let i = Self.position(id, in: list)
        return i < list.count && list[i].id == id ? list[i].object : nil
    }

    /// First position in `list` whose ID is not below `id`.
    private static func position(_ id: ObjectID, in list: [(id: ObjectID, object: SimObject)]) -> Int {
        var low = 0, high = list.count
        while low < high {
            let mid = (low + high) / 2
            if list[mid].id < id { low = mid + 1 } else { high = mid }
        }
        return low
    }

    /// Object `id` of context `cid` is now `object` (added or changed).
    func objectStored(_ cid: Int, _ id: ObjectID, _ object: SimObject) {
        Self.store(&ordered[cid, default: []], id, object)
    }

    private static func store(_ list: inout [(id: ObjectID, object: SimObject)], _ id: ObjectID, _ object: SimObject) {
        if list.isEmpty || list[list.count - 1].id < id {
            list.append((id, object))   // the usual case: a new highest ID
            return
        }
        let i = position(id, in: list)
        if list[i].id == id { list[i].object = object } else { list.insert((id, object), at: i) }
    }

    func objectRemoved(_ cid: Int, _ id: ObjectID) {
        guard ordered[cid] != nil else { return }
        if Self.remove(&ordered[cid, default: []], id) { ordered[cid] = nil }
    }

    /// Removes `id`; returns whether the list is empty after.
    private static func remove(_ list: inout [(id: ObjectID, object: SimObject)], _ id: ObjectID) -> Bool {
        let i = position(id, in: list)
        if i < list.count, list[i].id == id { list.remove(at: i) }
        return list.isEmpty
    }

    func contextRemoved(_ cid: Int) { ordered[cid] = nil }

    /// The lowest ID from 1 that no object of context `cid` has and that is not a
    /// tombstone: a walk of the ordered objects (no lookup per candidate ID).
    func lowestFreeObjectID(_ cid: Int, tombstones: Set<ObjectID>) -> ObjectID {
        let live = objects(of: cid)
        // IDs 1...n all taken (the usual case while objects are only added): n + 1.
        if tombstones.isEmpty && (live.isEmpty || live[live.count - 1].id == ObjectID(live.count)) { return ObjectID(live.count) + 1 }
        var id: ObjectID = 1, i = 0
        while true {
            while i < live.count && live[i].id < id { i += 1 }
            if (i < live.count && live[i].id == id) || tombstones.contains(id) { id += 1 } else { return id }
        }
    }

    // MARK: IOMMUs

    func iommusChanged(_ iommus: [HostIOMMU]) {
        iommuPositions = [:]
        for (position, iommu) in iommus.enumerated() where iommuPositions[iommu.name] == nil {
            iommuPositions[iommu.name] = position
        }
    }

    // MARK: self-check (tests)

    /// Differences between these indexes and ones rebuilt from `state`, plus allocator
    /// answers checked against a scan. Empty when consistent.
    func inconsistencies(with state: SimState) -> [String] {
        let fresh = SimIndexes()
        fresh.rebuild(from: state)
        var problems: [String] = []
        if vfioOwners != fresh.vfioOwners { problems.append("vfioOwners") }
        if groupMembers != fresh.groupMembers { problems.append("groupMembers") }
        if driverRefs != fresh.driverRefs { problems.append("driverRefs") }
        if cdevFDs != fresh.cdevFDs { problems.append("cdevFDs") }
        if contextRefs != fresh.contextRefs { problems.append("contextRefs") }
        if liveRegions != fresh.liveRegions { problems.append("liveRegions") }
        if mappingRefs != fresh.mappingRefs { problems.append("mappingRefs") }
        if iommuPositions != fresh.iommuPositions { problems.append("iommuPositions") }
        if ordered.mapValues({ $0.map(\.id) }) != fresh.ordered.mapValues({ $0.map(\.id) })
            || ordered.mapValues({ $0.map(\.object) }) != fresh.ordered.mapValues({ $0.map(\.object) }) {
            problems.append("ordered objects")
        }
        let usedVfio = Set(state.devices.values.compactMap(\.vfioIndex))
        var vfio = 0
        while usedVfio.contains(vfio) { vfio += 1 }
        if lowestFreeVfioIndex() != vfio { problems.append("lowest free vfio index \(lowestFreeVfioIndex()), expected \(vfio)") }
        var fd: Int32 = 3
        while state.files[fd] != nil { fd += 1 }
        let got = lowestFreeFD { state.files[$0] != nil }
        if got != fd { problems.append("lowest free fd \(got), expected \(fd)") }
        for (cid, context) in state.contexts {
            var id: ObjectID = 1
            while context.objects[id] != nil || context.tombstones.contains(id) { id += 1 }
            for (oid, object) in context.objects where self.object(cid, oid) != object { problems.append("object \(oid) of context \(cid)") }
            let got = lowestFreeObjectID(cid, tombstones: context.tombstones)
            if got != id { problems.append("lowest free object ID of context \(cid) \(got), expected \(id)") }
        }
        for (id, memory) in state.memories where !memory.vaMapped && memory.fd == nil && !isMemoryReferenced(id) {
            if !collectable.contains(id) { problems.append("collectable memory \(id) is not tracked") }
        }
        return problems
    }
}

// MARK: mutation helpers (the only writers of the indexed parts of the state)

extension SimulatedKernel {
    func setDevice(_ address: PCIAddress, _ device: SimPCIDevice?) {
        let old: SimPCIDevice?
        if let device { old = state.devices.updateValue(device, forKey: address) } else { old = state.devices.removeValue(forKey: address) }
        indexes.deviceChanged(address, from: old, to: device)
        uevents.deviceChanged(address, from: old, to: device)
    }

    /// Changes a device in place; nothing happens if there is no device at `address`.
    func updateDevice(_ address: PCIAddress, _ change: (inout SimPCIDevice) -> Void) {
        guard var device = state.devices[address] else { return }
        change(&device)
        setDevice(address, device)
    }

    func setFile(_ fd: Int32, _ file: OpenFile?) {
        let old: OpenFile?
        if let file { old = state.files.updateValue(file, forKey: fd) } else { old = state.files.removeValue(forKey: fd) }
        if file == nil {
            state.fileOwners[fd] = nil
        } else if old == nil, state.currentProcess != 0 {
            state.fileOwners[fd] = state.currentProcess
        }
        indexes.fileChanged(fd, from: old, to: file)
    }

    func setMemory(_ id: Int, _ memory: GuestMemoryRecord?) {
        let old: GuestMemoryRecord?
        if let memory { old = state.memories.updateValue(memory, forKey: id) } else { old = state.memories.removeValue(forKey: id) }
        indexes.memoryChanged(id, from: old, to: memory)
    }

    /// Changes a guest memory record in place; nothing happens if it is gone.
    func updateMemory(_ id: Int, _ change: (inout GuestMemoryRecord) -> Void) {
        guard var memory = state.memories[id] else { return }
        change(&memory)
        setMemory(id, memory)
    }

    /// Drops a context with every object in it.
    func removeContext(_ cid: Int) {
        guard let context = state.contexts.removeValue(forKey: cid) else { return }
        for object in context.objects.values { indexes.objectChanged(from: object, to: nil) }
        indexes.contextRemoved(cid)
    }

    func setIOMMUs(_ iommus: [HostIOMMU]) {
        state.iommus = iommus
        indexes.iommusChanged(iommus)
    }
}
