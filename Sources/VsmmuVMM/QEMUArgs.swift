import VsmmuKernel
import VsmmuModel
import VsmmuPlanner

/// `vsmmu qemu-args`: the QEMU command-line fragment for one guest
/// (docs/qemu-interface.md §1).
public enum QEMUArgs {
    public struct Output: Sendable {
        public var platform: VMMLayout.Platform
        public var machine: [String]     // the machine options the platform needs
        public var args: [String]        // each element one argument (options and values alternate)
        public var notes: [String]
        public var fds: [String: String] // fd placeholder name -> what it is (with --fds)

        public init(platform: VMMLayout.Platform, machine: [String], args: [String], notes: [String] = [], fds: [String: String] = [:]) {
            self.platform = platform; self.machine = machine; self.args = args; self.notes = notes; self.fds = fds
        }
    }

    static func onOff(_ b: Bool) -> String { b ? "on" : "off" }

    static func qemuSize(_ v: UInt64) -> String {
        for (unit, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] where v % (1 << UInt64(shift)) == 0 {
            return "\(v >> UInt64(shift))\(unit)"
        }
        return String(v)
    }

    /// With `fds`, every fd is a `{vsmmu-GUEST-NAME}` placeholder (FDPlaceholder) for the fresh
    /// fds a handover passes: an empty iommufd, unbound VFIO cdevs, the guest-RAM memfds.
    public static func render(_ layout: VMMLayout, fds: Bool) throws(FDPlaceholder.Collision) -> Output {
        let g = layout.guest
        var args: [String] = []
        var notes: [String] = []
        var fdNames: [String: String] = [:]
        func dev(_ s: String) { args += ["-device", s] }
        func token(_ t: FDPlaceholder.Thing) -> String { FDPlaceholder.token(guest: g.name, thing: t) }
        if fds {
            _ = try FDPlaceholder.names(guest: g.name, devices: g.devices.map(\.name), memory: g.memory.map(\.name))
        }

        let machine: [String]
        switch layout.platform {
        case .armVirt:
            machine = ["-machine", "virt,accel=kvm,gic-version=3", "-cpu", "host", "-bios", "QEMU_EFI.fd"]
            notes.append("machine: aarch64 virt with KVM and the in-kernel irqchip, GICv3 with ITS, UEFI firmware and ACPI (accelerated SMMUv3 refuses a device tree); migration is blocked while accel=on")
        case .x86Q35:
            machine = ["-machine", "q35,accel=kvm", "-cpu", "host"]
            notes.append("machine: x86_64 q35 with KVM; plain VFIO passthrough needs no vIOMMU in the guest")
        }

        if fds {
            let name = FDPlaceholder.name(guest: g.name, thing: .iommufd)
            fdNames[name] = "a fresh /dev/iommu fd, empty, with per-process memlock accounting (IOMMU_OPTION_RLIMIT_MODE); QEMU builds its own IOAS, HWPTs and vIOMMUs in it"
            args += ["-object", "iommufd,id=iommufd0,fd=\(token(.iommufd))"]
            notes.append("fds: `vsmmu launch --guest \(g.name) -- COMMAND...` replaces each {\(FDPlaceholder.prefix)\(g.name)-...} with the number of the fd COMMAND inherits; QEMU takes only numbers here")
        } else {
            args += ["-object", "iommufd,id=iommufd0"]
        }

        // Guest RAM. The machine RAM region becomes the machine's memory backend; other
        // regions cannot be expressed with -m alone.
        let ram = layout.machineRAM
        for m in g.memory {
            let id = "mem.\(m.name)"
            var backend: String
            switch m.backing {
            case .memfd:
                backend = "memory-backend-memfd,id=\(id),size=\(qemuSize(m.size)),share=on"
                if let h = m.hugepageSize { backend += ",hugetlb=on,hugetlbsize=\(qemuSize(h))" }
            case .hugetlbfs:
                backend = "memory-backend-file,id=\(id),size=\(qemuSize(m.size)),mem-path=/dev/hugepages,share=on,prealloc=on"
                if let h = m.hugepageSize { notes.append("memory \(m.name): mount hugetlbfs with pagesize=\(qemuSize(h)) at /dev/hugepages (or change mem-path)") }
            case .anonymous:
                backend = "memory-backend-ram,id=\(id),size=\(qemuSize(m.size))"
                notes.append("memory \(m.name): anonymous RAM is private to QEMU, so it is not the memory vsmmu mapped into the IOAS; use memfd or hugetlbfs for guests behind an accelerated vSMMU")
            }
            if fds, m.backing != .anonymous {
                // The prepared pages themselves: QEMU reopens the fd through /proc and maps it shared.
                backend = "memory-backend-file,id=\(id),size=\(qemuSize(m.size)),mem-path=/proc/self/fd/\(token(.memory(m.name))),share=on"
                fdNames[FDPlaceholder.name(guest: g.name, thing: .memory(m.name))] =
                    "the \(m.backing == .memfd ? "memfd" : "hugetlbfs file") of \(m.name), the guest RAM the agent prepared"
            }
            args += ["-object", backend]
            if m.name == ram?.name {
                args += ramIsNUMAMemory(layout) ? ["-m", qemuSize(m.size)] : ["-machine", "memory-backend=\(id)", "-m", qemuSize(m.size)]
                if layout.platform == .x86Q35, m.guestAddress != 0 {
                    notes.append("memory \(m.name) is q35's machine RAM, which q35 maps from address 0 (what exceeds its low-memory limit goes above 4 GiB), not at the topology's 0x\(String(m.guestAddress, radix: 16)); that address is only where the prepared (agent-held) IOAS maps it, and QEMU builds its own IOAS after launch")
                }
            } else if layout.platform == .armVirt {
                notes.append("memory \(m.name) at 0x\(String(m.guestAddress, radix: 16)): the virt machine's RAM starts at 0x40000000; map this region with a NUMA node or a pc-dimm of your VM definition")
            } else {
                notes.append("memory \(m.name) at 0x\(String(m.guestAddress, radix: 16)): q35's RAM is one backend; map this region with a NUMA node or a pc-dimm of your VM definition")
            }
        }

        args += topologyArgs(layout)
        notes += topologyNotes(layout)

        for e in layout.expanders {
            let r = e.vsmmu.resolved
            dev("pxb-pcie,id=\(e.busID),bus_nr=\(e.vsmmu.busNumber),bus=pcie.0" + expanderNode(layout, vsmmu: e.vsmmu.name))
            dev("arm-smmuv3,id=\(e.smmuID),primary-bus=\(e.busID),accel=on,identifier=\(e.vsmmu.identifier),ats=\(onOff(r.ats)),ril=\(onOff(r.ril)),ssidsize=\(r.ssidSize),oas=\(r.oas),cmdqv=\(onOff(r.cmdqv))")
            for p in e.ports { rootPort(p, layout, &args, &fdNames, &notes, g.name, fds) }
        }
        for p in layout.rootPorts { rootPort(p, layout, &args, &fdNames, &notes, g.name, fds) }
        return Output(platform: layout.platform, machine: machine, args: args, notes: notes, fds: fdNames)
    }

    static func rootPort(_ p: VMMLayout.RootPort, _ layout: VMMLayout, _ args: inout [String], _ fdNames: inout [String: String], _ notes: inout [String], _ guest: String, _ fds: Bool) {
        args += ["-device", "pcie-root-port,id=\(p.id),bus=\(p.bus),chassis=\(p.chassis),addr=0x\(String(p.slot, radix: 16))"]
        guard let d = p.device else {
            notes.append("root port \(p.id) is empty on purpose: a removed device's port keeps later guest bus numbers (and vSIDs) where they are")
            return
        }
        switch d.source {
        case .pci(let a):
            if fds {
                fdNames[FDPlaceholder.name(guest: guest, thing: .device(d.name))] = "a fresh VFIO cdev fd of \(a), unbound: QEMU binds it to the iommufd itself"
                args += ["-device", "vfio-pci,id=\(d.name),bus=\(p.id),iommufd=iommufd0,fd=\(FDPlaceholder.token(guest: guest, thing: .device(d.name)))"]
            } else {
                args += ["-device", "vfio-pci,id=\(d.name),host=\(a),bus=\(p.id),iommufd=iommufd0"]
            }
            args += initiatorArgs(layout, device: d.name)
        case .selftest(let n):
            notes.append("device \(d.name) is kernel self-test mock device selftest:\(n): it has no QEMU counterpart")
        }
    }

    /// Shell form: one option per line, values quoted only where the shell needs it.
    public static func text(_ o: Output, guest: String, topology: String) -> String {
        var out = "# QEMU arguments for guest \(guest) (topology \(topology)), as vsmmu plans it\n"
        out += "# machine: \(o.machine.joined(separator: " "))\n"
        for n in o.notes { out += "# note: \(n)\n" }
        for (k, v) in o.fds.sorted(by: { $0.key < $1.key }) { out += "# fd {\(k)}: \(v)\n" }
        var i = 0
        var lines: [String] = []
        while i < o.args.count {
            if o.args[i].hasPrefix("-"), i + 1 < o.args.count, !o.args[i + 1].hasPrefix("-") {
                lines.append("\(o.args[i]) \(o.args[i + 1])")
                i += 2
            } else {
                lines.append(o.args[i])
                i += 1
            }
        }
        out += lines.joined(separator: " \\\n") + "\n"
        return out
    }

    /// An argument `--format argv` cannot carry: `$(...)` splits on whitespace and expands
    /// glob characters, so one such argument would reach QEMU as several or as file names.
    public struct UnsafeArgument: Error, Sendable, CustomStringConvertible {
        public var argument: String
        public var reason: String
        public var description: String {
            "argument '\(argument)' \(reason): --format argv cannot carry it through the shell's word splitting; use --format json"
        }
    }

    /// One line, the arguments separated by single spaces, for `$(vsmmu qemu-args ... --format argv)`.
    /// Only `args`: the machine options differ per platform and are the caller's.
    public static func argv(_ o: Output) throws(UnsafeArgument) -> String {
        for a in o.args {
            if a.isEmpty { throw UnsafeArgument(argument: a, reason: "is empty") }
            if let c = a.first(where: { $0.isWhitespace }) {
                throw UnsafeArgument(argument: a, reason: c == " " ? "contains a space" : "contains whitespace")
            }
            if let c = a.first(where: { "*?[".contains($0) }) {
                throw UnsafeArgument(argument: a, reason: "contains the glob character '\(c)'")
            }
        }
        return o.args.joined(separator: " ") + "\n"
    }

    public static func json(_ o: Output, guest: String) -> JSONValue {
        ["guest": .string(guest), "platform": .string(o.platform.rawValue), "machine": .array(o.machine.map { .string($0) }),
         "args": .array(o.args.map { .string($0) }),
         "notes": .array(o.notes.map { .string($0) }), "fds": .object(o.fds.mapValues { .string($0) })]
    }
}
