import Foundation
import Testing
import VsmmuModel
import VsmmuKernel
import VsmmuYAML

/// docs/contract.md §3: the per-device facts, kernel.pageSize and per-device `unknown:`.
private let factsHost = """
apiVersion: vsmmu/v1
kind: Host
metadata: { name: h }
kernel: { release: "7.2", pageSize: 65536, iommufd: true, vfioCdev: true }
iommus:
  - { name: smmu0, type: arm-smmuv3, nesting: true, coherent: true, ats: true, ril: true, pasid: true, ssidSize: 20, oas: 48 }
pciDevices:
  - address: "0000:09:01.0"
    vendor: 0x10de
    device: 0x2342
    class: 0x030200
    driver: nvidia
    iommuGroup: 12
    iommu: smmu0
    vfioDriver: nvgrace_gpu_vfio_pci
    ats: false
    pasidWidth: 0
    canwbs: true
    bars: [{ index: 0, size: 16MiB, bits64: true }, { index: 2, size: 128GiB, prefetchable: true, bits64: true }]
  - address: "0000:0a:00.0"
    vendor: 0x15b3
    device: 0x101e
    class: 0x020000
    driver: null
    iommuGroup: 13
    iommu: smmu0
    unknown: [vfioDriver, ats, pasidWidth]

"""

@Test func perDeviceFactsParseAndRoundTrip() throws {
    let host = try HostDescription.parse(SourceText(path: "h.yaml", bytes: Array(factsHost.utf8)))
    #expect(host.kernel.pageSize == 65536)
    #expect(host.kernel.effectivePageSize == 65536)
    let gpu = try #require(host.pciDevices.first)
    let smmu = try #require(host.iommus.first)
    #expect(gpu.effectiveVFIODriver == "nvgrace_gpu_vfio_pci")
    #expect(gpu.effectiveATS(behind: smmu) == false)
    #expect(gpu.effectivePASIDWidth(behind: smmu) == 0)
    #expect(gpu.bars == [PCIBar(index: 0, size: 16 << 20, prefetchable: false, bits64: true),
                         PCIBar(index: 2, size: 128 << 30, prefetchable: true, bits64: true)])
    let nic = host.pciDevices[1]
    #expect(nic.unknown == [.vfioDriver, .ats, .pasidWidth])
    // Absent per-device facts are the IOMMU's values; absent vfioDriver is vfio-pci.
    #expect(nic.effectiveVFIODriver == "vfio-pci")
    #expect(nic.effectiveATS(behind: smmu) && nic.effectivePASIDWidth(behind: smmu) == 20 && nic.effectiveCANWBS(behind: smmu))
    let again = try HostDescription.parse(SourceText(path: "rendered", bytes: Array(host.renderYAML().utf8)))
    #expect(again == host)
    // and through JSON (the simulated kernel's saved state)
    let json = try JSONEncoder().encode(host)
    #expect(try JSONDecoder().decode(HostDescription.self, from: json) == host)
}

@Test func hostFileWithoutTheNewFactsKeepsItsMeaning() throws {
    let old = factsHost.replacingOccurrences(of: "pageSize: 65536, ", with: "")
    let host = try HostDescription.parse(SourceText(path: "h.yaml", bytes: Array(old.utf8)))
    #expect(host.kernel.pageSize == nil && host.kernel.effectivePageSize == 4096)
    // JSON written before the per-device facts existed decodes (no unknown key).
    let device = #"{"address":"0000:01:00.0","vendor":1,"device":2,"classCode":3,"numaNode":0}"#
    let d = try JSONDecoder().decode(HostPCIDevice.self, from: Data(device.utf8))
    #expect(d.unknown == [] && d.vfioDriver == nil)
}

@Test func badPageSizeAndNonVFIODriverAreRefused() {
    let bad = factsHost.replacingOccurrences(of: "pageSize: 65536", with: "pageSize: 8192")
        .replacingOccurrences(of: "vfioDriver: nvgrace_gpu_vfio_pci", with: "vfioDriver: nvidia")
    var messages: [String] = []
    do { _ = try HostDescription.parse(SourceText(path: "h.yaml", bytes: Array(bad.utf8))) } catch { messages = error.diagnostics.map(\.message) }
    #expect(messages == ["kernel.pageSize 8192 is not a Linux page size (4096, 16384 or 65536)",
                         "PCI device 0000:09:01.0 has vfioDriver 'nvidia', which is not a VFIO driver (vfio-pci, or a variant driver ending in _vfio_pci)"])
}

@Test func perDeviceRulesNameTheDeviceAndTheFact() throws {
    let host = try HostDescription.parse(SourceText(path: "h.yaml", bytes: Array(factsHost.utf8)))
    let topology = try parse("""
    apiVersion: vsmmu/v1
    kind: Topology
    metadata: { name: t }
    guests:
      - name: vm1
        memory:
          - { name: ram0, guestAddress: 0x40000000, size: 0x40001000, backing: memfd }
        vsmmus:
          - name: s0
            ats: on
            ssidSize: 8
            devices:
              - { name: gpu0, host: 0000:09:01.0 }
        devices:
          - { name: nic0, host: 0000:0a:00.0 }

    """)
    let messages = Validator.validate(topology, host: host).diagnostics.map { "\($0.mark.line): \($0.message)" }
    #expect(messages == [
        "7: memory region 'ram0' size 1048580KiB is not a multiple of the 64KiB page size of host 'h' (kernel.pageSize)",
        "13: device 'gpu0' (0000:09:01.0) has no ATS (ats: false), but vSMMU 's0' has ats: on",
        "13: device 'gpu0' (0000:09:01.0) has a 0-bit PASID width (pasidWidth), less than the ssidSize 8 of vSMMU 's0'",
        "15: the VFIO driver of 0000:0a:00.0 is unknown (vfioDriver: the host description could not read modules.alias), so vsmmu cannot choose between vfio-pci and a variant driver",
    ])
    // Without the host (4 KiB pages assumed), the size is fine.
    #expect(Validator.validate(topology, host: nil).diagnostics.isEmpty)
}
