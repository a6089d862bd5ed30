import VsmmuYAML

/// What a topology says about a device's place in the guest's NUMA layout (issue 17,
/// "NUMA and BARs"; docs/qemu-interface.md §7). Kept apart from the placement fields so
/// that each part of the guest layout has its own home in the model.
public struct DeviceLayoutFields: Hashable, Sendable {
    /// ACPI Generic Initiator NUMA nodes bound to the device; nil: the default (eight for
    /// a GPU on nvgrace_gpu_vfio_pci, as KubeVirt gives a Grace GPU; none otherwise).
    public var genericInitiators: Int?
    public var genericInitiatorsMark: Mark?
    public init(genericInitiators: Int? = nil, genericInitiatorsMark: Mark? = nil) {
        self.genericInitiators = genericInitiators; self.genericInitiatorsMark = genericInitiatorsMark
    }
}

public enum GuestLayoutSchema {
    /// QEMU builds at most 128 NUMA nodes (MAX_NODES); a device's share is capped well below.
    public static let maxGenericInitiators: UInt64 = 64

    public static let genericInitiators = SchemaField(
        "genericInitiators",
        .scalar(.uint(max: maxGenericInitiators),
                description: "memory-less guest NUMA nodes bound to this device by ACPI Generic Initiator affinity; default 8 for a GPU on nvgrace_gpu_vfio_pci, else 0"))
}

extension Device {
    /// `Device.extract` and the layout fields of the same mapping.
    static func extractWithLayout(_ c: Checked) -> Device {
        var d = Device.extract(c)
        d.layout = DeviceLayoutFields(genericInitiators: c["genericInitiators"]?.uint.map { Int($0) },
                                      genericInitiatorsMark: c["genericInitiators"]?.mark)
        return d
    }
}
