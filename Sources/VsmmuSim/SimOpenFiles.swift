import VsmmuKernel

extension SimulatedKernel {
    /// The calling process's fd table (Linux: /proc/self/fd with fdinfo); another
    /// process's fds (a VMM's) are not in it.
    public func openFiles() throws(KernelCallError) -> [OpenFileInfo] {
        state.files.filter { (state.fileOwners[$0.key] ?? 0) == state.currentProcess }.sorted { $0.key < $1.key }.map { fd, file in
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
