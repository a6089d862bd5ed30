import Foundation
import Testing
import VsmmuFidelity
import VsmmuKernel
import VsmmuModel
import VsmmuSim
import VsmmuTestSupport

/// The simulated kernel against the real kernels' recorded answers: every corpus under
/// corpus/ has a `.real` file recorded by a lab (lab/, lab-arm64/) from a real Linux 7.2,
/// and the simulated kernel must print exactly the same lines for it.
@Suite struct FidelityTests {
    static let corpusDir = path("Tests/VsmmuFidelityTests/corpus")

    static var corpora: [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: corpusDir)) ?? [])
            .filter { $0.hasSuffix(".corpus") }.sorted().map { String($0.dropLast(".corpus".count)) }
    }

    static func run(_ name: String) throws -> [String] {
        let corpus = try Corpus.parse(try String(contentsOfFile: "\(corpusDir)/\(name).corpus", encoding: .utf8))
        let hostPath = try #require(corpus.hostPath, "\(name).corpus names no host")
        let host = try HostDescription.load(path: path(hostPath))
        return try CorpusRunner(port: SimulatedKernel(host: host, environment: [:]), corpus: corpus).run()
    }

    @Test func thereAreCorpora() {
        #expect(Set(Self.corpora) == ["arm-smmuv3", "arm-smmuv3-64k", "arm-smmuv3-nocanwbs", "arm-smmuv3-s1only", "selftest", "selftest-order", "selftest-ported",
                                      "arm-smmuv3-gen", "arm-smmuv3-nocanwbs-gen", "arm-smmuv3-s1only-gen", "selftest-gen"])
    }

    @Test(arguments: corpora)
    func simulatedKernelAgreesWithTheRealOne(_ name: String) throws {
        let realPath = "\(Self.corpusDir)/\(name).real"
        let recorded = try #require(try? String(contentsOfFile: realPath, encoding: .utf8),
                                    "\(name).real is missing: record it with the lab")
        let expected = recorded.split(separator: "\n").map(String.init).filter { !$0.hasPrefix("#") }
        let actual = try Self.run(name)
        let differences = FidelityDiff.compare(expected: expected, actual: actual)
        #expect(differences.isEmpty, "\(differences.count) difference(s):\n\(differences.joined(separator: "\n"))")
        #expect(actual.count == expected.count)
    }

    @Test func errnosAreReportedPerCall() throws {
        let corpus = try Corpus.parse("""
        host examples/hosts/selftest.yaml
        case c
          ioas = ioas_alloc
          destroy id=ioas
          destroy id=ioas
        """)
        let host = try HostDescription.load(path: path("examples/hosts/selftest.yaml"))
        let out = try CorpusRunner(port: SimulatedKernel(host: host, environment: [:]), corpus: corpus).run()
        #expect(out == ["c:3 ioas_alloc -> ok 1", "c:4 destroy id=ioas -> ok", "c:5 destroy id=ioas -> ENOENT"])
    }

    static func simRun(_ text: String, host: String = "examples/hosts/selftest.yaml") throws -> [String] {
        let corpus = try Corpus.parse(text)
        return try CorpusRunner(port: SimulatedKernel(host: try HostDescription.load(path: path(host)), environment: [:]), corpus: corpus).run()
    }

    @Test func generatedCasesAreReproducibleFromTheirSeed() throws {
        let a = Generator(profile: .selftest, seed: 17).text()
        #expect(a == Generator(profile: .selftest, seed: 17).text())
        #expect(a != Generator(profile: .selftest, seed: 18).text())
        #expect(a.hasPrefix("case s17\n"))
        // a `generate` line runs exactly the seed's text, with the same line numbers
        let viaGenerate = try Self.simRun("host examples/hosts/selftest.yaml\ngenerate selftest 17-17\n")
        let viaText = try Self.simRun(a + "host examples/hosts/selftest.yaml\n")
        #expect(viaGenerate.count == viaText.count + 1)
        #expect(viaGenerate.first?.hasPrefix("generate:2 selftest 17-17 fingerprint 0x") == true)
        // the generated lines leave out the arguments (they are in the seed's text)
        func keyOpResult(_ line: String) -> String {
            let words = line.split(separator: " ", maxSplits: 2)
            return "\(words[0]) \(words[1]) -> " + (line.components(separatedBy: " -> ").last ?? "")
        }
        #expect(viaGenerate.dropFirst().map(keyOpResult) == viaText.map(keyOpResult))
        #expect(viaGenerate.dropFirst().allSatisfy { !$0.contains("=") })
    }

    @Test func newOperationsAnswerAsTheKernelDoes() throws {
        let out = try Self.simRun("""
        host examples/hosts/selftest.yaml
        case c
          ioas = ioas_alloc
          buf = mmap size=0x200000
          map_user ioas=ioas buf=buf offset=0x1000 length=0x1000 iova=0x1000000 flags=FIXED_READ_WRITE
          map_user ioas=ioas va=0x1000 length=0x1000 iova=0x2000000 flags=FIXED_READ_WRITE
          mock_domain pt=ioas
          unmap ioas=ioas iova=0x2000000 length=0x1000
          m = mock_domain pt=ioas
          other = iommufd
          ioas_alloc fd=other
          destroy id=ioas fd=other
          close fd=other
          ioas_alloc fd=other
          exit
          ioas_alloc
          close
          ioas_alloc
        """)
        #expect(out == [
            "c:3 ioas_alloc -> ok 1", "c:4 mmap size=0x200000 -> ok",
            "c:5 map_user ioas=ioas buf=buf offset=0x1000 length=0x1000 iova=0x1000000 flags=FIXED_READ_WRITE -> ok 0x1000000",
            // IOAS_MAP takes any address; pinning it for a domain finds nothing there
            "c:6 map_user ioas=ioas va=0x1000 length=0x1000 iova=0x2000000 flags=FIXED_READ_WRITE -> ok 0x2000000",
            "c:7 mock_domain pt=ioas -> EFAULT",
            "c:8 unmap ioas=ioas iova=0x2000000 length=0x1000 -> ok 0x1000",
            "c:9 mock_domain pt=ioas -> ok stdev 2 hwpt 4 idev 3",
            "c:10 iommufd -> ok", "c:11 ioas_alloc fd=other -> ok 1", "c:12 destroy id=ioas fd=other -> ok",
            "c:13 close fd=other -> ok", "c:14 ioas_alloc fd=other -> EBADF",
            "c:15 exit -> ok", "c:16 ioas_alloc -> ok 1", "c:17 close -> ok", "c:18 ioas_alloc -> EBADF",
        ])
    }

    @Test func shrinkerKeepsOnlyWhatMakesTheDifference() throws {
        let corpus = try Corpus.parse(Generator(profile: .selftest, seed: 5).text())
        let c = try #require(corpus.cases.first)
        let culprit = try #require(c.calls.last(where: { $0.op == "destroy" || $0.op == "iova_ranges" }))
        // "differs" while the culprit call and a call before it remain
        var shrinker = Shrinker { one in one.cases[0].calls.contains(culprit) && one.cases[0].calls.first?.op == "ioas_alloc" }
        let small = shrinker.shrink(c, in: corpus)
        #expect(small.calls.map(\.line) == [c.calls[0].line, culprit.line])
        #expect(shrinker.runs > 0)
    }

    @Test func differencesAreFoundByKeyNotByPosition() {
        let d = FidelityDiff.compare(expected: ["a:1 x -> ok 1", "a:2 y -> EBUSY", "a:3 z -> ok"],
                                     actual: ["a:1 x -> ok 1", "a:3 z -> ok", "a:4 w -> ok"])
        #expect(d == ["missing: a:2 y -> EBUSY", "unexpected: a:4 w -> ok"])
    }

    @Test func badCorpusLinesNameTheirLine() {
        #expect(throws: Corpus.ParseError.self) { try Corpus.parse("ioas_alloc") }
        do {
            _ = try Corpus.parse("case a\n  frob x=1\n")
            Issue.record("an unknown op parsed")
        } catch {
            #expect(error.line == 2)
            #expect(error.message.hasPrefix("unknown op 'frob'"))
        }
        do {
            _ = try Corpus.parse("case a\n  destroy\n")
            Issue.record("a missing argument parsed")
        } catch {
            #expect(error.message == "destroy needs id=")
        }
    }
}
