import Foundation
import VsmmuKernel
import VsmmuYAML

/// Reading topology and host files: bytes → composed nodes → schema check → typed model.
/// Every failure is a `Diagnostic` list naming FILE:LINE:COL.
public struct LoadFailure: Error, Sendable {
    public var diagnostics: [Diagnostic]
    public var source: SourceText?
    public init(_ diagnostics: [Diagnostic], source: SourceText?) { self.diagnostics = diagnostics; self.source = source }

    public func rendered() -> String { diagnostics.map { $0.rendered(source: source) }.joined(separator: "\n") }
}

public enum InputFile {
    /// Reads a file, refusing anything larger than the YAML limit before reading it all.
    public static func read(_ path: String, limits: YAMLLimits = YAMLLimits()) throws(LoadFailure) -> SourceText {
        let at = Mark(line: 1, column: 1)
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw LoadFailure([Diagnostic(file: path, mark: at, message: "no such file")], source: nil)
        }
        if isDir.boolValue {
            throw LoadFailure([Diagnostic(file: path, mark: at, message: "is a directory, not a YAML file")], source: nil)
        }
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw LoadFailure([Diagnostic(file: path, mark: at, message: "cannot be read (permission denied?)")], source: nil)
        }
        defer { try? handle.close() }
        let data = (try? handle.read(upToCount: limits.maxBytes + 1)) ?? Data()
        if data.count > limits.maxBytes {
            throw LoadFailure([Diagnostic(file: path, mark: at,
                message: "the file is larger than the limit of \(limits.maxBytes >> 20) MiB; a topology this large is not plausible")], source: nil)
        }
        return SourceText(path: path, bytes: [UInt8](data))
    }

    /// Composes and schema-checks one document of the expected kind.
    public static func check(_ source: SourceText, schema: SchemaType, kind: String, limits: YAMLLimits = YAMLLimits()) throws(LoadFailure) -> Checked {
        let root: Node
        do {
            guard let r = try YAMLComposer.compose(source.bytes, limits: limits) else {
                throw LoadFailure([Diagnostic(file: source.path, mark: Mark(line: 1, column: 1),
                    message: "the file is empty; expected a \(kind) document",
                    hint: "start with 'apiVersion: vsmmu/v1' and 'kind: \(kind)'")], source: source)
            }
            root = r
        } catch let e as YAMLError {
            throw LoadFailure([Diagnostic(file: source.path, mark: e.mark, message: e.message)], source: source)
        } catch let e as LoadFailure {
            throw e
        } catch {
            throw LoadFailure([Diagnostic(file: source.path, mark: Mark(line: 1, column: 1), message: "\(error)")], source: source)
        }
        // A wrong `kind` makes every other message noise: say that alone.
        if case .mapping(let pairs) = root.content,
           let k = pairs.first(where: { $0.key.scalar == "kind" })?.value, let text = k.scalar, text != kind,
           ["Topology", "Host"].contains(text) {
            throw LoadFailure([Diagnostic(file: source.path, mark: k.mark, message: "this is a \(text) file, expected kind \(kind)",
                hint: text == "Host" ? "a host description goes after --host" : "a topology is the command's FILE argument")], source: source)
        }
        var checker = SchemaChecker(file: source.path)
        let checked = checker.check(root, as: schema)
        if !checker.diagnostics.isEmpty || checked == nil {
            throw LoadFailure(checker.diagnostics.sorted, source: source)
        }
        return checked!
    }
}

extension Topology {
    /// Parses and schema-checks a topology (no semantic rules: see `Validator`).
    public static func parse(_ source: SourceText) throws(LoadFailure) -> Topology {
        let checked = try InputFile.check(source, schema: TopologySchema.root, kind: "Topology")
        return Topology.extract(checked, file: source.path)
    }

    public static func load(path: String) throws(LoadFailure) -> (Topology, SourceText) {
        let source = try InputFile.read(path)
        return (try parse(source), source)
    }
}

extension HostDescription {
    public static func parse(_ source: SourceText) throws(LoadFailure) -> HostDescription {
        let checked = try InputFile.check(source, schema: HostSchema.root, kind: "Host")
        let host = HostDescription.extract(checked)
        var bag = DiagnosticBag(file: source.path)
        HostRules.check(host, checked: checked, into: &bag)
        if !bag.isEmpty { throw LoadFailure(bag.sorted, source: source) }
        return host
    }

    public static func load(path: String) throws(LoadFailure) -> HostDescription {
        try parse(try InputFile.read(path))
    }
}

/// Consistency of a host description itself.
enum HostRules {
    static func check(_ host: HostDescription, checked: Checked, into bag: inout DiagnosticBag) {
        let iommuNodes = checked["iommus"]?.array ?? []
        var seen: [String: Int] = [:]
        for (i, iommu) in host.iommus.enumerated() {
            let mark = iommuNodes[safe: i]?.mark ?? checked.mark
            if let first = seen[iommu.name] {
                bag.error("IOMMU '\(iommu.name)' is described twice (first as iommus[\(first)])", at: mark)
            }
            seen[iommu.name] = i
            if iommu.ssidSize > 0 && !iommu.pasid {
                bag.error("IOMMU '\(iommu.name)' has ssidSize \(iommu.ssidSize) but pasid false", at: iommuNodes[safe: i]?["ssidSize"]?.mark ?? mark)
            }
        }
        if let p = host.kernel.pageSize, !KernelFacts.pageSizes.contains(p) {
            bag.error("kernel.pageSize \(p) is not a Linux page size (4096, 16384 or 65536)", at: checked["kernel"]?["pageSize"]?.mark ?? checked.mark)
        }
        let deviceNodes = checked["pciDevices"]?.array ?? []
        var addresses: [PCIAddress: Int] = [:]
        for (i, d) in host.pciDevices.enumerated() {
            let node = deviceNodes[safe: i]
            if let first = addresses[d.address] {
                bag.error("PCI device \(d.address) is described twice (first as pciDevices[\(first)])", at: node?["address"]?.mark ?? checked.mark)
            }
            addresses[d.address] = i
            if let name = d.iommu, host.iommu(named: name) == nil {
                bag.error("PCI device \(d.address) sits behind IOMMU '\(name)', which iommus does not describe", at: node?["iommu"]?.mark ?? checked.mark)
            }
            if let v = d.vfioDriver, !VFIODriver.isVFIO(v) {
                bag.error("PCI device \(d.address) has vfioDriver '\(v)', which is not a VFIO driver (vfio-pci, or a variant driver ending in _vfio_pci)",
                          at: node?["vfioDriver"]?.mark ?? checked.mark)
            }
            if d.iommu != nil && d.iommuGroup == nil {
                bag.error("PCI device \(d.address) has an IOMMU but no iommuGroup", at: node?["iommuGroup"]?.mark ?? checked.mark)
            }
        }
    }
}

extension Array {
    subscript(safe i: Int) -> Element? { indices.contains(i) ? self[i] : nil }
}
