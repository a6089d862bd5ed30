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
        var out: [String] = []
        for c in corpus.cases { out += runCase(c, vfioIndex: vfioIndex) }
        if let address = corpus.device, case .some(let driver) = original { try restore(address, to: driver) }
        return out
    }

    // MARK: one case

    struct Scope {
        var ids: [String: UInt64] = [:]
        var memories: [String: GuestMemory] = [:]
        var devices: [String: DeviceHandle] = [:]
        var eventFDs: [String: KernelFile] = [:]
        var memlockLimited = false
    }

    func runCase(_ c: Corpus.Case, vfioIndex: Int?) -> [String] {
        var out: [String] = []
        let fd: IommufdHandle
        do { fd = try port.openIommufd() } catch { return ["\(c.name):\(c.line) open /dev/iommu -> \(error.errno.name)"] }
        var scope = Scope()
        for call in c.calls {
            let args = call.args.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            let head = "\(c.name):\(call.line) \(call.op)" + (args.isEmpty ? "" : " " + args)
            do {
                let result = try perform(call, fd: fd, scope: &scope, vfioIndex: vfioIndex)
                out.append("\(head) -> ok" + (result.isEmpty ? "" : " " + result))
            } catch let error as KernelCallError {
                // A failed call's name stands for ID 0 (never an object), so that later calls
                // naming it reach the kernel and fail there, on both kernels alike.
                if let name = call.result {
                    scope.ids[name] = 0
                    if call.op == "mock_domain" { for f in ["stdev", "hwpt", "idev"] { scope.ids[name + "." + f] = 0 } }
                }
                out.append("\(head) -> \(error.errno.name)")
            } catch {
                out.append("\(head) -> corpus error: \(error)")
            }
        }
        for (_, dev) in scope.devices.sorted(by: { $0.key < $1.key }) { port.close(dev) }
        for (_, file) in scope.eventFDs.sorted(by: { $0.key < $1.key }) { port.closeEventFD(fd, file) }
        port.close(fd)
        for (_, memory) in scope.memories.sorted(by: { $0.key < $1.key }) { port.releaseGuestMemory(memory) }
        if scope.memlockLimited {
            do { try port.limitLockedMemory(nil) } catch { out.append("\(c.name):\(c.line) memlock (put back at the end) -> \(error.errno.name)") }
        }
        return out
    }

    struct CorpusError: Error, CustomStringConvertible { var description: String }

    /// Performs one call; returns what it printed after `ok`.
    func perform(_ call: Corpus.Call, fd: IommufdHandle, scope: inout Scope, vfioIndex: Int?) throws -> String {
        func text(_ key: String) -> String? { call.args.first { $0.key == key }?.value }
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
            if let name = call.result { scope.eventFDs[name] = r.eventFD }
            return "\(r.id)"
        case "close_eventq":
            guard let raw = text("q"), let file = scope.eventFDs.removeValue(forKey: raw) else { throw CorpusError(description: "q= names no open vEVENTQ") }
            port.closeEventFD(fd, file); return ""
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
        case "device_open":
            guard let vfioIndex else { throw CorpusError(description: "the corpus names no `device`") }
            let dev = try port.openVfioDevice(index: vfioIndex)
            if let name = call.result { scope.devices[name] = dev }
            return ""
        case "bind":
            let id = try port.bindIommufd(try device("dev"), iommufd: fd); bindID(UInt64(id)); return "\(id)"
        case "attach":
            let id = try port.attach(try device("dev"), ptID: try id("pt")); return "\(id)"
        case "detach":
            try port.detach(try device("dev")); return ""
        case "device_close":
            let dev = try device("dev")
            if let raw = text("dev") { scope.devices[raw] = nil }
            port.close(dev); return ""
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
