import Foundation
import VsmmuTestSupport
import VsmmuModel
import VsmmuKernel

/// The package root, found from this file's path.
func files(in dir: String) -> [String] {
    let names = (try? FileManager.default.contentsOfDirectory(atPath: path(dir))) ?? []
    return names.filter { $0.hasSuffix(".yaml") }.sorted().map { dir + "/" + $0 }
}

/// The `# host: FILE` comment of an example, nil for `none`.
func hostOf(_ relative: String) -> String? {
    let text = (try? String(contentsOfFile: path(relative), encoding: .utf8)) ?? ""
    for line in text.split(separator: "\n") where line.hasPrefix("# host: ") {
        let h = String(line.dropFirst("# host: ".count))
        return h == "none" ? nil : h
    }
    return nil
}

func parse(_ yaml: String, file: String = "t.yaml") throws(LoadFailure) -> Topology {
    try Topology.parse(SourceText(path: file, bytes: Array(yaml.utf8)))
}

func loadFailure(_ yaml: String) -> [Diagnostic] {
    do { _ = try parse(yaml); return [] } catch { return error.diagnostics }
}

func loadFailure(bytes: [UInt8]) -> [Diagnostic] {
    do { _ = try Topology.parse(SourceText(path: "t.yaml", bytes: bytes)); return [] } catch { return error.diagnostics }
}

let minimalHeader = "apiVersion: vsmmu/v1\nkind: Topology\nmetadata:\n  name: t\nguests:\n"
