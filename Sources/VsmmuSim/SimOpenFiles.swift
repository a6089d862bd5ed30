import VsmmuKernel

extension SimulatedKernel {
    /// The simulated process's fd table (Linux: /proc/self/fd with fdinfo).
    public func openFiles() throws(KernelCallError) -> [OpenFileInfo] {
        state.files.sorted { $0.key < $1.key }.map { fd, file in
            switch file {
            case .iommufd: return OpenFileInfo(fd: fd, kind: .iommufd)
            case .vfioDevice(let v): return OpenFileInfo(fd: fd, kind: .vfioDevice(v.address))
            case .veventq: return OpenFileInfo(fd: fd, kind: .eventQueue)
            case .memfd: return OpenFileInfo(fd: fd, kind: .memfd)
            }
        }
    }

    public func closeFile(_ fd: Int32) {
        callQuietly(.closeFD(fd: fd), .close(fd: fd)) { closeFD(fd) }
    }
}
