import Foundation
import VsmmuTestSupport

/// The `vsmmu` executable built next to this test bundle.
let vsmmuBinary: String = builtProduct("vsmmu") ?? packageRoot + "/.build/debug/vsmmu"

struct RunResult {
    var code: Int32
    var stdout: String
    var stderr: String
}

/// Runs the real binary, from the package root, with a clean environment plus `env`.
func vsmmu(_ args: [String], env: [String: String] = [:], cwd: String = packageRoot) -> RunResult {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: vsmmuBinary)
    p.arguments = args
    p.currentDirectoryURL = URL(fileURLWithPath: cwd)
    var environment = ["PATH": "/usr/bin:/bin", "HOME": NSTemporaryDirectory()]
    for (k, v) in env { environment[k] = v }
    p.environment = environment
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    p.standardInput = FileHandle.nullDevice
    do { try p.run() } catch { return RunResult(code: -1, stdout: "", stderr: "cannot run \(vsmmuBinary): \(error)") }
    // read both pipes concurrently so a full pipe never blocks the child
    final class Box: @unchecked Sendable { var data = Data() }
    let errBox = Box()
    let group = DispatchGroup()
    group.enter()
    DispatchQueue.global().async { errBox.data = err.fileHandleForReading.readDataToEndOfFile(); group.leave() }
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    group.wait()
    let errData = errBox.data
    p.waitUntilExit()
    return RunResult(code: p.terminationStatus, stdout: String(decoding: outData, as: UTF8.self), stderr: String(decoding: errData, as: UTF8.self))
}

func tempDir() -> String {
    let d = NSTemporaryDirectory() + "vsmmu-test-\(UUID().uuidString)"
    try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
    return d
}
