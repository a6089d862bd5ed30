import Foundation
import VsmmuFiles
import VsmmuKernel
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Reads and writes host.yaml. The project supplies a YAML codec; tests may use JSON.
public protocol HostFileCodec {
    func decode(_ text: String, path: String) throws -> HostDescription
    func encode(_ host: HostDescription) -> String
}

public struct SimStoreError: Error, Hashable, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// A mutating call with its inputs, as written to calls.log and replayed by `SimStore.open`.
enum SimRequest: Hashable, Codable {
    case openIommufd
    /// close(2) of any fd (iommufd, cdev, event fd).
    case close(fd: Int32)
    case destroy(fd: Int32, id: ObjectID)
    case ioasAlloc(fd: Int32)
    case ioasMap(fd: Int32, ioas: ObjectID, flags: IOASMapFlags, source: MapSource, length: UInt64, iova: UInt64)
    case ioasUnmap(fd: Int32, ioas: ObjectID, iova: UInt64, length: UInt64)
    case hwptAlloc(fd: Int32, flags: HWPTAllocFlags, devID: ObjectID, ptID: ObjectID, dataType: HWPTDataType, data: [UInt8])
    case viommuAlloc(fd: Int32, type: VIOMMUType, devID: ObjectID, hwptID: ObjectID, data: [UInt8])
    case vdeviceAlloc(fd: Int32, viommuID: ObjectID, devID: ObjectID, virtID: UInt64)
    case veventqAlloc(fd: Int32, viommuID: ObjectID, type: VEventQType, depth: UInt32)
    case hwQueueAlloc(fd: Int32, viommuID: ObjectID, type: HWQueueType, index: UInt32, iova: UInt64, length: UInt64)
    case mockDomain(fd: Int32, ptID: ObjectID)
    case mockDomainReplace(fd: Int32, stdevID: ObjectID, ptID: ObjectID)
    case openVfioDevice(index: Int)
    case bind(dev: Int32, iommufd: Int32)
    case attach(dev: Int32, ptID: ObjectID)
    case detach(dev: Int32)
    case createGuestMemory(name: String, size: UInt64, backing: GuestMemoryBacking, hugepageSize: UInt64?)
    case releaseGuestMemory(GuestMemory)
    case writeDriverOverride(address: PCIAddress, driver: String?)
    case unbindDriver(address: PCIAddress, driver: String)
    case driversProbe(address: PCIAddress)
    case chownVfioDevice(index: Int, uid: UInt32, gid: UInt32)
    case processExit
    case iommuOption(fd: Int32, option: UInt32, objectID: ObjectID, value: UInt64)
    case spawnProcess(pid: Int32, command: String)
    case transferFiles(fds: [Int32], process: Int)
    /// Not a call: the calls after it are this process's (SimProcesses.swift).
    case switchProcess(Int)
    /// Not a call: prlimit(RLIMIT_MEMLOCK) of a process (SimMemlock.swift).
    case setMemlockLimit(process: Int, bytes: UInt64?)
}

/// One line of calls.log.
struct LogEntry: Codable {
    var seq: UInt64
    var call: SimRequest
}

extension SimulatedKernel {
    /// Called by the funnel after every executed mutating call (refused ones too: a
    /// refused UNMAP may already have removed mappings, docs/kernel-interface.md §2.9).
    func appendToLog(_ request: SimRequest) {
        state.appliedSequence += 1
        guard let store else { return }
        do {
            try store.append(LogEntry(seq: state.appliedSequence, call: request))
        } catch {
            persistenceError = "\(error)"
        }
    }

    /// Re-executes a logged call: same inputs, same deterministic allocator, so the same
    /// IDs and fds. No delay, fault injection, counting, trace or logging.
    func replay(_ request: SimRequest) {
        switch request {
        case .openIommufd: _ = try? openIommufdImpl()
        case .close(let fd): _ = closeFD(fd)
        case .destroy(let fd, let id): try? destroyImpl(fd, id: id)
        case .ioasAlloc(let fd): _ = try? ioasAllocImpl(fd)
        case .ioasMap(let fd, let ioas, let flags, let source, let length, let iova):
            _ = try? ioasMapImpl(fd, ioas: ioas, flags: flags, source: source, length: length, iova: iova)
        case .ioasUnmap(let fd, let ioas, let iova, let length):
            _ = try? ioasUnmapImpl(fd, ioas: ioas, iova: iova, length: length)
        case .hwptAlloc(let fd, let flags, let devID, let ptID, let dataType, let data):
            _ = try? hwptAllocImpl(fd, flags: flags, devID: devID, ptID: ptID, dataType: dataType, data: data)
        case .viommuAlloc(let fd, let type, let devID, let hwptID, let data):
            _ = try? viommuAllocImpl(fd, type: type, devID: devID, hwptID: hwptID, data: data)
        case .vdeviceAlloc(let fd, let viommuID, let devID, let virtID):
            _ = try? vdeviceAllocImpl(fd, viommuID: viommuID, devID: devID, virtID: virtID)
        case .veventqAlloc(let fd, let viommuID, let type, let depth):
            _ = try? veventqAllocImpl(fd, viommuID: viommuID, type: type, depth: depth)
        case .hwQueueAlloc(let fd, let viommuID, let type, let index, let iova, let length):
            _ = try? hwQueueAllocImpl(fd, viommuID: viommuID, type: type, index: index, iova: iova, length: length)
        case .mockDomain(let fd, let ptID): _ = try? mockDomainImpl(fd, ptID: ptID)
        case .mockDomainReplace(let fd, let stdevID, let ptID): _ = try? mockDomainReplaceImpl(fd, stdevID: stdevID, ptID: ptID)
        case .openVfioDevice(let index): _ = try? openVfioDeviceImpl(index: index)
        case .bind(let dev, let iommufd): _ = try? bindImpl(dev, iommufd: iommufd)
        case .attach(let dev, let ptID): _ = try? attachImpl(dev, ptID: ptID)
        case .detach(let dev): try? detachImpl(dev)
        case .createGuestMemory(let name, let size, let backing, let hugepageSize):
            _ = try? createGuestMemoryImpl(name: name, size: size, backing: backing, hugepageSize: hugepageSize)
        case .releaseGuestMemory(let memory): _ = releaseGuestMemoryImpl(memory)
        case .writeDriverOverride(let address, let driver): try? writeDriverOverrideImpl(address, driver)
        case .unbindDriver(let address, let driver): try? unbindDriverImpl(address, driver: driver)
        case .driversProbe(let address): try? driversProbeImpl(address)
        case .chownVfioDevice(let index, let uid, let gid): try? chownImpl(index: index, uid: uid, gid: gid)
        case .processExit: processExitImpl()
        case .iommuOption(let fd, let option, let objectID, let value):
            _ = try? iommuOptionImpl(fd, option: option, objectID: objectID, set: value == UInt64.max ? nil : value)
        case .spawnProcess(let pid, let command): spawnProcessImpl(pid: pid, command: command)
        case .transferFiles(let fds, let process): try? transferFilesImpl(fds, to: process)
        case .switchProcess(let n): state.currentProcess = n
        case .setMemlockLimit(let process, let bytes): setMemlockLimitImpl(bytes, process: process)
        }
    }
}

/// Keeps a simulated kernel in a state directory across CLI runs (docs/contract.md §6):
///
/// - `host.yaml`: the host-level part as a Host description, through the codec; the user
///   may edit it to simulate drift (it wins on the next open for what was edited);
/// - `kernel.json`: a snapshot of everything else (contexts, objects, fds, vfio indexes,
///   overrides, native drivers, owners, guest memory);
/// - `calls.log`: a redo log, one JSON line per executed mutating call since the
///   snapshot, appended with write(2) right after the call, so a process killed at any
///   point leaves exactly the calls that completed.
public final class SimStore {
    public let directory: String
    let codec: any HostFileCodec
    /// The directory, opened once and checked; its files are reached with openat(2) and
    /// O_NOFOLLOW (a `calls.log` link is refused, never truncated through).
    let files: StateDirectory
    private var logFD: Int32 = -1
    static let hostName = "host.yaml", kernelName = "kernel.json", logName = "calls.log"
    var hostPath: String { directory + "/" + Self.hostName }
    var kernelPath: String { directory + "/" + Self.kernelName }
    var logPath: String { directory + "/" + Self.logName }

    init(files: StateDirectory, codec: any HostFileCodec) {
        self.files = files
        self.directory = files.path
        self.codec = codec
    }

    deinit {
        if logFD >= 0 { _ = closeFile(logFD) }
    }

    /// Opens the simulated kernel kept in `directory` (created from `initialHost` the
    /// first time): load kernel.json, replay calls.log, apply the user's host.yaml edits,
    /// then save (compacting the log). Throws on a bad VSMMU_SIM_FAIL/VSMMU_SIM_DELAY_MS,
    /// an unreadable state, or a host.yaml the codec rejects.
    public static func open(directory: String, initialHost: HostDescription, codec: any HostFileCodec,
                            environment: [String: String] = ProcessInfo.processInfo.environment) throws -> SimulatedKernel {
        _ = try SimulatedKernel.configuration(from: environment)   // a bad VSMMU_SIM_* setting fails before any write
        let dir: StateDirectory
        do { dir = try StateDirectory(directory) } catch { throw SimStoreError(error.message) }
        let store = SimStore(files: dir, codec: codec)
        guard let snapshot = try store.read(kernelName) else {
            let kernel = SimulatedKernel(host: initialHost, environment: environment)
            if let problem = kernel.configurationError { throw problem }
            kernel.store = store
            try store.save(kernel)
            return kernel
        }
        let state: SimState
        do {
            state = try JSONDecoder().decode(SimState.self, from: Data(snapshot))
        } catch {
            throw SimStoreError("\(store.kernelPath): not a readable simulated-kernel snapshot (\(error))")
        }
        guard state.formatVersion == SimState.formatVersion else {
            throw SimStoreError("\(store.kernelPath): snapshot format \(state.formatVersion), this vsmmu reads \(SimState.formatVersion)")
        }
        let base = state.savedHost
        let kernel = SimulatedKernel(state: state, environment: environment)
        if let problem = kernel.configurationError { throw problem }
        try store.replayLog(into: kernel)
        if let bytes = try store.read(hostName) {
            let text = String(decoding: bytes, as: UTF8.self)
            let edited = try store.codec.decode(text, path: store.hostPath)
            kernel.applyHostEdits(base: base ?? edited, edited: edited)
        }
        kernel.store = store
        try store.save(kernel)
        return kernel
    }

    func read(_ name: String) throws(SimStoreError) -> [UInt8]? {
        do { return try files.read(name) } catch { throw SimStoreError(error.message) }
    }

    func openLog() throws(SimStoreError) -> Int32 {
        do { return try files.open(Self.logName, O_WRONLY | O_APPEND | O_CREAT) } catch { throw SimStoreError(error.message) }
    }

    private func replayLog(into kernel: SimulatedKernel) throws {
        guard let data = try read(Self.logName), !data.isEmpty else { return }
        let lines = data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: true)
        let decoder = JSONDecoder()
        for (number, line) in lines.enumerated() {
            let entry: LogEntry
            do {
                entry = try decoder.decode(LogEntry.self, from: Data(line))
            } catch {
                // A kill in the middle of write(2) can only tear the last line.
                if number == lines.count - 1 { break }
                throw SimStoreError("\(logPath): line \(number + 1) is not a logged call (\(error))")
            }
            // Calls already folded into the snapshot (a kill between the snapshot's
            // rename and the log's truncation) are skipped.
            guard entry.seq > kernel.state.appliedSequence else { continue }
            kernel.replay(entry.call)
            kernel.state.appliedSequence = entry.seq
        }
    }

    func append(_ entry: LogEntry) throws {
        if logFD < 0 { logFD = try openLog() }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        var line = try encoder.encode(entry)
        line.append(UInt8(ascii: "\n"))
        let written = line.withUnsafeBytes { writeAll(logFD, $0) }
        if !written { throw SimStoreError("\(logPath): write failed (errno \(errno))") }
    }

    /// host.yaml edited since the kernel last wrote it: for a kernel that lives long (an
    /// agent's), the same as `open` does at start. Returns whether there were edits.
    func reloadHostEdits(into kernel: SimulatedKernel) throws -> Bool {
        guard let bytes = try read(Self.hostName), let base = kernel.state.savedHost else { return false }
        let text = String(decoding: bytes, as: UTF8.self)
        guard text != codec.encode(base) else { return false }
        let edited = try codec.decode(text, path: hostPath)
        kernel.applyHostEdits(base: base, edited: edited)
        try save(kernel)
        return true
    }

    /// host.yaml then kernel.json, each written to a temporary file and renamed into
    /// place, then the log is truncated. A kill in between is harmless: log entries
    /// carry sequence numbers, and host.yaml edits are detected against the host the
    /// snapshot recorded as written.
    func save(_ kernel: SimulatedKernel) throws {
        let host = kernel.currentHost
        kernel.state.savedHost = host
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
        let snapshot = try encoder.encode(kernel.state)
        do {
            try files.writeAtomically(Self.hostName, Array(codec.encode(host).utf8))
            try files.writeAtomically(Self.kernelName, [UInt8](snapshot))
        } catch { throw SimStoreError(error.message) }
        if logFD < 0 { logFD = try openLog() }
        if ftruncate(logFD, 0) != 0 { throw SimStoreError("\(logPath): cannot truncate (errno \(errno))") }
    }
}

private func closeFile(_ fd: Int32) -> Int32 { close(fd) }

private func writeAll(_ fd: Int32, _ buffer: UnsafeRawBufferPointer) -> Bool {
    guard var base = buffer.baseAddress else { return true }
    var remaining = buffer.count
    while remaining > 0 {
        let n = write(fd, base, remaining)
        if n < 0 {
            if errno == EINTR { continue }
            return false
        }
        remaining -= n
        base = base.advanced(by: n)
    }
    return true
}
