import Foundation
import Testing
import VsmmuKernel
@testable import VsmmuLinux

// Issue 13 (4): a reply's item count is checked against the bytes that remain before
// anything is allocated. Before, LISTDIR with a count of 0xFFFFFFFF reserved 64 GiB and
// aborted the process (signal 6).

@Test func aListingCountLargerThanItsReplyIsMalformedNotAnAllocation() throws {
    let fake = FakeExecutor { _ in le32(1) + le32(0xFFFF_FFFF) + wireString("a") }
    let r = try remote(fake)
    #expect(throws: KernelCallError.self) { try r.listDirectory("/sys/bus/pci/devices") }
    #expect(r.transportFailure?.contains("malformed reply to LISTDIR") == true, "\(r.transportFailure ?? "nil")")
}

@Test func anFDSCountLargerThanItsReplyIsMalformed() throws {
    let fake = FakeExecutor { _ in le32(1) + le32(0x1000_0000) + le32(3) + wireString("/dev/iommu") + wireString("") }
    let r = try remote(fake)
    #expect(throws: KernelCallError.self) { try r.heldFiles() }
    #expect(r.transportFailure?.contains("malformed reply to FDS") == true)
}

@Test func anIoctlBufferCountLargerThanItsReplyIsMalformed() throws {
    let fake = FakeExecutor { req in
        le32(0) + wireData(WireIoctl(req.arguments).arg) + le32(0xFFFF_FFFF)
    }
    let r = try remote(fake)
    var arg = [UInt8](repeating: 0, count: 8)
    put32(&arg, 0, 8)
    let result = arg.withUnsafeMutableBytes { r.ioctl(3, UInt32(0x3B80), $0) }
    #expect(result == -Errno.EPROTO.rawValue)
}

// Found by the remote-reply fuzz target: a result of Int32.min was negated into an Errno
// (arithmetic overflow: vsmmu and the agent trapped).
@Test func aResultBelowEveryErrnoIsMalformedNotAnOverflow() throws {
    let fake = FakeExecutor { _ in le32(UInt32(bitPattern: Int32.min)) }
    let r = try remote(fake)
    #expect(r.status("/dev/iommu") == nil)
    #expect(r.transportFailure?.contains("neither a result nor -errno") == true, "\(r.transportFailure ?? "nil")")
}
