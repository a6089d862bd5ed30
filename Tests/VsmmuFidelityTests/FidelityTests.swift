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
        #expect(Set(Self.corpora) == ["arm-smmuv3", "arm-smmuv3-64k", "arm-smmuv3-nocanwbs", "arm-smmuv3-s1only", "selftest"])
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
