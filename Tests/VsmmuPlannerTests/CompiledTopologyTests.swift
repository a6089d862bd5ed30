import Foundation
import Testing
import VsmmuKernel
import VsmmuModel
import VsmmuProvisioning
import VsmmuTestSupport

/// Provisioner.validate keeps what it compiled (the agent's reconcile compiles the same
/// record every interval); a changed file or host must be compiled again.
@Test func aChangedRecordOrHostIsCompiledAgain() throws {
    let host = try HostDescription.load(path: path("examples/hosts/grace-2smmu-cmdqv.yaml"))
    let text = try String(contentsOfFile: path("examples/two-vsmmus-four-gpus.yaml"), encoding: .utf8)
    let file = "/compiled-\(UInt64.random(in: 0...UInt64.max)).yaml"
    let source = SourceText(path: file, bytes: Array(text.utf8))
    let (first, _) = try Provisioner.validate(source, host: host)
    let (again, _) = try Provisioner.validate(source, host: host)
    #expect(again == first)

    // The same path with other bytes: the new text.
    let renamed = SourceText(path: file, bytes: Array(text.replacingOccurrences(of: "name: train0", with: "name: train9").utf8))
    #expect(try Provisioner.validate(renamed, host: host).0.guests[0].name == "train9")
    // Another path with the same bytes: its own marks.
    let moved = SourceText(path: file + ".moved", bytes: source.bytes)
    #expect(try Provisioner.validate(moved, host: host).0.file == file + ".moved")

    // The host without a device the file uses: validated again, and refused.
    var smaller = host
    smaller.pciDevices.removeAll { $0.address == PCIAddress("0000:09:01.0") }
    #expect(throws: InvalidTopology.self) { try Provisioner.validate(source, host: smaller) }
    // An invalid file is reported every time.
    let broken = SourceText(path: file, bytes: Array("guests: [".utf8))
    #expect(throws: InvalidTopology.self) { try Provisioner.validate(broken, host: host) }
    #expect(throws: InvalidTopology.self) { try Provisioner.validate(broken, host: host) }
    #expect(try Provisioner.validate(source, host: host).0 == first)
}
