// vsmmu-fidelity: runs a differential-fidelity corpus (Sources/VsmmuFidelity) on a kernel
// and prints (or checks) one line per call. The labs run it on real kernels; the tests run
// the same corpus on the simulated kernel; both compare to the recorded real output.
import Foundation
import VsmmuFidelity
import VsmmuKernel
import VsmmuLinux
import VsmmuModel
import VsmmuSim

let usage = """
usage: vsmmu-fidelity CORPUS (--sim [HOST.yaml] | --linux | --remote unix:PATH) [--expect FILE]
       vsmmu-fidelity generate PROFILE SEEDS
       vsmmu-fidelity shrink CORPUS CASE --sim [HOST.yaml] (--linux | --remote unix:PATH)

Runs every case of CORPUS on one kernel and prints `CASE:LINE OP ARGS -> ok RESULT|ERRNO`.
  --sim [HOST]     the simulated kernel modelling HOST (default: the corpus's `host` line,
                   relative to the current directory)
  --linux          this machine's kernel (/dev/iommu, /dev/vfio/devices, sysfs)
  --remote unix:PATH  a vsmmu-remote executor (docs/remote-executor.md)
  --expect FILE    compare with FILE (the recorded real-kernel output); print every
                   difference and exit 1 if there is one
generate prints the generated case of each seed (SEEDS: N or FIRST-LAST) for PROFILE
(selftest, arm-smmuv3): a `generate PROFILE SEEDS` line of a corpus runs exactly these, and
a recording's `CASE:LINE` is line LINE of the case's text here.
shrink runs case CASE of CORPUS on the simulated kernel and on a real one, and reduces it
to the fewest calls on which they still answer differently; prints that case and both
kernels' answers (docs/fidelity.md).
"""

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("vsmmu-fidelity: \(message)\n".utf8))
    exit(2)
}

var args = Array(CommandLine.arguments.dropFirst())
if args.isEmpty || args.contains("--help") || args.contains("-h") { print(usage); exit(args.isEmpty ? 2 : 0) }
if args[0] == "generate" {
    guard args.count == 3, let profile = GeneratorProfile(rawValue: args[1]), let seeds = Corpus.seedRange(args[2]) else {
        fail("generate takes a profile (\(GeneratorProfile.allCases.map(\.rawValue).joined(separator: ", "))) and SEEDS (N or FIRST-LAST)")
    }
    for seed in seeds { print(Generator(profile: profile, seed: seed).text(), terminator: "") }
    exit(0)
}
var shrinkCase: String?
if args[0] == "shrink" {
    guard args.count >= 3 else { fail("shrink takes CORPUS CASE and both kernels") }
    args.removeFirst()
    shrinkCase = args.remove(at: 1)
}
let corpusPath = args.removeFirst()
var sim = false
var real: String?   // "linux" or "remote"
var hostPath: String?
var remote: String?
var expectPath: String?
while !args.isEmpty {
    let a = args.removeFirst()
    switch a {
    case "--sim":
        sim = true
        if let next = args.first, !next.hasPrefix("--") { hostPath = args.removeFirst() }
    case "--linux": real = "linux"
    case "--remote":
        real = "remote"
        guard !args.isEmpty else { fail("--remote needs unix:PATH") }
        remote = args.removeFirst()
    case "--expect":
        guard !args.isEmpty else { fail("--expect needs a file") }
        expectPath = args.removeFirst()
    default: fail("unknown argument '\(a)'\n\(usage)")
    }
}
if shrinkCase != nil {
    guard sim, real != nil else { fail("shrink needs --sim and one real kernel (--linux or --remote)") }
} else {
    guard sim != (real != nil) else { fail("say which one kernel: --sim, --linux or --remote\n\(usage)") }
}

guard let text = try? String(contentsOfFile: corpusPath, encoding: .utf8) else { fail("cannot read \(corpusPath)") }
let corpus: Corpus
do { corpus = try Corpus.parse(text) } catch { fail("\(corpusPath):\(error.line): \(error.message)") }

let simHost: HostDescription? = {
    guard sim else { return nil }
    guard let path = hostPath ?? corpus.hostPath else { fail("--sim needs a host file (the corpus has no `host` line)") }
    do { return try HostDescription.load(path: path) } catch { fail("\(error)") }
}()
@MainActor func realKernel() -> KernelPort {
    if real == "linux" { return LinuxKernel() }
    do { return LinuxKernel(remote: try RemoteExecutor(address: remote ?? "")) } catch { fail("\(error)") }
}

if let name = shrinkCase, let simHost {
    guard let c = corpus.cases.first(where: { $0.name == name }) else { fail("\(corpusPath) has no case '\(name)'") }
    // a fresh simulated kernel per run (the real one is set back by each case's closes)
    let realPort = realKernel()
    let answers = { (one: Corpus) -> (sim: [String], real: [String]) in
        do {
            return (try CorpusRunner(port: SimulatedKernel(host: simHost, environment: [:]), corpus: one).run(), try CorpusRunner(port: realPort, corpus: one).run())
        } catch { fail("\(error)") }
    }
    var shrinker = Shrinker { one in let a = answers(one); return a.sim != a.real }
    guard shrinker.differs(Shrinker.single(c, of: corpus)) else { print("shrink: the kernels agree on \(name) (\(c.calls.count) calls)"); exit(1) }
    let small = shrinker.shrink(c, in: corpus)
    let a = answers(Shrinker.single(small, of: corpus))
    print(small.text, terminator: "")
    for (s, r) in zip(a.sim, a.real) { print(s == r ? "#   both: \(s)" : "#    sim: \(s)\n#   real: \(r)") }
    print("# shrink: \(c.calls.count) -> \(small.calls.count) calls in \(shrinker.runs) runs")
    exit(0)
}

let port: KernelPort = simHost.map { SimulatedKernel(host: $0, environment: [:]) } ?? realKernel()

let lines: [String]
do { lines = try CorpusRunner(port: port, corpus: corpus).run() } catch { fail("\(error)") }

guard let expectPath else {
    for line in lines { print(line) }
    exit(0)
}
guard let expectedText = try? String(contentsOfFile: expectPath, encoding: .utf8) else { fail("cannot read \(expectPath)") }
let expected = expectedText.split(separator: "\n").map(String.init).filter { !$0.hasPrefix("#") }
let differences = FidelityDiff.compare(expected: expected, actual: lines)
for d in differences { print(d) }
// A differing generated case: how to see its calls and cut it down to a short one.
let generatedCases = Set(corpus.cases.filter(\.generated).map(\.name))
var hinted: Set<String> = []
for d in differences {
    let word = d.split(separator: " ").dropFirst().first.map(String.init) ?? ""
    let name = String(word.prefix { $0 != ":" })
    guard generatedCases.contains(name), let origin = Generator.origin(ofCase: name), hinted.insert(name).inserted else { continue }
    print("seed \(origin.seed): vsmmu-fidelity generate \(origin.profile.rawValue) \(origin.seed)   (shrink: vsmmu-fidelity shrink \(corpusPath) \(name) --sim --linux|--remote unix:PATH)")
}
print("fidelity: \(lines.count) calls, \(differences.count) difference(s) against \(expectPath)")
exit(differences.isEmpty ? 0 : 1)
