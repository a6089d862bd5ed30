/// A position in the source text, 1-based, as editors count them.
public struct Mark: Hashable, Sendable, Comparable, CustomStringConvertible {
    // Stored as 32-bit values: a node is smaller, and a 32 MiB document cannot exceed them.
    private var storedLine: UInt32
    private var storedColumn: UInt32
    public var line: Int { Int(storedLine) }
    public var column: Int { Int(storedColumn) }
    public init(line: Int, column: Int) {
        storedLine = UInt32(clamping: line)
        storedColumn = UInt32(clamping: column)
    }
    public static func < (a: Mark, b: Mark) -> Bool { (a.line, a.column) < (b.line, b.column) }
    public var description: String { "\(line):\(column)" }
}

/// A composed YAML node that remembers where it came from. Scalars stay untyped
/// text: the schema field a scalar lands in decides its type (not YAML 1.1's
/// implicit rules, which would read `0000:09:01.0` as base-60 and `on` as true).
///
/// A value type: scalars cost no allocation (short strings are stored inline), and
/// the arrays of collections give the recursion its indirection.
public struct Node: Sendable {
    public enum Content: Sendable {
        case scalar(String, plain: Bool)
        case sequence([Node])
        case mapping([(key: Node, value: Node)])
    }

    public let content: Content
    public let mark: Mark

    public init(_ content: Content, mark: Mark) {
        self.content = content
        self.mark = mark
    }

    /// The scalar text, or nil for collections.
    public var scalar: String? {
        if case .scalar(let s, _) = content { return s }
        return nil
    }

    /// A plain (unquoted) `null`, `~` or empty scalar: YAML's null.
    public var isNull: Bool {
        if case .scalar(let s, let plain) = content, plain {
            return s.isEmpty || s == "~" || s == "null" || s == "Null" || s == "NULL"
        }
        return false
    }

    public var kindName: String {
        switch content {
        case .scalar: return isNull ? "null" : "scalar"
        case .sequence: return "list"
        case .mapping: return "mapping"
        }
    }
}

/// Bounds that keep hostile input cheap (docs/contract.md §7: YAML bombs, deep nesting, huge input).
public struct YAMLLimits: Sendable {
    /// Largest document accepted, in bytes.
    public var maxBytes: Int = 32 << 20
    /// Deepest nesting of collections.
    public var maxDepth: Int = 64
    /// Nodes the document may expand to, counting every alias as a copy of what it names.
    public var maxNodes: Int = 4_000_000
    /// Largest single scalar, in bytes.
    public var maxScalarBytes: Int = 1 << 20

    public init() {}
}

public struct YAMLError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public var mark: Mark
    public init(_ message: String, at mark: Mark) { self.message = message; self.mark = mark }
    public var description: String { "\(mark): \(message)" }
}

/// A line break as libyaml counts one (its marks' line numbers): LF, CR, CR LF, and in
/// UTF-8 NEL, LS and PS. Snippets and offsets use the same rule, so a diagnostic's line is
/// the line shown (a lone CR used to shift them apart).
public enum LineBreak {
    /// The break's length in bytes at `i`, or 0 when none starts there.
    public static func length(at i: Int, in b: [UInt8]) -> Int {
        guard i < b.count else { return 0 }
        switch b[i] {
        case 10: return 1
        case 13: return i + 1 < b.count && b[i + 1] == 10 ? 2 : 1
        case 0xC2: return i + 1 < b.count && b[i + 1] == 0x85 ? 2 : 0
        case 0xE2: return i + 2 < b.count && b[i + 1] == 0x80 && (b[i + 2] == 0xA8 || b[i + 2] == 0xA9) ? 3 : 0
        default: return 0
        }
    }
}
