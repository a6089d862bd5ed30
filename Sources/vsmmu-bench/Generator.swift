import VsmmuKernel
import VsmmuModel

/// Generates large, valid topologies and the host they run on, for benchmarks.
/// Each guest gets two vSMMUs on two different physical SMMUs; each device sits in
/// its own IOMMU group. Memory: two regions per guest.
struct TopologyGenerator {
    var guests: Int
    var devices: Int
    var smmus = 16

    var devicesPerGuest: Int { max(1, devices / max(1, guests)) }

    func address(guest g: Int, vsmmu v: Int, index i: Int) -> String {
        // domain = guest, bus = vSMMU, slot = index: unique and easy to read
        func hex(_ x: Int, _ w: Int) -> String { let s = String(x, radix: 16); return String(repeating: "0", count: max(0, w - s.count)) + s }
        return "\(hex(g, 4)):\(hex(v + 1, 2)):\(hex(i, 2)).0"
    }

    func smmuName(_ i: Int) -> String {
        let s = String(0x1600_0000 + i * 0x100_0000, radix: 16)
        return "smmu3.0x" + String(repeating: "0", count: 16 - s.count) + s
    }

    func physical(guest g: Int, vsmmu v: Int) -> Int { (2 * g + v) % smmus }

    func topologyYAML() -> String {
        var o = "apiVersion: vsmmu/v1\nkind: Topology\nmetadata:\n  name: bench-\(devices)\nguests:\n"
        o.reserveCapacity(devices * 120)
        let per = devicesPerGuest
        for g in 0..<guests {
            o += "  - name: vm\(g)\n    user: qemu\n    memory:\n"
            o += "      - { name: ram0, guestAddress: 0x40000000, size: 16GiB, backing: memfd }\n"
            o += "      - { name: ram1, guestAddress: 0x800000000, size: 16GiB, backing: hugetlbfs, hugepageSize: 1GiB }\n"
            o += "    vsmmus:\n"
            let half = (per + 1) / 2
            for v in 0..<2 {
                let count = v == 0 ? half : per - half
                if count == 0 { continue }
                o += "      - name: smmu\(v)\n        devices:\n"
                for i in 0..<count {
                    o += "          - name: gpu\(v * half + i)\n            host: \(address(guest: g, vsmmu: v, index: i))\n"
                }
            }
        }
        return o
    }

    func host() -> HostDescription {
        var iommus: [HostIOMMU] = []
        for i in 0..<smmus {
            iommus.append(HostIOMMU(name: smmuName(i), type: .armSMMUv3, nesting: true, coherent: true, ats: true, ril: true,
                                    pasid: true, ssidSize: 20, oas: 48,
                                    reservedRegions: [ReservedRegion(start: 0x800_0000, size: 0x10_0000, type: "msi")], cmdqvVCMDQs: 4))
        }
        var devs: [HostPCIDevice] = []
        devs.reserveCapacity(devices)
        let per = devicesPerGuest
        var group = 1
        for g in 0..<guests {
            let half = (per + 1) / 2
            for v in 0..<2 {
                let count = v == 0 ? half : per - half
                for i in 0..<count {
                    devs.append(HostPCIDevice(address: PCIAddress(address(guest: g, vsmmu: v, index: i))!, vendor: 0x10de, device: 0x2342,
                                              classCode: 0x030200, driver: "nvidia", iommuGroup: group, iommu: smmuName(physical(guest: g, vsmmu: v)), numaNode: v))
                    group += 1
                }
            }
        }
        return HostDescription(name: "bench-host", kernel: KernelFacts(release: "7.2.13", iommufd: true, vfioCdev: true), iommus: iommus, pciDevices: devs)
    }
}
