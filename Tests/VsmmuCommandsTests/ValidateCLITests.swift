import VsmmuTestSupport
import Foundation
import Testing

@Test func validExampleExitsZeroAndSaysSo() {
    let r = vsmmu(["validate", "examples/one-guest-one-vsmmu.yaml", "--host", "examples/hosts/grace-2smmu-cmdqv.yaml", "--verbose"])
    #expect(r.code == 0)
    #expect(r.stdout == """
    examples/one-guest-one-vsmmu.yaml: valid against host 'grace-01': 1 guest, 1 vSMMU, 1 device
      vm1/smmu0: physical smmu3.0x0000000016000000 (auto), ats on (auto), ril on (auto), ssidSize 20 (auto), oas 48 (auto), cmdqv on (auto)

    """)
    #expect(r.stderr == "")
}

@Test func invalidFileExitsOneWithLocatedErrors() {
    let r = vsmmu(["validate", "examples/invalid/vsmmu-mixed-iommus.yaml", "--host", "examples/hosts/grace-2smmu-cmdqv.yaml"])
    #expect(r.code == 1)
    #expect(r.stdout == "")
    #expect(r.stderr == """
    examples/invalid/vsmmu-mixed-iommus.yaml:13:33: error: device 'gpu2' (0000:19:01.0) sits behind IOMMU smmu3.0x0000000017000000, but the vSMMU's first device is behind smmu3.0x0000000016000000; an accelerated vSMMU serves one physical IOMMU
      13 |           - { name: gpu2, host: 0000:19:01.0 }
         |                                 ^
      hint: move it to vSMMU 'smmu1', which is on smmu3.0x0000000017000000
    examples/invalid/vsmmu-mixed-iommus.yaml: 1 error

    """)
}

@Test func withoutAHostOnlyHostFreeRulesRun() {
    let r = vsmmu(["validate", "examples/invalid/group-not-viable.yaml"])
    #expect(r.code == 0)
    let v = vsmmu(["validate", "examples/one-guest-one-vsmmu.yaml", "-v"])
    #expect(v.stdout.contains("auto values are resolved only against a host"))
}

@Test func missingFileIsAnErrorNotACrash() {
    let r = vsmmu(["validate", "no/such/file.yaml"])
    #expect(r.code == 1)
    #expect(r.stderr.hasPrefix("no/such/file.yaml:1:1: error: no such file"))
}

@Test func badHostFileIsReportedAsSuch() {
    let r = vsmmu(["validate", "examples/one-guest-one-vsmmu.yaml", "--host", "examples/one-guest-one-vsmmu.yaml"])
    #expect(r.code == 1)
    #expect(r.stderr.contains("this is a Topology file, expected kind Host"))
}

@Test func schemaCommandPrintsTheCommittedSchemas() throws {
    let t = vsmmu(["schema"])
    #expect(t.code == 0)
    #expect(t.stdout == (try String(contentsOfFile: path("schemas/topology.schema.json"), encoding: .utf8)))
    let h = vsmmu(["schema", "--kind", "host"])
    #expect(h.stdout == (try String(contentsOfFile: path("schemas/host.schema.json"), encoding: .utf8)))
}

@Test func usageErrorsExitWithUsageStatus() {
    let r = vsmmu(["validate"])
    #expect(r.code == 64)
    #expect(r.stderr.contains("Missing expected argument"))
}

@Test func helpTeachesWithAnExample() {
    let r = vsmmu(["validate", "--help"])
    #expect(r.code == 0)
    #expect(r.stdout.contains("Exit status: 0 valid, 1 invalid."))
    #expect(r.stdout.contains("Examples:") && r.stdout.contains("vsmmu: auto"))
}
