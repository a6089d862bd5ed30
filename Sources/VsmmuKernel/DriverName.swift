/// A PCI driver name as vsmmu accepts it wherever it may become part of a sysfs path
/// (/sys/bus/pci/drivers/<name>/unbind) or a driver_override value: the live backend and
/// the simulated host (its host file, its driver_override writes) hold to the same rule.
public enum DriverName {
    /// 1-255 bytes of ASCII letters, digits, `_`, `-` and `.`; not `.` or `..` (so no `/`,
    /// no newline, no dot-dot path).
    public static func isValid(_ name: String) -> Bool {
        let u = name.utf8
        guard !u.isEmpty, u.count < 256, name != ".", name != ".." else { return false }
        return u.allSatisfy { c in
            (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || (c >= 0x30 && c <= 0x39) || c == 0x5f || c == 0x2d || c == 0x2e
        }
    }

    public static let rule = "a driver name is 1-255 characters of A-Z, a-z, 0-9, '_', '-' and '.', and not '.' or '..'"
}
