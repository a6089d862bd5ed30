import CVsmmuUAPI
import Foundation
import Testing
import VsmmuKernel
@testable import VsmmuLinux

/// Reads a protocol body (docs/remote-executor.md) independently of the client's codec.
struct WireReader {
    var bytes: [UInt8]
    var at = 0
    init(_ bytes: [UInt8]) { self.bytes = bytes }
    mutating func u32() -> UInt32 { defer { at += 4 }; return (0..<4).reduce(0) { $0 | UInt32(bytes[at + $1]) << (8 * UInt32($1)) } }
    mutating func i32() -> Int32 { Int32(bitPattern: u32()) }
    mutating func u64() -> UInt64 { defer { at += 8 }; return (0..<8).reduce(0) { $0 | UInt64(bytes[at + $1]) << (8 * UInt64($1)) } }
    mutating func data() -> [UInt8] { let n = Int(u32()); defer { at += n }; return Array(bytes[at..<at + n]) }
    mutating func string() -> String { String(decoding: data(), as: UTF8.self) }
}

func wireData(_ d: [UInt8]) -> [UInt8] { le32(UInt32(d.count)) + d }
func wireString(_ s: String) -> [UInt8] { wireData(Array(s.utf8)) }

/// An in-process executor on one end of a socketpair: answers HELLO itself and every
/// other request with `answer` (the reply's bytes after `seq`: result, then payload).
/// Records each request as (op, arguments).
final class FakeExecutor: @unchecked Sendable {
    struct Request { var op: UInt32; var arguments: [UInt8] }
    let clientFD: Int32
    private let serverFD: Int32
    private let lock = NSLock()
    private var recorded: [Request] = []
    private let answer: @Sendable (Request) -> [UInt8]?

    var requests: [Request] { lock.lock(); defer { lock.unlock() }; return recorded }

    /// `answer` returning nil: the executor closes the connection instead of answering.
    init(answer: @escaping @Sendable (Request) -> [UInt8]?) {
        var sv: [Int32] = [0, 0]
        precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &sv) == 0)
        clientFD = sv[0]
        serverFD = sv[1]
        self.answer = answer
        Thread.detachNewThread { [self] in serve() }
    }

    deinit { _ = Glibc.close(clientFD) }

    private func readExactly(_ n: Int) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: n)
        var got = 0
        while got < n {
            let r = out.withUnsafeMutableBytes { Glibc.read(serverFD, $0.baseAddress! + got, n - got) }
            if r <= 0 { return nil }
            got += r
        }
        return out
    }

    private func serve() {
        defer { Glibc.close(serverFD) }
        while let header = readExactly(4) {
            var h = WireReader(header)
            guard let body = readExactly(Int(h.u32())) else { return }
            var r = WireReader(body)
            let op = r.u32(), seq = r.u32()
            let request = Request(op: op, arguments: Array(body[8...]))
            let reply: [UInt8]
            if op == 0 {
                reply = le32(1) + wireString("6.12.0-fake aarch64")
            } else {
                lock.lock(); recorded.append(request); lock.unlock()
                guard let a = answer(request) else { return }
                if a.isEmpty { continue }      // never answers
                reply = a
            }
            let frame = le32(UInt32(4 + reply.count)) + le32(seq) + reply
            _ = frame.withUnsafeBytes { Glibc.write(serverFD, $0.baseAddress, $0.count) }
        }
    }
}

/// The IOCTL request as the executor receives it.
struct WireIoctl {
    var fd: Int32
    var request: UInt32
    var arg: [UInt8]
    var buffers: [[UInt8]]
    init(_ arguments: [UInt8]) {
        var r = WireReader(arguments)
        fd = r.i32(); request = r.u32(); arg = r.data()
        buffers = (0..<Int(r.u32())).map { _ in r.data() }
    }
}

func ioctlReply(_ result: Int32, arg: [UInt8], buffers: [[UInt8]]) -> [UInt8] {
    le32(UInt32(bitPattern: result)) + wireData(arg) + le32(UInt32(buffers.count)) + buffers.flatMap(wireData)
}

func put32(_ b: inout [UInt8], _ off: Int, _ v: UInt32) { b.replaceSubrange(off..<off + 4, with: le32(v)) }
func put64(_ b: inout [UInt8], _ off: Int, _ v: UInt64) { b.replaceSubrange(off..<off + 8, with: le64(v)) }
func get32(_ b: [UInt8], _ off: Int) -> UInt32 { var r = WireReader(Array(b[off..<off + 4])); return r.u32() }
func get64(_ b: [UInt8], _ off: Int) -> UInt64 { var r = WireReader(Array(b[off..<off + 8])); return r.u64() }

/// The executor's own addresses, as a buggy one might leave them in the struct.
let executorPointer: UInt64 = 0x7f00_dead_0000

func remote(_ fake: FakeExecutor, timeout: Double = 5) throws -> RemoteExecutor {
    try RemoteExecutor(readFD: fake.clientFD, writeFD: fake.clientFD, endpoint: "fake", timeout: timeout)
}

@Test func getHwInfoSendsTheCallersBufferAndTakesTheAnswerBack() throws {
    let regs = (0..<40).map { UInt8($0 + 1) }
    let fake = FakeExecutor { req in
        let w = WireIoctl(req.arguments)
        var arg = w.arg
        put32(&arg, 24, HWInfoType.armSMMUv3.rawValue)     // out_data_type
        put32(&arg, 12, 40)                        // data_len: what the driver wrote
        put64(&arg, 16, executorPointer)
        put64(&arg, 32, 0x4)                       // out_capabilities
        return ioctlReply(0, arg: arg, buffers: [regs + [UInt8](repeating: 0, count: 24)])
    }
    let r = try remote(fake)
    let info = try IoctlCalls(transport: r).getHwInfo(7, devID: 3, requestType: nil)
    let sent = WireIoctl(try #require(fake.requests.first).arguments)
    #expect(sent.fd == 7 && sent.request == 0x3B8A)
    #expect(sent.arg.count == 40)
    #expect(get32(sent.arg, 8) == 3 && get32(sent.arg, 12) == 64)     // dev_id, data_len
    #expect(get64(sent.arg, 16) != 0)                                  // the caller's pointer, as it is
    #expect(sent.buffers == [[UInt8](repeating: 0, count: 64)])       // the caller's 64 bytes
    #expect(info.dataType == HWInfoType.armSMMUv3)
    #expect(info.data == regs)                                         // landed in the caller's buffer
    #expect(info.capabilities == 0x4)
}

@Test func theStructComesBackWithTheCallersPointer() throws {
    let fake = FakeExecutor { req in
        var arg = WireIoctl(req.arguments).arg
        put64(&arg, 16, executorPointer)
        put32(&arg, 24, 0xAA)
        return ioctlReply(0, arg: arg, buffers: [[9, 8, 7, 6]])
    }
    let r = try remote(fake)
    var buffer: [UInt8] = [1, 2, 3, 4]
    var s = vsmmu_iommu_hw_info()
    s.size = 40
    s.data_len = 4
    try buffer.withUnsafeMutableBytes { b in
        let mine = UInt64(UInt(bitPattern: b.baseAddress))
        s.data_uptr = mine
        let result = withUnsafeMutableBytes(of: &s) { r.ioctl(7, 0x3B8A, $0) }
        #expect(result == 0)
        #expect(s.data_uptr == mine)       // never the executor's address
        #expect(s.data_type == 0xAA)
        let sent = WireIoctl(try #require(fake.requests.first).arguments)
        #expect(sent.buffers == [[1, 2, 3, 4]])
    }
    #expect(buffer == [9, 8, 7, 6])
}

@Test func hwptAllocCarriesTheVSTEAndAnEmptyBufferForANestParent() throws {
    let fake = FakeExecutor { req in
        var arg = WireIoctl(req.arguments).arg
        put32(&arg, 16, 9)                         // out_hwpt_id
        put64(&arg, 32, executorPointer)
        return ioctlReply(0, arg: arg, buffers: WireIoctl(req.arguments).buffers)
    }
    let r = try remote(fake)
    let calls = IoctlCalls(transport: r)
    let vste = le64(0x9) + le64(0x1234)
    #expect(try calls.hwptAlloc(3, flags: 0, devID: 2, ptID: 6, dataType: HWPTDataType.armSMMUv3, data: vste) == 9)
    #expect(try calls.hwptAlloc(3, flags: HWPTAllocFlags.nestParent, devID: 2, ptID: 1, dataType: 0, data: []) == 9)
    let nested = WireIoctl(fake.requests[0].arguments), parent = WireIoctl(fake.requests[1].arguments)
    #expect(nested.request == 0x3B89 && nested.arg.count == 48)
    #expect(get32(nested.arg, 28) == 16)
    #expect(nested.buffers == [vste])
    // no data: one pointer field all the same, with an empty buffer and a null pointer
    #expect(parent.buffers == [[]])
    #expect(get64(parent.arg, 32) == 0)
}

@Test func iovaRangesRegrowAfterEMSGSIZEThroughTheRemote() throws {
    let fake = FakeExecutor { req in
        let w = WireIoctl(req.arguments)
        var arg = w.arg
        let capacity = get32(arg, 8)
        put32(&arg, 8, 10)                         // 10 ranges exist
        put64(&arg, 16, executorPointer)
        if capacity < 10 { return ioctlReply(-Errno.EMSGSIZE.rawValue, arg: arg, buffers: w.buffers) }
        var ranges = [UInt8]()
        for i in 0..<UInt64(10) { ranges += le64(i << 32) + le64(i << 32 | 0xfff) }
        put64(&arg, 24, 4096)
        return ioctlReply(0, arg: arg, buffers: [ranges])
    }
    let r = try remote(fake)
    let result = try IoctlCalls(transport: r).ioasIovaRanges(3, ioas: 1)
    let first = WireIoctl(fake.requests[0].arguments), second = WireIoctl(fake.requests[1].arguments)
    #expect(first.request == 0x3B84 && first.arg.count == 32)
    #expect(first.buffers.map(\.count) == [8 * 16])       // num_iovas 8 × 16 bytes
    #expect(second.buffers.map(\.count) == [10 * 16])     // regrown to what the kernel asked
    #expect(result.ranges.count == 10)
    #expect(result.ranges[3] == IovaRange(start: 3 << 32, last: 3 << 32 | 0xfff))
    #expect(result.alignment == 4096)
}

@Test func requestsWithoutPointersSendNoBuffers() throws {
    let fake = FakeExecutor { req in
        var arg = WireIoctl(req.arguments).arg
        put32(&arg, 8, 5)
        return ioctlReply(0, arg: arg, buffers: [])
    }
    #expect(try IoctlCalls(transport: try remote(fake)).ioasAlloc(3) == 5)
    let w = WireIoctl(fake.requests[0].arguments)
    #expect(w.request == 0x3B81 && w.arg == le32(12) + le32(0) + le32(0) && w.buffers.isEmpty)
}

@Test func anExecutorThatGoesAwayIsAnErrorNamingIt() throws {
    let fake = FakeExecutor { _ in nil }
    let r = try remote(fake)
    do { _ = try IoctlCalls(transport: r).ioasAlloc(3); Issue.record("no error") } catch {
        #expect(error.call == "IOMMU_IOAS_ALLOC")
        #expect(error.errno == .EPIPE)
        #expect(error.detail.contains("remote executor at fake closed the connection"))
    }
    // and stays broken, for file operations too
    do { _ = try r.read("/sys/bus/pci/devices/0000:00:01.0/vendor"); Issue.record("no error") } catch {
        #expect(error.errno == .EPIPE && error.detail.contains("remote executor at fake"))
    }
}

@Test func anExecutorThatDoesNotAnswerTimesOut() throws {
    let fake = FakeExecutor { _ in [] }
    let r = try remote(fake, timeout: 0.3)
    let start = Date()
    do { _ = try r.listDirectory("/sys/bus/pci/devices"); Issue.record("no error") } catch {
        #expect(error.errno == .ETIMEDOUT)
        #expect(error.detail.contains("remote executor at fake did not answer LISTDIR"))
    }
    #expect(Date().timeIntervalSince(start) < 5)
}

@Test func fileOperationsSpeakTheProtocol() throws {
    let fake = FakeExecutor { req in
        var a = WireReader(req.arguments)
        switch req.op {
        case 4: return le32(3) + wireData(Array("0x10de\n".utf8))                         // READ
        case 6: return le32(2) + le32(2) + wireString("0000:09:01.0") + wireString("x")  // LISTDIR
        case 7: return a.string().hasSuffix("driver_override") ? le32(8) : le32(UInt32(bitPattern: -Errno.EACCES.rawValue))
        case 8: return le32(12)                                                            // MEMFD
        case 13: return le32(1) + le32(1) + le32(12) + wireString("/memfd:vsmmu:g0 (deleted)") + wireString("pos:\t0\n")
        default: return le32(UInt32(bitPattern: -Errno.EPROTO.rawValue))
        }
    }
    let r = try remote(fake)
    #expect(try r.read("/sys/x") == Array("0x10de\n".utf8))
    #expect(try r.listDirectory("/sys/bus/pci/devices") == ["0000:09:01.0", "x"])
    try r.write("/sys/bus/pci/devices/0000:09:01.0/driver_override", Array("vfio-pci".utf8))
    #expect(throws: KernelCallError.self) { try r.write("/etc/passwd", [0]) }
    #expect(try r.memfd(name: "vsmmu:g0", size: 4096, flags: 1) == 12)
    #expect(try r.heldFiles() == [HeldFile(fd: 12, target: "/memfd:vsmmu:g0 (deleted)", fdinfo: "pos:\t0\n")])
    var w = WireReader(fake.requests[2].arguments)
    #expect(w.string() == "/sys/bus/pci/devices/0000:09:01.0/driver_override" && w.data() == Array("vfio-pci".utf8))
    var m = WireReader(fake.requests[4].arguments)
    #expect(m.string() == "vsmmu:g0" && m.u64() == 4096 && m.u32() == 1)
    #expect(r.systemName().release == "6.12.0-fake")
}

@Test func hwptInvalidateSendsEntryLenTimesEntryNumBytes() throws {
    let fake = FakeExecutor { req in
        var arg = WireIoctl(req.arguments).arg
        put32(&arg, 24, 1)                         // entry_num: one handled
        put64(&arg, 8, executorPointer)
        return ioctlReply(-Errno.EINVAL.rawValue, arg: arg, buffers: WireIoctl(req.arguments).buffers)
    }
    let entries = (0..<32).map { UInt8($0) }
    let calls = IoctlCalls(transport: try remote(fake))
    do {
        _ = try calls.hwptInvalidate(3, hwptID: 8, dataType: InvalidateDataType.armSMMUv3,
                                 entryLen: 16, entryNum: 2, entries: entries)
        Issue.record("no error")
    } catch {
        #expect(error.errno == .EINVAL)
        #expect(!error.detail.contains("remote executor"))   // the kernel's answer, not the transport's
    }
    let w = WireIoctl(fake.requests[0].arguments)
    #expect(w.request == 0x3B8D && w.arg.count == 32)
    #expect(w.buffers == [entries])
}
