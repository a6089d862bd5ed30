/// Line-by-line comparison of two corpus outputs, keyed by `CASE:LINE` so that one extra or
/// missing line does not shift every later one.
public enum FidelityDiff {
    public static func compare(expected: [String], actual: [String]) -> [String] {
        func key(_ line: String) -> String { String(line.prefix { $0 != " " }) }
        let actualByKey = Dictionary(actual.map { (key($0), $0) }, uniquingKeysWith: { a, _ in a })
        let expectedKeys = Set(expected.map(key))
        var out: [String] = []
        for line in expected {
            guard let got = actualByKey[key(line)] else { out.append("missing: \(line)"); continue }
            if got != line { out.append("expected: \(line)\n     got: \(got)") }
        }
        for line in actual where !expectedKeys.contains(key(line)) { out.append("unexpected: \(line)") }
        return out
    }
}
