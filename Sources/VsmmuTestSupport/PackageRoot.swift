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
