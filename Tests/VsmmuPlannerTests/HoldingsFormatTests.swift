import Foundation
import Testing
import VsmmuKernel
import VsmmuModel
import VsmmuPlanner

// holdings.json keeps device sources as text (as every earlier vsmmu wrote them), typed
// in memory; a file written before the lifecycle (no `running`) still reads.

@Test func holdingsFromAnEarlierVsmmuReadWithTypedSources() throws {
    let old = """
    {"formatVersion":1,"originalDrivers":["0000:09:01.0","nvidia"],
     "guests":{"vm1":{"iommufd":{"fd":3},"ioas":1,"uncertain":false,"holder":"simulated process 0",
       "devices":{"gpu0":{"source":"0000:09:01.0","cdev":{"fd":4},"vfioIndex":0,"devID":2},
                  "mock":{"source":"selftest:1","mockStdev":7,"devID":8}},
       "stage2":{},"memory":{},"vsmmus":{}}}}
    """
    let h = try JSONDecoder().decode(Holdings.self, from: Data(old.utf8))
    #expect(h.guests["vm1"]?.devices["gpu0"]?.source == .pci(PCIAddress("0000:09:01.0")!))
    #expect(h.guests["vm1"]?.devices["mock"]?.source == .selftest(1))
    #expect(h.running.isEmpty)
    let again = String(decoding: try JSONEncoder().encode(h), as: UTF8.self)
    #expect(again.contains("\"source\":\"0000:09:01.0\""))
    #expect(again.contains("\"source\":\"selftest:1\""))
    #expect(!again.contains("\"running\""))
    #expect(try JSONDecoder().decode(Holdings.self, from: Data(again.utf8)) == h)

    let bad = old.replacingOccurrences(of: "\"selftest:1\"", with: "\"../etc\"")
    #expect(throws: DecodingError.self) { try JSONDecoder().decode(Holdings.self, from: Data(bad.utf8)) }
}
