import Testing
import VsmmuKernel
import VsmmuModel
import VsmmuYAML

// Issue 13 (8): a host description (the simulated host's file) takes only the driver
// names the live backend would write into a sysfs path.

private func host(driver: String) -> String {
    """
    apiVersion: vsmmu/v1
    kind: Host
    metadata: { name: h }
    kernel: { release: "7.2", iommufd: true, vfioCdev: true }
    iommus: []
    pciDevices:
      - { address: "0000:09:01.0", vendor: 0x10de, device: 0x2342, class: 0x030200, driver: \(driver), iommuGroup: 12 }

    """
}

@Test(arguments: ["\"../../x\"", "\"a/b\"", "\"nv\\nidia\"", "\"..\"", "\".\"", "\"\"", "\"nvidia \""])
func aHostFileRefusesABadDriverName(_ driver: String) {
    #expect(throws: (any Error).self) { try HostDescription.parse(SourceText(path: "h.yaml", bytes: Array(host(driver: driver).utf8))) }
}

@Test(arguments: ["nvidia", "vfio-pci", "mlx5_core", "null"])
func aHostFileTakesARealDriverName(_ driver: String) throws {
    let h = try HostDescription.parse(SourceText(path: "h.yaml", bytes: Array(host(driver: driver).utf8)))
    #expect(h.pciDevices.first?.driver == (driver == "null" ? nil : driver))
}

// Found by the topology fuzz target (issue 13): libyaml counts a lone CR as a line break,
// the snippet did not, so a diagnostic's line named a line its snippet could not show.
@Test func aDiagnosticAfterLoneCRsShowsItsOwnLine() throws {
    let text = "apiVersion: vsmmu/v1\rkind: Topology\rmetadata: { name: t }\rguests: [ { name: VM1 } ]\r"
    let source = SourceText(path: "cr.yaml", bytes: Array(text.utf8))
    do {
        _ = try Topology.parse(source)
        Issue.record("VM1 is not a valid guest name")
    } catch {
        let d = try #require(error.diagnostics.first)
        #expect(d.mark.line == 4, "\(d)")
        #expect(error.rendered().contains("4 | guests: [ { name: VM1 } ]"), "\(error.rendered())")
    }
}
