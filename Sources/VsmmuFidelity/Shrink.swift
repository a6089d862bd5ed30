/// Reduces a case whose answers differ between two kernels to a short one that still
/// differs (delta debugging over its calls: drop halves, then quarters, … then single
/// calls, keeping every drop after which the kernels still disagree). A call whose names
/// are gone prints the same corpus error on both kernels, so it never makes a difference.
public struct Shrinker {
    /// Runs a one-case corpus on both kernels; true when their lines differ.
    public let differs: (Corpus) -> Bool
    public private(set) var runs = 0

    public init(differs: @escaping (Corpus) -> Bool) { self.differs = differs }

    /// `corpus` (its host and device) with `calls` as its one case.
    public static func single(_ c: Corpus.Case, calls: [Corpus.Call]? = nil, of corpus: Corpus) -> Corpus {
        var one = corpus
        one.generated = []
        one.cases = [Corpus.Case(name: c.name, line: c.line, calls: calls ?? c.calls)]
        return one
    }

    public mutating func shrink(_ c: Corpus.Case, in corpus: Corpus) -> Corpus.Case {
        func candidate(_ calls: [Corpus.Call]) -> Corpus { Self.single(c, calls: calls, of: corpus) }
        var calls = c.calls
        var chunk = max(calls.count / 2, 1)
        while true {
            var start = 0
            var dropped = false
            while start < calls.count {
                var fewer = calls
                fewer.removeSubrange(start..<min(start + chunk, calls.count))
                runs += 1
                if differs(candidate(fewer)) { calls = fewer; dropped = true } else { start += chunk }
            }
            if chunk == 1 && !dropped { break }
            if !dropped { chunk = max(chunk / 2, 1) }
        }
        return Corpus.Case(name: c.name, line: c.line, calls: calls)
    }
}

extension Corpus.Call {
    /// The call as a corpus line.
    public var text: String {
        (result.map { "\($0) = " } ?? "") + ([op] + args.map { "\($0.key)=\($0.value)" }).joined(separator: " ")
    }
}

extension Corpus.Case {
    /// The case as corpus text (its calls renumbered from line 2).
    public var text: String { "case \(name)\n" + calls.map { "  \($0.text)\n" }.joined() }
}
