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

Runs every case of CORPUS on one kernel and prints `CASE:LINE OP ARGS -> ok RESULT|ERRNO`.
  --sim [HOST]     the simulated kernel modelling HOST (default: the corpus's `host` line,
                   relative to the current directory)
  --linux          this machine's kernel (/dev/iommu, /dev/vfio/devices, sysfs)
  --remote unix:PATH  a vsmmu-remote executor (docs/remote-executor.md)
  --expect FILE    compare with FILE (the recorded real-kernel output); print every
                   difference and exit 1 if there is one
"""

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("vsmmu-fidelity: \(message)\n".utf8))
    exit(2)
}

var args = Array(CommandLine.arguments.dropFirst())
if args.isEmpty || args.contains("--help") || args.contains("-h") { print(usage); exit(args.isEmpty ? 2 : 0) }
let corpusPath = args.removeFirst()
var backend: String?
var hostPath: String?
var remote: String?
var expectPath: String?
while !args.isEmpty {
    let a = args.removeFirst()
    switch a {
    case "--sim":
        backend = "sim"
        if let next = args.first, !next.hasPrefix("--") { hostPath = args.removeFirst() }
    case "--linux": backend = "linux"
    case "--remote":
        backend = "remote"
        guard !args.isEmpty else { fail("--remote needs unix:PATH") }
        remote = args.removeFirst()
    case "--expect":
        guard !args.isEmpty else { fail("--expect needs a file") }
        expectPath = args.removeFirst()
    default: fail("unknown argument '\(a)'\n\(usage)")
    }
}
guard let backend else { fail("say which kernel: --sim, --linux or --remote\n\(usage)") }

guard let text = try? String(contentsOfFile: corpusPath, encoding: .utf8) else { fail("cannot read \(corpusPath)") }
let corpus: Corpus
do { corpus = try Corpus.parse(text) } catch { fail("\(corpusPath):\(error.line): \(error.message)") }

let port: KernelPort
switch backend {
case "sim":
    guard let path = hostPath ?? corpus.hostPath else { fail("--sim needs a host file (the corpus has no `host` line)") }
    do { port = SimulatedKernel(host: try HostDescription.load(path: path), environment: [:]) } catch { fail("\(error)") }
case "linux":
    port = LinuxKernel()
default:
    do { port = LinuxKernel(remote: try RemoteExecutor(address: remote ?? "")) } catch { fail("\(error)") }
}

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
print("fidelity: \(lines.count) calls, \(differences.count) difference(s) against \(expectPath)")
exit(differences.isEmpty ? 0 : 1)
