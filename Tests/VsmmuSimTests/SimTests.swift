import Testing
@testable import VsmmuSim
@Test func placeholder() { #expect(Bool(true)) }
