import Foundation
import Testing
import VsmmuTestSupport

/// Every citation in the repository resolves inside it: comments cite `docs/X.md §N`,
/// never documents a maintainer with only the repository does not have, and every cited
/// section exists as a heading of that doc.
enum Citations {
    /// Where citations live (the README and docs are checked too).
    static let roots = ["Sources", "Tests", "lab", "lab-arm64", "scripts", "contrib", "docs", ".ci", "README.md"]
    /// This file: its patterns and examples are citations on purpose.
    static let exempt: Set<String> = ["Tests/VsmmuModelTests/CitationTests.swift"]

    /// Names of documents outside the repository. Built by concatenation so that this
    /// file does not cite them itself.
    static let outside = ["reference" + " §", "reference" + "/", "SPEC" + " §", "../" + "shared", "/work/" + "shared",
                          "iommufd-uapi" + ".md", "qemu-accel-smmuv3" + ".md"]

    static var docName: Regex<AnyRegexOutput> { try! Regex(#"docs/([A-Za-z0-9_-]+)\.md"#) }
    static var section: Regex<AnyRegexOutput> { try! Regex(#"§([0-9]+(?:\.[0-9]+)*)"#) }
    static var trailingDoc: Regex<AnyRegexOutput> { try! Regex(#"docs/([A-Za-z0-9_-]+)\.md`?\s*$"#) }
    static var heading: Regex<AnyRegexOutput> { try! Regex(#"^#+\s+([0-9]+(?:\.[0-9]+)*)\.?(?:\s|$)"#) }

    /// Section numbers of a doc: `## 2. …` → 2, `### 9.16 …` → 9.16.
    static func headings(_ markdown: String) -> Set<String> {
        let heading = Self.heading
        var out = Set<String>()
        for line in markdown.split(separator: "\n", omittingEmptySubsequences: false) {
            if let m = line.firstMatch(of: heading), let n = m.output[1].substring { out.insert(String(n)) }
        }
        return out
    }

    /// Problems in one file, as "path:line: what". `docs` maps a doc's base name to its
    /// headings; a bare `§N` in docs/X.md refers to X itself, anywhere else it is a problem.
    static func problems(path: String, text: String, docs: [String: Set<String>]) -> [String] {
        let selfDoc: String? = path.hasPrefix("docs/") && path.hasSuffix(".md")
            ? String(path.dropFirst("docs/".count).dropLast(".md".count)) : nil
        let docName = Self.docName, section = Self.section, trailing = Self.trailingDoc
        var found: [String] = []
        // A document named at the very end of a line goes on to a § at the start of the next
        // ("… (docs/contract.md" / "/// §6): …").
        var carried: String?
        for (i, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            defer { carried = line.firstMatch(of: trailing).map { String($0.output[1].substring!) } }
            let at = "\(path):\(i + 1)"
            for name in outside where line.contains(name) {
                found.append("\(at): cites '\(name)', a document outside the repository")
            }
            guard line.contains("§") || line.contains("docs/") else { continue }
            let named = line.matches(of: docName)
            for m in named {
                let doc = String(m.output[1].substring!)
                if docs[doc] == nil { found.append("\(at): cites docs/\(doc).md, which does not exist") }
            }
            for m in line.matches(of: section) {
                let number = String(m.output[1].substring!)
                // The document is the last one named before this § on the line.
                let before = named.last { $0.range.upperBound <= m.range.lowerBound }.map { String($0.output[1].substring!) }
                let doc = before ?? carried ?? selfDoc
                guard let doc else {
                    found.append("\(at): §\(number) names no document (write docs/X.md §\(number))")
                    continue
                }
                if let headings = docs[doc], !headings.contains(number) {
                    found.append("\(at): docs/\(doc).md has no section \(number)")
                }
            }
        }
        return found
    }

    /// Text files under the roots, relative to the package, skipping build folders.
    static func files() -> [String] {
        let fm = FileManager.default
        var out: [String] = []
        for root in roots {
            var isDir: ObjCBool = false
            guard fm.fileExists(atPath: path(root), isDirectory: &isDir) else { continue }
            guard isDir.boolValue else { out.append(root); continue }
            guard let walker = fm.enumerator(atPath: path(root)) else { continue }
            while let rel = walker.nextObject() as? String {
                if rel.split(separator: "/").contains(where: { $0.hasPrefix(".build") }) { walker.skipDescendants(); continue }
                let full = root + "/" + rel
                var dir: ObjCBool = false
                if fm.fileExists(atPath: path(full), isDirectory: &dir), !dir.boolValue { out.append(full) }
            }
        }
        return out.sorted()
    }

    static func docHeadings() -> [String: Set<String>] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: path("docs"))) ?? []
        var out: [String: Set<String>] = [:]
        for n in names where n.hasSuffix(".md") {
            out[String(n.dropLast(3))] = headings((try? String(contentsOfFile: path("docs/" + n), encoding: .utf8)) ?? "")
        }
        return out
    }
}

@Suite struct CitationTests {
    @Test func everyCitationResolvesInsideTheRepository() {
        let docs = Citations.docHeadings()
        #expect(docs["kernel-interface"] != nil && docs["qemu-interface"] != nil && docs["contract"] != nil)
        var problems: [String] = []
        var scanned = 0
        for file in Citations.files() where !Citations.exempt.contains(file) {
            // Binary files (and anything not UTF-8) carry no citations.
            guard let text = try? String(contentsOfFile: path(file), encoding: .utf8) else { continue }
            scanned += 1
            problems += Citations.problems(path: file, text: text, docs: docs)
        }
        #expect(scanned > 100, "found only \(scanned) files under \(Citations.roots)")
        #expect(problems.count == 0, Comment(rawValue: "\(problems.count) citation(s) to fix:\n" + problems.joined(separator: "\n")))
    }

    @Test func theDocsKeepTheSectionNumbersTheCodeCites() {
        let docs = Citations.docHeadings()
        // Spot checks of numbering the code relies on (one per part of each doc).
        for n in ["0", "1.1", "2.13", "2.22", "3.3", "4.5", "5.3", "5.7", "6", "7.2", "8", "9.16", "9.35"] {
            #expect(docs["kernel-interface"]?.contains(n) == true, "docs/kernel-interface.md lacks §\(n)")
        }
        for n in ["1.3", "2.1", "3.1", "6"] {
            #expect(docs["qemu-interface"]?.contains(n) == true, "docs/qemu-interface.md lacks §\(n)")
        }
        for n in 1...7 { #expect(docs["contract"]?.contains(String(n)) == true, "docs/contract.md lacks §\(n)") }
    }

    @Test func theCheckFlagsEachKindOfBadCitation() {
        let docs: [String: Set<String>] = ["kernel-interface": ["4", "4.4"], "contract": ["6"]]
        let text = """
            // fine: docs/kernel-interface.md §4.4 and §4, docs/contract.md §6
            // outside: \("reference" + " §")4.4
            // bare: (§4.4)
            // missing section: docs/kernel-interface.md §9.99
            // missing doc: docs/nowhere.md §1
            """
        let found = Citations.problems(path: "Sources/X.swift", text: text, docs: docs)
        #expect(found.count == 5, "\(found)")
        #expect(found.contains { $0.hasPrefix("Sources/X.swift:2: cites") })
        #expect(found.contains { $0.hasPrefix("Sources/X.swift:2: §4.4 names no document") })
        #expect(found.contains { $0.hasPrefix("Sources/X.swift:3: §4.4 names no document") })
        #expect(found.contains { $0 == "Sources/X.swift:4: docs/kernel-interface.md has no section 9.99" })
        #expect(found.contains { $0 == "Sources/X.swift:5: cites docs/nowhere.md, which does not exist" })
        #expect(found.contains { $0 == "Sources/X.swift:5: docs/nowhere.md has no section 1" } == false)
        // A document at the end of a line carries over to a § that opens the next one.
        #expect(Citations.problems(path: "Sources/X.swift", text: "// (docs/contract.md\n// §6): ok", docs: docs).isEmpty)
        #expect(Citations.problems(path: "Sources/X.swift", text: "// (docs/contract.md\n// §7)", docs: docs)
                == ["Sources/X.swift:2: docs/contract.md has no section 7"])
        // Inside docs/X.md a bare § is X's own section.
        #expect(Citations.problems(path: "docs/contract.md", text: "see §6", docs: docs).isEmpty)
        #expect(Citations.problems(path: "docs/contract.md", text: "see §8", docs: docs) == ["docs/contract.md:1: docs/contract.md has no section 8"])
    }
}
