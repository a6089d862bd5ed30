// libFuzzer targets for the Swift parsers that take outside bytes (issue 13). Built only
// by scripts/fuzz.sh (VSMMU_FUZZ=1, -sanitize=fuzzer): libFuzzer supplies main, and
// VSMMU_FUZZ_TARGET picks the target:
//   topology       the topology compiler: YAML -> schema -> validator -> desired graph
//   agent-request  the agent's request decoder: socket bytes -> line -> envelope -> request -> topology
//   remote-reply   the remote executor client's reply decoder: a stream of replies to every call
import CVsmmuUAPI
import Foundation
import Glibc
@testable import VsmmuCommands
import VsmmuIPC
import VsmmuKernel
import VsmmuLinux
import VsmmuModel
import VsmmuPlanner
import VsmmuYAML

nonisolated(unsafe) var target = ""
nonisolated(unsafe) var host: HostDescription?
nonisolated(unsafe) var devNull: Int32 = -1

// SwiftPM links an executable with main defined as <module>_main; here that hands over to
// libFuzzer's driver (its own main is then not linked in).
@_extern(c, "LLVMFuzzerRunDriver")
func runDriver(_ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
               _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32) -> Int32

@_cdecl("vsmmu_fuzz_main")
public func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    var count = argc
    var vector = argv
    return runDriver(&count, &vector) { data, size in testOneInput(data, size) }
}

@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> Int32 {
    target = ProcessInfo.processInfo.environment["VSMMU_FUZZ_TARGET"] ?? ""
    guard ["topology", "agent-request", "remote-reply"].contains(target) else {
        FileHandle.standardError.write(Data("VSMMU_FUZZ_TARGET must be topology, agent-request or remote-reply\n".utf8))
        exit(2)
    }
    let hostFile = ProcessInfo.processInfo.environment["VSMMU_FUZZ_HOST"] ?? "examples/hosts/grace-2smmu-cmdqv.yaml"
    host = try? HostDescription.load(path: hostFile)
    if host == nil { FileHandle.standardError.write(Data("cannot load \(hostFile)\n".utf8)); exit(2) }
    devNull = open("/dev/null", O_WRONLY | O_CLOEXEC)
    signal(SIGPIPE, SIG_IGN)
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = size > 0 && data != nil ? Array(UnsafeBufferPointer(start: data, count: size)) : []
    switch target {
    case "topology": compile(SourceText(path: "fuzz.yaml", bytes: bytes))
    case "agent-request": agentRequest(bytes)
    default: remoteReplies(bytes)
    }
    return 0
}

/// A finding: libFuzzer keeps the input that led here.
func finding(_ what: String) -> Never { fatalError("fuzz finding: \(what)") }

/// Every diagnostic points at a line of the file that its snippet can show, or (libyaml's
/// end of stream after a last line with no newline) at column 1 of the line after it.
func checkLocated(_ diagnostics: [Diagnostic], _ source: SourceText) {
    for d in diagnostics where d.mark.column < 1 || source.line(d.mark.line) == nil
        && !(d.mark.line == source.lineCount + 1 && d.mark.column == 1) {
        finding("diagnostic outside the file: \(d)")
    }
}

func compile(_ source: SourceText) {
    let topology: Topology
    do { topology = try Topology.parse(source) } catch {
        if error.diagnostics.isEmpty { finding("a load failure without a diagnostic") }
        checkLocated(error.diagnostics, source)
        return
    }
    guard let host else { return }
    let result = Validator.validate(topology, host: host)
    checkLocated(result.diagnostics, source)
    guard result.isValid else { return }
    _ = try? DesiredState.build(topology: result.placing(topology), host: host, resolved: result.resolved, previous: Allocations(), users: SimulatedUserResolver())
}

/// The bytes as a client would send them on the agent's socket, read with the agent's
/// limits, decoded as the agent decodes them.
func agentRequest(_ bytes: [UInt8]) {
    var sv: [Int32] = [0, 0]
    guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &sv) == 0 else { finding("socketpair: \(errno)") }
    let written = bytes.withUnsafeBytes { b in b.isEmpty ? 0 : send(sv[1], b.baseAddress, b.count, Int32(MSG_NOSIGNAL)) }
    if written != bytes.count { finding("short write to the socketpair (\(written) of \(bytes.count))") }
    close(sv[1])
    let channel = Channel(fd: sv[0])
    AgentLimits.prepare(channel)
    channel.lineTimeout = 1
    while let line = channel.readLine() {
        guard let envelope = try? JSONDecoder().decode(AgentClient.Envelope.self, from: Data(line.utf8)) else { continue }
        guard let request = envelope.request else { continue }
        if let content = request.content { compile(SourceText(path: request.file ?? "request", bytes: content)) }
        _ = try? JSONEncoder().encode(request)
    }
}

/// The bytes as the replies of a remote executor to one call of each kind.
func remoteReplies(_ bytes: [UInt8]) {
    let fd = vsmmu_memfd_create("vsmmu-fuzz-replies", vsmmu_memfd_flags(0, 0))
    guard fd >= 0 else { finding("memfd_create: \(-fd)") }
    defer { close(fd) }
    _ = bytes.withUnsafeBytes { b in b.isEmpty ? 0 : pwrite(fd, b.baseAddress, b.count, 0) }
    guard let r = try? RemoteExecutor(readFD: fd, writeFD: devNull, endpoint: "fuzz", timeout: 1) else { return }
    _ = try? r.listDirectory("/sys/bus/pci/devices")
    _ = try? r.heldFiles()
    _ = try? r.read("/sys/bus/pci/devices/0000:09:01.0/vendor")
    _ = try? r.readLink("/sys/bus/pci/devices/0000:09:01.0/driver")
    _ = r.status("/dev/iommu")
    _ = try? r.open("/dev/iommu", flags: O_RDWR)
    _ = try? r.memfd(name: "m", size: 4096, flags: 0)
    _ = try? r.mapAnonymous(size: 4096, hugepageLog2: nil)
    // GET_HW_INFO: a struct with a pointer field and a 64-byte buffer behind it.
    var buffer = [UInt8](repeating: 0, count: 64)
    buffer.withUnsafeMutableBytes { out in
        var info = vsmmu_iommu_hw_info()
        info.size = UInt32(MemoryLayout<vsmmu_iommu_hw_info>.size)
        info.data_len = 64
        info.data_uptr = UInt64(UInt(bitPattern: out.baseAddress))
        _ = withUnsafeMutableBytes(of: &info) { r.ioctl(3, UInt32(VSMMU_IOMMU_GET_HW_INFO), $0) }
        if info.data_uptr != UInt64(UInt(bitPattern: out.baseAddress)) { finding("the caller's pointer field was not restored") }
    }
    _ = try? r.listDirectory("/dev/vfio/devices")
}
