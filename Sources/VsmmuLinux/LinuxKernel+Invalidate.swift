#if os(Linux)
import VsmmuKernel

extension LinuxKernel {
    /// Not counted as mutating: it changes the IOMMU's caches, no iommufd object.
    public func hwptInvalidate(_ fd: IommufdHandle, hwptID: ObjectID, dataType: InvalidateDataType, entryLen: UInt32, entryNum: UInt32, entries: [UInt8]) throws(KernelCallError) -> UInt32 {
        try calls.hwptInvalidate(fd.fd, hwptID: hwptID, dataType: dataType, entryLen: entryLen, entryNum: entryNum, entries: entries)
    }
}
#endif
