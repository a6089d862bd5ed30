import VsmmuYAML

/// One problem found in an input file, reported as `FILE:LINE:COL: error: message`
/// with the offending line, a caret under the column, and a hint where one helps.
public struct Diagnostic: Error, Hashable, Sendable, CustomStringConvertible {
    public var file: String
    public var mark: Mark
    public var message: String
    public var hint: String?

    public init(file: String, mark: Mark, message: String, hint: String? = nil) {
        self.file = file; self.mark = mark; self.message = message; self.hint = hint
    }

    /// The first line alone: `FILE:LINE:COL: error: message`.
    public var description: String { "\(file):\(mark.line):\(mark.column): error: \(message)" }

    /// The full report: first line, source snippet, caret, hint.
    public func rendered(source: SourceText?) -> String {
        var out = description
        if let line = source?.line(mark.line) {
            let shown = line.replacingTabs()
            out += "\n  \(mark.line) | \(shown)"
            let gutter = String(repeating: " ", count: String(mark.line).count)
            let pad = String(repeating: " ", count: max(0, min(mark.column - 1, shown.count)))
            out += "\n  \(gutter) | \(pad)^"
        }
        if let hint { out += "\n  hint: \(hint)" }
        return out
    }
}

/// The text of an input file, split into lines on demand for snippets.
public struct SourceText: Sendable {
    public let path: String
    public let bytes: [UInt8]
    private let lineStarts: [Int]
    /// Where each line's break starts (the last line: the end of the file).
    private let lineEnds: [Int]

    public init(path: String, bytes: [UInt8]) {
        self.path = path
        self.bytes = bytes
        // Lines as libyaml numbers them (LineBreak): LF, CR, CR LF, NEL, LS, PS.
        var starts = [0], ends: [Int] = []
        var i = 0
        while i < bytes.count {
            let n = LineBreak.length(at: i, in: bytes)
            if n == 0 { i += 1; continue }
            ends.append(i)
            i += n
            starts.append(i)
        }
        ends.append(bytes.count)
        lineStarts = starts
        lineEnds = ends
    }

    /// Lines in the file (the last one may be empty).
    public var lineCount: Int { lineStarts.count }

    /// Line n (1-based) as text, nil past the end; invalid UTF-8 is shown repaired.
    public func line(_ n: Int) -> String? {
        guard n >= 1, n <= lineStarts.count else { return nil }
        let start = lineStarts[n - 1]
        let end = lineEnds[n - 1]
        guard end >= start else { return "" }
        let slice = bytes[start..<min(end, start + 200)]
        return String(decoding: slice, as: UTF8.self)
    }
}

private extension String {
    func replacingTabs() -> String { self.map { $0 == "\t" ? " " : String($0) }.joined() }
}

/// Collects diagnostics in file order.
public struct DiagnosticBag: Sendable {
    public let file: String
    public private(set) var items: [Diagnostic] = []
    public init(file: String) { self.file = file }

    public mutating func error(_ message: String, at mark: Mark, hint: String? = nil) {
        items.append(Diagnostic(file: file, mark: mark, message: message, hint: hint))
    }

    public var isEmpty: Bool { items.isEmpty }
    public var sorted: [Diagnostic] { items.sorted { $0.mark < $1.mark } }
}
