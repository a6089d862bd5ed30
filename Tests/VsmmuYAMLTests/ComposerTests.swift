import Testing
@testable import VsmmuYAML

private func compose(_ s: String, limits: YAMLLimits = YAMLLimits()) throws -> Node? {
    try YAMLComposer.compose(Array(s.utf8), limits: limits)
}

private func failure(_ s: String, limits: YAMLLimits = YAMLLimits()) -> YAMLError? {
    do { _ = try YAMLComposer.compose(Array(s.utf8), limits: limits); return nil } catch { return error }
}

@Test func scalarsKeepTheirTextAndMarks() throws {
    let root = try #require(try compose("a: 1\nhost: 0000:09:01.0\nats: on\nq: \"on\"\n"))
    guard case .mapping(let pairs) = root.content else { Issue.record("not a mapping"); return }
    #expect(pairs.map { $0.key.scalar } == ["a", "host", "ats", "q"])
    #expect(pairs[1].value.scalar == "0000:09:01.0")   // not a YAML 1.1 base-60 integer
    #expect(pairs[2].value.scalar == "on")             // not a YAML 1.1 boolean
    #expect(pairs[1].value.mark == Mark(line: 2, column: 7))
    if case .scalar(_, let plain) = pairs[3].value.content { #expect(!plain) }
    if case .scalar(_, let plain) = pairs[2].value.content { #expect(plain) }
}

@Test func nullScalars() throws {
    let root = try #require(try compose("a: null\nb: ~\nc:\nd: 'null'\n"))
    guard case .mapping(let pairs) = root.content else { return }
    #expect(pairs.map(\.value.isNull) == [true, true, true, false])
}

@Test func duplicateKeysAreRejectedAtTheSecondKey() {
    let e = failure("name: a\nuser: x\nuser: y\n")
    #expect(e?.mark == Mark(line: 3, column: 1))
    #expect(e?.message.contains("duplicate key 'user'") == true)
    #expect(e?.message.contains("line 2") == true)
}

@Test func nonScalarKeysAreRejected() {
    #expect(failure("? [a, b]\n: 1\n")?.message.contains("keys must be") == true)
}

@Test func emptyAndCommentOnlyDocumentsComposeToNil() throws {
    #expect(try compose("") == nil)
    #expect(try compose("# only a comment\n") == nil)
}

@Test func severalDocumentsAreRejected() {
    let e = failure("a: 1\n---\nb: 2\n")
    #expect(e?.message.contains("more than one YAML document") == true)
    #expect(e?.mark.line == 2)
}

@Test func billionLaughsFailsFastOnTheNodeBudget() {
    var s = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
    for i in 1...9 {
        s += "a\(i): &a\(i) [" + Array(repeating: "*a\(i - 1)", count: 10).joined(separator: ", ") + "]\n"
    }
    let clock = ContinuousClock()
    var e: YAMLError?
    let t = clock.measure { e = failure(s) }
    #expect(e?.message.contains("alias bomb") == true)
    #expect(t < .seconds(2))
}

@Test func smallAliasesAreFine() throws {
    let root = try #require(try compose("base: &b {x: 1}\nother: *b\n"))
    guard case .mapping(let pairs) = root.content, case .mapping(let inner) = pairs[1].value.content else {
        Issue.record("alias not expanded"); return
    }
    #expect(inner.first?.key.scalar == "x")
    #expect(pairs[1].value.mark.line == 2)   // the alias keeps its own position
}

@Test func undefinedAliasIsAnError() {
    #expect(failure("a: *nope\n") != nil)
}

@Test func deepNestingIsBounded() {
    let deep = String(repeating: "[", count: 3000) + String(repeating: "]", count: 3000)
    let e = failure(deep)
    #expect(e?.message.contains("nesting is deeper than 64") == true)
    let deepMaps = (0..<3000).map { String(repeating: " ", count: $0) + "k:" }.joined(separator: "\n")
    #expect(failure(deepMaps)?.message.contains("nesting") == true)
}

@Test func hugeScalarIsRefused() {
    var limits = YAMLLimits()
    limits.maxScalarBytes = 1000
    let e = failure("a: " + String(repeating: "x", count: 5000) + "\n", limits: limits)
    #expect(e?.message.contains("scalar of 5000 bytes") == true)
}

@Test func oversizedDocumentIsRefusedBeforeParsing() {
    var limits = YAMLLimits()
    limits.maxBytes = 100
    #expect(failure(String(repeating: "#", count: 200), limits: limits)?.message.contains("more than the limit") == true)
}

@Test func tabsInIndentationAreAnErrorWithALine() {
    let e = failure("a:\n\tb: 1\n")
    #expect(e != nil)
    #expect(e?.mark.line == 2)
}

@Test func invalidUTF8IsAnErrorWithALine() {
    var bytes = Array("a: 1\nb: ".utf8)
    bytes += [0xff, 0xfe, 0x41]
    bytes += Array("\n".utf8)
    do {
        _ = try YAMLComposer.compose(bytes)
        Issue.record("accepted invalid UTF-8")
    } catch {
        #expect(error.mark.line == 2)
        #expect(error.message.contains("UTF-8"))
    }
}

@Test func binaryJunkIsAnError() {
    let junk: [UInt8] = [0x7f, 0x45, 0x4c, 0x46, 0x02, 0x01, 0x01, 0x00, 0x00, 0x00, 0x03, 0x00]
    #expect(throws: YAMLError.self) { _ = try YAMLComposer.compose(junk) }
}

@Test func explicitTagsAreRefused() {
    #expect(failure("a: !!int 3\n")?.message.contains("tags") == true)
}

@Test func eventCountMatchesAPlainParse() {
    // stream start/end, doc start/end, mapping start/end, 2 scalars
    #expect(YAMLComposer.countEvents(Array("a: 1\n".utf8)) == 8)
}
