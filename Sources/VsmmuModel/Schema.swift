import VsmmuKernel
import VsmmuYAML

/// The shape of an input file, written once and used twice: to check and type the
/// composed YAML (unknown keys, wrong types, malformed values), and to generate the
/// JSON Schema that `vsmmu schema` prints. One source, so they cannot drift apart.
public indirect enum SchemaType: Sendable {
    case object([SchemaField], description: String)
    case array(SchemaType, description: String)
    case scalar(ScalarKind, description: String)
}

public struct SchemaField: Sendable {
    public var name: String
    public var type: SchemaType
    public var required: Bool
    public init(_ name: String, _ type: SchemaType, required: Bool = false) {
        self.name = name; self.type = type; self.required = required
    }
}

public enum ScalarKind: Sendable {
    /// `[a-z0-9][a-z0-9-]{0,62}`
    case name
    /// Any string.
    case text
    /// Exactly this word.
    case constant(String)
    /// Unsigned integer in decimal, 0x hex or 0b binary, at most `max`.
    case uint(max: UInt64)
    /// Signed decimal integer in a range.
    case int(min: Int64, max: Int64)
    /// Bytes, or a number with a KiB/MiB/GiB/TiB suffix.
    case size
    /// domain:bus:slot.function
    case pciAddress
    /// A PCI address, or `selftest:N` for a kernel self-test mock device.
    case deviceHost
    /// One of these words.
    case choice([String])
    /// `auto` or an unsigned integer up to max.
    case uintOrAuto(max: UInt64)
    /// `auto` or one of these integers.
    case intChoiceOrAuto([Int])
    case bool
    /// A string, or null.
    case nullableText
    /// A driver name (`DriverName`), or null.
    case nullableDriverName
    /// An unsigned integer, or null.
    case nullableUInt(max: UInt64)
    /// A user name or a numeric uid.
    case userOrUID
}

/// A value that passed the schema, typed, with the mark of where it was written.
public final class Checked: Sendable {
    public enum Value: Sendable {
        case null
        case bool(Bool)
        case uint(UInt64)
        case int(Int64)
        case string(String)
        case pci(PCIAddress)
        case selftest(Int)
        case auto
        case object([String: Checked])
        case array([Checked])
    }
    public let value: Value
    public let mark: Mark
    init(_ value: Value, mark: Mark) {
        self.value = value; self.mark = mark
    }

    public subscript(key: String) -> Checked? {
        if case .object(let o) = value { return o[key] }
        return nil
    }
    public var string: String? { if case .string(let s) = value { return s }; return nil }
    public var uint: UInt64? { if case .uint(let v) = value { return v }; return nil }
    public var int: Int64? { if case .int(let v) = value { return v }; if case .uint(let v) = value, v <= UInt64(Int64.max) { return Int64(v) }; return nil }
    public var bool: Bool? { if case .bool(let v) = value { return v }; return nil }
    public var isAuto: Bool { if case .auto = value { return true }; return false }
    public var isNull: Bool { if case .null = value { return true }; return false }
    public var array: [Checked] { if case .array(let a) = value { return a }; return [] }
}

// MARK: - Checking composed YAML against a schema

public struct SchemaChecker {
    public var diagnostics: DiagnosticBag

    /// Where the checker is, e.g. guests[0].vsmmus[1]; kept as a stack and only
    /// rendered into text when an error needs it (most nodes have no error).
    enum Step { case key(String), index(Int) }
    var steps: [Step] = []

    public init(file: String) { diagnostics = DiagnosticBag(file: file) }

    var path: String {
        var out = ""
        for step in steps {
            switch step {
            case .key(let k): out += out.isEmpty ? k : ".\(k)"
            case .index(let i): out += "[\(i)]"
            }
        }
        return out
    }

    /// Checks `node` against `type`; returns nil where the value is unusable (an error
    /// was recorded), so that checking goes on and every problem of a file is reported.
    public mutating func check(_ node: Node, as type: SchemaType) -> Checked? {
        switch type {
        case .object(let fields, _):
            guard case .mapping(let pairs) = node.content else {
                diagnostics.error("\(path.isEmpty ? "the document" : path) must be a mapping, not a \(node.kindName)", at: node.mark)
                return nil
            }
            var out: [String: Checked] = [:]
            out.reserveCapacity(pairs.count)
            for (key, value) in pairs {
                let name = key.scalar ?? ""
                guard let field = fields.first(where: { $0.name == name }) else {
                    let known = fields.map(\.name)
                    let near = known.first { editDistance($0.lowercased(), name.lowercased()) <= 2 }
                    diagnostics.error("unknown key '\(name)' in \(path.isEmpty ? "the document" : path)", at: key.mark,
                                      hint: near.map { "did you mean '\($0)'?" } ?? "known keys: \(known.joined(separator: ", "))")
                    continue
                }
                steps.append(.key(name))
                if let c = check(value, as: field.type) { out[name] = c }
                steps.removeLast()
            }
            for field in fields where field.required && !pairs.contains(where: { $0.key.scalar == field.name }) {
                diagnostics.error("\(path.isEmpty ? "the document" : path) is missing the required key '\(field.name)'", at: node.mark)
            }
            return Checked(.object(out), mark: node.mark)
        case .array(let element, _):
            if node.isNull { return Checked(.array([]), mark: node.mark) }
            guard case .sequence(let items) = node.content else {
                diagnostics.error("\(path) must be a list, not a \(node.kindName)", at: node.mark)
                return nil
            }
            var out: [Checked] = []
            out.reserveCapacity(items.count)
            for (i, item) in items.enumerated() {
                steps.append(.index(i))
                if let c = check(item, as: element) { out.append(c) }
                steps.removeLast()
            }
            return Checked(.array(out), mark: node.mark)
        case .scalar(let kind, _):
            guard case .scalar(let text, let plain) = node.content else {
                diagnostics.error("\(path) must be \(kind.expectation), not a \(node.kindName)", at: node.mark)
                return nil
            }
            switch ScalarParser.parse(text, plain: plain, null: node.isNull, as: kind) {
            case .success(let v):
                return Checked(v, mark: node.mark)
            case .failure(let problem):
                diagnostics.error("\(path): \(problem.message)", at: node.mark, hint: problem.hint)
                return nil
            }
        }
    }
}

struct ScalarProblem: Error {
    var message: String
    var hint: String?
}

enum ScalarParser {
    static let nameRule = "names are 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit"

    static func parse(_ text: String, plain: Bool, null: Bool, as kind: ScalarKind) -> Result<Checked.Value, ScalarProblem> {
        switch kind {
        case .nullableText:
            return null ? .success(.null) : .success(.string(text))
        case .nullableUInt(let max):
            if null { return .success(.null) }
            return parse(text, plain: plain, null: false, as: .uint(max: max))
        case .nullableDriverName:
            if null { return .success(.null) }
            return DriverName.isValid(text) ? .success(.string(text))
                : .failure(ScalarProblem(message: "'\(text)' is not a driver name", hint: DriverName.rule))
        default:
            break
        }
        if null {
            return .failure(ScalarProblem(message: "expected \(kind.expectation), got nothing (null)"))
        }
        switch kind {
        case .name:
            return isName(text) ? .success(.string(text)) : .failure(ScalarProblem(message: "'\(text)' is not a valid name", hint: nameRule))
        case .text:
            return .success(.string(text))
        case .constant(let word):
            return text == word ? .success(.string(text)) : .failure(ScalarProblem(message: "expected '\(word)', got '\(text)'"))
        case .uint(let max):
            return parseUInt(text).flatMap { v in
                v <= max ? .success(.uint(v)) : .failure(ScalarProblem(message: "\(text) is larger than the maximum \(max)"))
            }
        case .int(let min, let max):
            guard let v = Int64(text) else { return .failure(ScalarProblem(message: "'\(text)' is not an integer")) }
            return (min...max).contains(v) ? .success(.int(v)) : .failure(ScalarProblem(message: "\(v) is outside \(min)...\(max)"))
        case .size:
            return parseSize(text).map { .uint($0) }
        case .pciAddress:
            if let problem = PCIAddress.problem(with: text) {
                return .failure(ScalarProblem(message: "'\(text)' is not a PCI address: \(problem)"))
            }
            return .success(.pci(PCIAddress(text)!))
        case .deviceHost:
            if text.hasPrefix("selftest:") {
                let n = text.dropFirst("selftest:".count)
                guard let v = Int(n), v >= 0, v < 1_000_000, String(v) == n else {
                    return .failure(ScalarProblem(message: "'\(text)' is not a self-test device", hint: "write selftest:N with N a decimal number, e.g. selftest:0"))
                }
                return .success(.selftest(v))
            }
            return parse(text, plain: plain, null: false, as: .pciAddress)
        case .choice(let words):
            if words.contains(text) { return .success(.string(text)) }
            var hint = "one of: \(words.joined(separator: ", "))"
            if ["true", "yes", "True", "TRUE", "y"].contains(text), words.contains("on") { hint = "write on, off or auto" }
            if ["false", "no", "False", "FALSE", "n"].contains(text), words.contains("off") { hint = "write on, off or auto" }
            return .failure(ScalarProblem(message: "'\(text)' is not allowed", hint: hint))
        case .uintOrAuto(let max):
            if text == "auto" { return .success(.auto) }
            return parse(text, plain: plain, null: false, as: .uint(max: max)).mapError {
                ScalarProblem(message: "expected auto or an integer from 0 to \(max), got '\(text)'", hint: $0.hint)
            }
        case .intChoiceOrAuto(let values):
            if text == "auto" { return .success(.auto) }
            if let v = Int(text), values.contains(v) { return .success(.uint(UInt64(v))) }
            return .failure(ScalarProblem(message: "expected auto or one of \(values.map(String.init).joined(separator: ", ")), got '\(text)'"))
        case .bool:
            if text == "true" { return .success(.bool(true)) }
            if text == "false" { return .success(.bool(false)) }
            return .failure(ScalarProblem(message: "expected true or false, got '\(text)'"))
        case .userOrUID:
            if let v = UInt32(text) { return .success(.uint(UInt64(v))) }
            let ok = !text.isEmpty && text.count <= 32 && text.utf8.allSatisfy { c in
                (c >= 97 && c <= 122) || (c >= 65 && c <= 90) || (c >= 48 && c <= 57) || c == 95 || c == 45 || c == 46
            } && text.utf8.first != 45
            return ok ? .success(.string(text)) : .failure(ScalarProblem(message: "'\(text)' is not a user name or uid"))
        case .nullableText, .nullableDriverName:
            return .success(.string(text))          // (handled above)
        case .nullableUInt(let max):
            return parse(text, plain: plain, null: false, as: .uint(max: max))
        }
    }

    static func isName(_ s: String) -> Bool {
        let u = Array(s.utf8)
        guard (1...63).contains(u.count) else { return false }
        func ok(_ c: UInt8) -> Bool { (c >= 97 && c <= 122) || (c >= 48 && c <= 57) }
        return ok(u[0]) && u.dropFirst().allSatisfy { ok($0) || $0 == 45 }
    }

    /// Decimal, 0x hexadecimal or 0b binary; nothing else (no signs, no separators).
    static func parseUInt(_ text: String) -> Result<UInt64, ScalarProblem> {
        let lower = text.lowercased()
        var digits = Substring(lower)
        var radix = 10
        if lower.hasPrefix("0x") { radix = 16; digits = lower.dropFirst(2) }
        else if lower.hasPrefix("0b") { radix = 2; digits = lower.dropFirst(2) }
        let valid: (Character) -> Bool = { c in
            switch radix {
            case 16: return c.isHexDigit
            case 2: return c == "0" || c == "1"
            default: return c.isASCII && c.isNumber
            }
        }
        guard !digits.isEmpty, digits.allSatisfy(valid) else {
            return .failure(ScalarProblem(message: "'\(text)' is not an integer", hint: "integers are written in decimal, 0x hexadecimal or 0b binary"))
        }
        guard let v = UInt64(digits, radix: radix) else {
            return .failure(ScalarProblem(message: "\(text) does not fit in 64 bits"))
        }
        return .success(v)
    }

    static let sizeUnits: [(String, UInt64)] = [("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("TiB", 1 << 40)]

    static func parseSize(_ text: String) -> Result<UInt64, ScalarProblem> {
        for (unit, scale) in sizeUnits where text.hasSuffix(unit) {
            let number = String(text.dropLast(unit.count))
            switch parseUInt(number) {
            case .success(let v):
                let (r, overflow) = v.multipliedReportingOverflow(by: scale)
                if overflow { return .failure(ScalarProblem(message: "\(text) does not fit in 64 bits")) }
                return .success(r)
            case .failure:
                return .failure(ScalarProblem(message: "'\(text)' is not a size", hint: "write bytes, or a whole number with KiB, MiB, GiB or TiB, e.g. 16GiB"))
            }
        }
        if let last = text.last, last.isLetter {
            return .failure(ScalarProblem(message: "'\(text)' is not a size", hint: "the suffixes are KiB, MiB, GiB and TiB (powers of 1024), e.g. 16GiB"))
        }
        return parseUInt(text)
    }
}

extension ScalarKind {
    var expectation: String {
        switch self {
        case .name: return "a name"
        case .text, .nullableText: return "a string"
        case .nullableDriverName: return "a driver name"
        case .constant(let w): return "'\(w)'"
        case .uint, .nullableUInt: return "an integer"
        case .int: return "an integer"
        case .size: return "a size"
        case .pciAddress: return "a PCI address"
        case .deviceHost: return "a PCI address"
        case .choice(let w): return "one of \(w.joined(separator: ", "))"
        case .uintOrAuto: return "auto or an integer"
        case .intChoiceOrAuto: return "auto or an integer"
        case .bool: return "true or false"
        case .userOrUID: return "a user name or uid"
        }
    }
}

func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a), b = Array(b)
    if a.isEmpty { return b.count }
    if b.isEmpty { return a.count }
    var prev = Array(0...b.count)
    for i in 1...a.count {
        var cur = [i] + Array(repeating: 0, count: b.count)
        for j in 1...b.count {
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
        }
        prev = cur
    }
    return prev[b.count]
}
