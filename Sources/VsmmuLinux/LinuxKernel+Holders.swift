#if os(Linux)
import Foundation
import VsmmuKernel

extension LinuxKernel {
    /// Walks /proc/<pid>/fd of every process (through the HostFiles seam, so a remote
    /// executor's kernel is asked too) for links to the device's VFIO cdev or group node.
    /// Processes that vanish or hide their fds mid-walk are skipped: the question is who
    /// holds the device now, and a process we may not read cannot be one we started.
    public func deviceHolders(_ address: PCIAddress) throws(KernelCallError) -> [FileHolder] {
        guard let device = sysfs.device(address) else { return [] }
        var targets: Set<String> = []
        if let index = device.vfioDevIndex { targets.insert(devRoot + "/vfio/devices/vfio\(index)") }
        if let group = device.iommuGroup { targets.insert(devRoot + "/vfio/\(group)") }
        guard !targets.isEmpty else { return [] }
        let pids: [String]
        do throws(KernelCallError) { pids = try files.listDirectory(procRoot) } catch { throw error.renamed(.procFDScan) }
        var holders: [FileHolder] = []
        for name in pids {
            guard let pid = Int32(name), pid > 0 else { continue }
            guard let fds = try? files.listDirectory("\(procRoot)/\(pid)/fd") else { continue }
            let holds = fds.contains { fd in
                (try? files.readLink("\(procRoot)/\(pid)/fd/\(fd)")).map { targets.contains($0) } ?? false
            }
            guard holds else { continue }
            let comm = (try? files.read("\(procRoot)/\(pid)/comm")).map { String(decoding: $0, as: UTF8.self) } ?? "?"
            holders.append(FileHolder(pid: pid, command: comm.trimmingCharacters(in: .newlines)))
        }
        return holders.sorted { $0.pid < $1.pid }
    }
}
#endif
