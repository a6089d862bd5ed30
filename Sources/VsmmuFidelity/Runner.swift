import VsmmuKernel

/// Runs a corpus on a kernel port and prints one line per call:
/// `CASE:LINE OP ARGS -> ok RESULT` or `-> ERRNO`. Each case gets a fresh iommufd context
/// and everything it opened is closed at its end (device cdevs, event fds, the context,
/// memfds), so cases do not see each other's objects.
public struct CorpusRunner {
    public struct SetupError: Error, CustomStringConvertible {
        public var description: String
    }

    let port: KernelPort
    let corpus: Corpus

    public init(port: KernelPort, corpus: Corpus) { self.port = port; self.corpus = corpus }

    /// Runs every case. With a `device` in the corpus it is moved to vfio-pci first and
    /// given back to its original driver (or none) at the end, both through sysfs.
    public func run() throws(SetupError) -> [String] {
        var vfioIndex: Int?
        var original: String??
        if let address = corpus.device {
            let (index, driver) = try bindToVFIO(address)
            vfioIndex = index
            original = .some(driver)
        }
        var out: [String] = corpus.generated.map {
            "generate:\($0.line) \($0.profile.rawValue) \($0.seeds.lowerBound)-\($0.seeds.upperBound) fingerprint 0x\(String($0.fingerprint, radix: 16))"
        }
        for c in corpus.cases {
            out += runCase(c, vfioIndex: vfioIndex)
            // a case that moved the device leaves it as the next one expects: on vfio-pci
            if let address = corpus.device, let problem = onVFIOAgain(address) { out.append("\(c.name):0 back on vfio-pci -> \(problem)") }
        }
        if let address = corpus.device, case .some(let driver) = original { try restore(address, to: driver) }
        return out
    }

    // MARK: one case

    /// A closed context's handle: every call on it is EBADF on every kernel (the number a
    /// closed fd had may be reused by the next open).
    static let closedContext = IommufdHandle(fd: -1)
    static let closedDevice = DeviceHandle(fd: -1)

    struct Scope {
        var ids: [String: UInt64] = [:]
        var memories: [String: GuestMemory] = [:]
        var devices: [String: DeviceHandle] = [:]
        var eventFDs: [String: (context: IommufdHandle, file: KernelFile)] = [:]
        /// The case's first context, then those opened by `iommufd`.
        var first = CorpusRunner.closedContext
        var contexts: [String: IommufdHandle] = [:]
        var memlockLimited = false
    }

    func runCase(_ c: Corpus.Case, vfioIndex: Int?) -> [String] {
        var out: [String] = []
        var scope = Scope()
        do { scope.first = try port.openIommufd() } catch { return ["\(c.name):\(c.line) open /dev/iommu -> \(error.errno.name)"] }
        for call in c.calls {
            let args = call.args.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            let head = "\(c.name):\(call.line) \(call.op)" + (args.isEmpty || c.generated ? "" : " " + args)
            do {
                let result = try perform(call, scope: &scope, vfioIndex: vfioIndex)
                out.append("\(head) -> ok" + (result.isEmpty ? "" : " " + result))
            } catch let error as KernelCallError {
                // A failed call's name stands for ID 0 (never an object), so that later calls
                // naming it reach the kernel and fail there, on both kernels alike.
                if let name = call.result {
                    scope.ids[name] = 0
                    if call.op == "mock_domain" { for f in ["stdev", "hwpt", "idev"] { scope.ids[name + "." + f] = 0 } }
                    // a cdev that did not open is fd -1: calls on it are EBADF on every kernel
                    if call.op == "device_open" { scope.devices[name] = Self.closedDevice }
                }
                out.append("\(head) -> \(error.errno.name)")
            } catch {
                out.append("\(head) -> corpus error: \(error)")
            }
        }
        closeEverything(&scope)
        if scope.memlockLimited {
            do { try port.limitLockedMemory(nil) } catch { out.append("\(c.name):\(c.line) memlock (put back at the end) -> \(error.errno.name)") }
        }
        return out
    }

    /// What a process exit closes: cdevs, event fds, contexts; then its memory goes.
    func closeEverything(_ scope: inout Scope) {
        for (_, dev) in scope.devices.sorted(by: { $0.key < $1.key }) where dev != Self.closedDevice { port.close(dev) }
        for (_, q) in scope.eventFDs.sorted(by: { $0.key < $1.key }) { port.closeEventFD(q.context, q.file) }
        for fd in [scope.first] + scope.contexts.sorted(by: { $0.key < $1.key }).map(\.value) where fd != Self.closedContext { port.close(fd) }
        for (_, memory) in scope.memories.sorted(by: { $0.key < $1.key }) { port.releaseGuestMemory(memory) }
        scope.devices = [:]; scope.eventFDs = [:]; scope.contexts = [:]; scope.memories = [:]
        scope.first = Self.closedContext
    }

    struct CorpusError: Error, CustomStringConvertible { var description: String }

    /// Performs one call; returns what it printed after `ok`.
    func perform(_ call: Corpus.Call, scope: inout Scope, vfioIndex: Int?) throws -> String {
        func text(_ key: String) -> String? { call.args.first { $0.key == key }?.value }
        let fd: IommufdHandle
        if let name = text("fd") {
            guard let named = scope.contexts[name] else { throw CorpusError(description: "fd=\(name) names no context (`NAME = iommufd`)") }
            fd = named
        } else {
            fd = scope.first
        }
        func number(_ key: String, default value: UInt64? = nil) throws -> UInt64 {
            guard let raw = text(key) else {
                if let value { return value }
                throw CorpusError(description: "missing \(key)=")
            }
            if let n = Self.integer(raw) { return n }
            if let n = Corpus.constants[raw] { return n }
            if let n = scope.ids[raw] { return n }
            throw CorpusError(description: "\(key)=\(raw) names nothing bound in this case")
        }
        func id(_ key: String) throws -> ObjectID { ObjectID(truncatingIfNeeded: try number(key)) }
        func u32(_ key: String, default value: UInt64? = nil) throws -> UInt32 { UInt32(truncatingIfNeeded: try number(key, default: value)) }
        func bytes(_ key: String) throws -> [UInt8] {
            guard let raw = text(key) else { return [] }
            guard let b = Self.byteString(raw) else { throw CorpusError(description: "\(key)=\(raw) is not hex:… or le64:…") }
            return b
        }
        func device(_ key: String) throws -> DeviceHandle {
            guard let raw = text(key), let d = scope.devices[raw] else { throw CorpusError(description: "\(key)= names no open device") }
            return d
        }
        func bindID(_ value: UInt64) { if let name = call.result { scope.ids[name] = value } }

        switch call.op {
        case "ioas_alloc":
            let id = try port.ioasAlloc(fd); bindID(UInt64(id)); return "\(id)"
        case "destroy":
            try port.destroy(fd, id: try id("id")); return ""
        case "iova_ranges":
            let r = try port.ioasIovaRanges(fd, ioas: try id("ioas"))
            return r.ranges.map { "[\(hex($0.start)), \(hex($0.last))]" }.joined(separator: " ") + " alignment \(hex(r.alignment))"
        case "memfd":
            let memory = try port.createGuestMemory(name: call.result ?? "corpus", size: try number("size"), backing: .memfd, hugepageSize: nil)
            if let name = call.result { scope.memories[name] = memory }
            return ""
        case "map_file":
            guard let raw = text("mem"), let memory = scope.memories[raw], let file = memory.file else { throw CorpusError(description: "mem= names no memfd") }
            let iova = try port.ioasMap(fd, ioas: try id("ioas"), flags: IOASMapFlags(rawValue: try u32("flags")), source: .file(file, offset: try number("offset", default: 0)),
                                        length: try number("length"), iova: try number("iova"))
            bindID(iova); return hex(iova)
        case "unmap":
            let n = try port.ioasUnmap(fd, ioas: try id("ioas"), iova: try number("iova"), length: try number("length"))
            return hex(n)
        case "hwpt_alloc":
            let id = try port.hwptAlloc(fd, flags: HWPTAllocFlags(rawValue: try u32("flags", default: 0)), devID: try id("dev"), ptID: try id("pt"),
                                        dataType: HWPTDataType(rawValue: try u32("type", default: 0)), data: try bytes("data"))
            bindID(UInt64(id)); return "\(id)"
        case "hw_info":
            let info = try port.getHwInfo(fd, devID: try id("dev"), requestType: text("type") == nil ? nil : HWInfoType(rawValue: try u32("type")))
            // out_max_pasid_log2 is per device (its PASID capability); printed when non-zero
            return "type \(hex(info.dataType.rawValue)) capabilities \(hex(info.capabilities.rawValue))"
                + (info.maxPasidLog2 == 0 ? "" : " max_pasid_log2 \(info.maxPasidLog2)")
        case "viommu_alloc":
            let r = try port.viommuAlloc(fd, type: VIOMMUType(rawValue: try u32("type")), devID: try id("dev"), hwptID: try id("hwpt"), data: try bytes("data"))
            bindID(UInt64(r.id)); return "\(r.id)"
        case "vdevice_alloc":
            let id = try port.vdeviceAlloc(fd, viommuID: try id("viommu"), devID: try id("dev"), virtID: try number("virt"))
            bindID(UInt64(id)); return "\(id)"
        case "veventq_alloc":
            let r = try port.veventqAlloc(fd, viommuID: try id("viommu"), type: VEventQType(rawValue: try u32("type")), depth: try u32("depth"))
            bindID(UInt64(r.id))
            if let name = call.result { scope.eventFDs[name] = (fd, r.eventFD) }
            return "\(r.id)"
        case "close_eventq":
            // a vEVENTQ whose allocation failed has no fd: nothing to close, on any kernel
            guard let raw = text("q"), let q = scope.eventFDs.removeValue(forKey: raw) else { return "none open" }
            port.closeEventFD(q.context, q.file); return ""
        case "hw_queue_alloc":
            let id = try port.hwQueueAlloc(fd, viommuID: try id("viommu"), type: HWQueueType(rawValue: try u32("type")), index: try u32("index"),
                                           iova: try number("iova"), length: try number("length"))
            bindID(UInt64(id)); return "\(id)"
        case "mock_domain":
            let m = try port.mockDomain(fd, ptID: try id("pt"))
            if let name = call.result {
                scope.ids[name + ".stdev"] = UInt64(m.stdevID); scope.ids[name + ".hwpt"] = UInt64(m.hwptID); scope.ids[name + ".idev"] = UInt64(m.idevID)
            }
            return "stdev \(m.stdevID) hwpt \(m.hwptID) idev \(m.idevID)"
        case "mock_replace":
            let id = try port.mockDomainReplace(fd, stdevID: try id("stdev"), ptID: try id("pt"))
            return "\(id)"
        case "iommufd":
            let handle = try port.openIommufd()
            guard let name = call.result else { port.close(handle); return "" }
            if let old = scope.contexts[name], old != Self.closedContext { port.close(old) }
            scope.contexts[name] = handle
            return ""
        case "close":
            if fd != Self.closedContext { port.close(fd) }
            if let name = text("fd") { scope.contexts[name] = Self.closedContext } else { scope.first = Self.closedContext }
            return ""
        case "exit":
            closeEverything(&scope)
            scope.first = try port.openIommufd()
            return ""
        case "mmap":
            let memory = try port.createGuestMemory(name: call.result ?? "corpus", size: try number("size"), backing: .anonymous, hugepageSize: nil)
            if let name = call.result { scope.memories[name] = memory }
            return ""
        case "munmap":
            guard let raw = text("buf"), let memory = scope.memories.removeValue(forKey: raw) else { throw CorpusError(description: "buf= names no mmap") }
            port.releaseGuestMemory(memory); return ""
        case "map_user":
            let va: UInt64
            if let raw = text("buf") {
                guard let memory = scope.memories[raw], memory.file == nil else { throw CorpusError(description: "buf= names no mmap") }
                va = memory.userVA &+ (try number("offset", default: 0))
            } else {
                va = try number("va")
            }
            let iova = try port.ioasMap(fd, ioas: try id("ioas"), flags: IOASMapFlags(rawValue: try u32("flags")), source: .userVA(va),
                                        length: try number("length"), iova: try number("iova"))
            bindID(iova); return hex(iova)
        case "override", "unbind", "probe", "group":
            guard let address = corpus.device else { throw CorpusError(description: "the corpus names no `device`") }
            return try binding(call.op, address: address, driver: text("driver"))
        case "device_open":
            guard let vfioIndex else { throw CorpusError(description: "the corpus names no `device`") }
            let dev = try port.openVfioDevice(index: vfioIndex)
            if let name = call.result { scope.devices[name] = dev }
            return ""
        case "bind":
            // vsmmu-remote answers EBADF for an fd it does not hold before the kernel looks
            // (which refuses an already bound cdev first): the answer would not be the kernel's
            if fd == Self.closedContext { bindID(0); return "closed context (not sent)" }
            let id = try port.bindIommufd(try device("dev"), iommufd: fd); bindID(UInt64(id)); return "\(id)"
        case "attach":
            let id = try port.attach(try device("dev"), ptID: try id("pt")); return "\(id)"
        case "detach":
            try port.detach(try device("dev")); return ""
        case "device_close":
            let dev = try device("dev")
            if let raw = text("dev") { scope.devices[raw] = nil }
            if dev != Self.closedDevice { port.close(dev) }
            return ""
        case "memlock":
            let limit = text("limit") == nil ? nil : try number("limit")
            try port.limitLockedMemory(limit)
            scope.memlockLimited = limit != nil
            return ""
        case "option":
            guard let option = IommuOption(rawValue: try u32("option")) else { throw CorpusError(description: "option= is not an IOMMU_OPTION id") }
            let set = text("set") == nil ? nil : try number("set")
            return "\(try port.iommuOption(fd, option: option, objectID: ObjectID(truncatingIfNeeded: try number("id", default: 0)), set: set))"
        case "invalidate":
            let entries = try bytes("entries")
            let entryLen = try u32("entry_len")
            let num = try u32("num", default: entryLen == 0 ? 0 : UInt64(entries.count) / UInt64(entryLen))
            let done = try port.hwptInvalidate(fd, hwptID: try id("hwpt"), dataType: InvalidateDataType(rawValue: try u32("type", default: UInt64(InvalidateDataType.armSMMUv3.rawValue))),
                                               entryLen: entryLen, entryNum: num, entries: entries)
            return "\(done)"
        default:
            throw CorpusError(description: "unknown op \(call.op)")
        }
    }

    // MARK: the device

    /// The binding writes and the group read (docs/kernel-interface.md §8); each prints
    /// where the device is afterwards.
    func binding(_ op: String, address: PCIAddress, driver: String?) throws -> String {
        switch op {
        case "override": try port.writeDriverOverride(address, driver == "none" ? nil : driver)
        case "unbind": try port.unbindDriver(address, driver: driver ?? "")
        case "probe": try port.driversProbe(address)
        default:
            guard let group = try port.pciDevice(address)?.iommuGroup else { return "no group" }
            var out = "group \(group):"
            var viable = true
            for member in try port.iommuGroupMembers(group) {
                let driver = try port.pciDevice(member)?.driver
                if let driver, !driver.hasPrefix("vfio") { viable = false }
                out += " \(member) \(driver ?? "none")"
            }
            return out + (viable ? " viable" : " not viable")
        }
        guard let after = try port.pciDevice(address) else { return "gone" }
        return "driver \(after.driver ?? "none") override \(after.driverOverride ?? "none")"
    }

    /// Puts the device back on vfio-pci with driver_override vfio-pci (as `bindToVFIO`
    /// left it) when a case moved it; returns what failed.
    func onVFIOAgain(_ address: PCIAddress) -> String? {
        do {
            guard let now = try port.pciDevice(address) else { return "no device" }
            if now.driver == "vfio-pci" && now.driverOverride == "vfio-pci" { return nil }
            try port.writeDriverOverride(address, "vfio-pci")
            if let driver = now.driver, driver != "vfio-pci" { try port.unbindDriver(address, driver: driver) }
            if now.driver != "vfio-pci" { try port.driversProbe(address) }
            return try port.pciDevice(address)?.driver == "vfio-pci" ? nil : "not bound"
        } catch {
            return "\(error)"
        }
    }

    func bindToVFIO(_ address: PCIAddress) throws(SetupError) -> (index: Int, original: String?) {
        do {
            guard let before = try port.pciDevice(address) else { throw SetupError(description: "no PCI device \(address)") }
            if before.driver != "vfio-pci" {
                try port.writeDriverOverride(address, "vfio-pci")
                if let driver = before.driver { try port.unbindDriver(address, driver: driver) }
                try port.driversProbe(address)
            }
            guard let after = try port.pciDevice(address), after.driver == "vfio-pci", let index = after.vfioDevIndex else {
                throw SetupError(description: "\(address) did not bind to vfio-pci")
            }
            return (index, before.driver == "vfio-pci" ? "vfio-pci" : before.driver)
        } catch let error as SetupError {
            throw error
        } catch {
            throw SetupError(description: "moving \(address) to vfio-pci: \(error)")
        }
    }

    func restore(_ address: PCIAddress, to driver: String?) throws(SetupError) {
        guard driver != "vfio-pci" else { return }
        do {
            try port.writeDriverOverride(address, nil)
            try port.unbindDriver(address, driver: "vfio-pci")
            if driver != nil { try port.driversProbe(address) }
        } catch {
            throw SetupError(description: "giving \(address) back to \(driver ?? "no driver"): \(error)")
        }
    }

    // MARK: values

    static func integer(_ raw: String) -> UInt64? {
        raw.hasPrefix("0x") ? UInt64(raw.dropFirst(2), radix: 16) : UInt64(raw)
    }

    /// `hex:0011ff` or `le64:W0,W1,…` (each word little-endian, 8 bytes).
    static func byteString(_ raw: String) -> [UInt8]? {
        if raw.hasPrefix("hex:") {
            let digits = Array(raw.dropFirst(4))
            guard digits.count % 2 == 0 else { return nil }
            var out: [UInt8] = []
            for i in stride(from: 0, to: digits.count, by: 2) {
                guard let b = UInt8(String(digits[i...i + 1]), radix: 16) else { return nil }
                out.append(b)
            }
            return out
        }
        if raw.hasPrefix("le64:") {
            var out: [UInt8] = []
            for word in raw.dropFirst(5).split(separator: ",") {
                guard let w = integer(String(word)) else { return nil }
                out += (0..<8).map { UInt8(truncatingIfNeeded: w >> (8 * UInt64($0))) }
            }
            return out
        }
        return nil
    }
}
