#if os(Linux)
import Foundation
import Glibc

/// Checks a live host can do what a plan needs before anything changes (docs/contract.md §7).
public enum Preflight {
    /// CAP_IPC_LOCK (bit 14) in the effective set: pinning is then not charged to RLIMIT_MEMLOCK.
    public static func hasIPCLock(status: String? = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) -> Bool {
        guard let line = status?.split(separator: "\n").first(where: { $0.hasPrefix("CapEff:") }),
              let bits = UInt64(line.split(separator: "\t").last.map(String.init)?.trimmingCharacters(in: .whitespaces) ?? "", radix: 16) else { return false }
        return bits & (1 << 14) != 0
    }

    public static func memlockLimit() -> UInt64 {
        var r = rlimit()
        guard getrlimit(__rlimit_resource_t(8), &r) == 0 else { return 0 }   // RLIMIT_MEMLOCK = 8 on Linux
        return UInt64(r.rlim_cur)
    }

    /// Why pinning `bytes` of guest RAM would fail with ENOMEM (docs/kernel-interface.md §9.15), or nil.
    public static func memlockProblem(pinning bytes: UInt64, limit: UInt64 = memlockLimit(), ipcLock: Bool = hasIPCLock()) -> String? {
        if ipcLock || limit == UInt64(bitPattern: -1) || bytes <= limit { return nil }
        return "guest RAM to pin is \(bytes >> 20) MiB but RLIMIT_MEMLOCK is \(limit >> 20) MiB and the process lacks CAP_IPC_LOCK: raise the limit (systemd LimitMEMLOCK=infinity) or grant CAP_IPC_LOCK"
    }

    /// Why this process cannot open /dev/iommu, or nil.
    public static func accessProblem(devRoot: String = "/dev", sysfsRoot: String = "/sys") -> String? {
        let path = devRoot + "/iommu"
        guard FileManager.default.fileExists(atPath: path) else {
            return "\(path) does not exist: the kernel was built without CONFIG_IOMMUFD"
        }
        if access(path, R_OK | W_OK) != 0 {
            return "\(path) is not readable and writable by uid \(getuid()): run vsmmu as root (the agent runs as root)"
        }
        // /dev/vfio/devices exists only while a device is on vfio-pci; the class is there
        // as soon as VFIO with cdev support is loaded.
        if !FileManager.default.fileExists(atPath: devRoot + "/vfio/devices") && !FileManager.default.fileExists(atPath: sysfsRoot + "/class/vfio-dev") {
            return "\(devRoot)/vfio/devices does not exist: the kernel was built without CONFIG_VFIO_DEVICE_CDEV (or vfio-pci is not loaded)"
        }
        return nil
    }

    /// `accessProblem` for a kernel behind a remote executor: the same device-node checks,
    /// through the executor. Whether it may open them is its uid's business (it says so
    /// when vsmmu opens them), so access(2) for this process is not asked.
    public static func remoteAccessProblem(_ kernel: LinuxKernel) -> String? {
        let remote = kernel.files.location
        let iommufd = kernel.hasIommufd
        if let failure = kernel.calls.transport.transportFailure { return failure }
        if !iommufd {
            return "\(kernel.devRoot)/iommu does not exist on the kernel behind the \(remote): it was built without CONFIG_IOMMUFD (or the executor cannot be reached)"
        }
        if !kernel.hasVfioCdev {
            return "\(kernel.devRoot)/vfio/devices does not exist on the kernel behind the \(remote): it was built without CONFIG_VFIO_DEVICE_CDEV (or vfio-pci is not loaded)"
        }
        return nil
    }
}
#endif
