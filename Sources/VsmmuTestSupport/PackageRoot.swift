import Foundation

/// For the test targets only: where the package is, so tests find examples/ and schemas/.
public let packageRoot: String = {
    var url = URL(fileURLWithPath: #filePath)
    while url.path != "/" {
        url.deleteLastPathComponent()
        if FileManager.default.fileExists(atPath: url.appendingPathComponent("Package.swift").path) { return url.path }
    }
    return FileManager.default.currentDirectoryPath
}()

/// A path inside the package.
public func path(_ relative: String) -> String { packageRoot + "/" + relative }

/// Every example topology under examples/ with the host file it is written for: what the
/// golden, convergence, failure-sweep and backend-sequence tests each run over.
public let exampleTopologies: [(topology: String, host: String)] = [
    ("one-guest-one-vsmmu", "examples/hosts/grace-2smmu-cmdqv.yaml"),
    ("two-vsmmus-four-gpus", "examples/hosts/grace-2smmu-cmdqv.yaml"),
    ("cmdqv", "examples/hosts/grace-2smmu-cmdqv.yaml"),
    ("several-guests", "examples/hosts/grace-2smmu-cmdqv.yaml"),
    ("devices-without-vsmmu", "examples/hosts/intel-vtd.yaml"),
    ("selftest", "examples/hosts/selftest.yaml"),
    ("gb200-four-gpus", "examples/hosts/gb200-64k.yaml"),
    ("gb200-auto", "examples/hosts/gb200-tray.yaml"),
]

/// The host file an example topology is written for.
public func exampleHost(_ topology: String) -> String {
    exampleTopologies.first { $0.topology == topology }!.host
}
