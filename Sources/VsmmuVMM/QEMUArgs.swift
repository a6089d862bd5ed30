import VsmmuKernel
import VsmmuModel
import VsmmuPlanner

/// `vsmmu qemu-args`: the QEMU command-line fragment for one guest
/// (reference/qemu-accel-smmuv3.md §1).
public enum QEMUArgs {
    public struct Output: Sendable {
        public var machine: [String]     // the machine options the mode needs
        public var args: [String]        // each element one argument (options and values alternate)
        public var notes: [String]
        public var fds: [String: String] // fd name -> what it is (with --fds)
    }

    static func onOff(_ b: Bool) -> String { b ? "on" : "off" }

    static func qemuSize(_ v: UInt64) -> String {
        for (unit, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] where v % (1 << UInt64(shift)) == 0 {
            return "\(v >> UInt64(shift))\(unit)"
        }
        return String(v)
    }

    public static func render(_ layout: VMMLayout, fds: Bool) -> Output {
        let g = layout.guest
        var args: [String] = []
        var notes: [String] = []
        var fdNames: [String: String] = [:]
        func dev(_ s: String) { args += ["-device", s] }

        let machine = ["-machine", "virt,accel=kvm,gic-version=3", "-cpu", "host", "-bios", "QEMU_EFI.fd"]
        notes.append("machine: aarch64 virt with KVM and the in-kernel irqchip, GICv3 with ITS, UEFI firmware and ACPI (accelerated SMMUv3 refuses a device tree); migration is blocked while accel=on")

        if fds {
            fdNames["vsmmu-\(g.name)-iommufd"] = "the guest's iommufd (vsmmu handoff: iommufdFd), add with -add-fd or the monitor's getfd"
            args += ["-object", "iommufd,id=iommufd0,fd=vsmmu-\(g.name)-iommufd"]
        } else {
            args += ["-object", "iommufd,id=iommufd0"]
        }

        // Guest RAM. QEMU's virt machine puts RAM at 0x40000000: a region there becomes the
        // machine memory backend; others cannot be expressed with -m alone.
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
                let name = "vsmmu-\(g.name)-\(m.name)"
                backend = "memory-backend-file,id=\(id),size=\(qemuSize(m.size)),mem-path=/proc/self/fd/{\(name)},share=on"
                fdNames[name] = "the memfd of \(m.name) (vsmmu handoff: memory.\(m.name).fd); replace {\(name)} with the fd number QEMU inherits"
            }
            args += ["-object", backend]
            if m.guestAddress == 0x4000_0000 {
                args += ["-machine", "memory-backend=\(id)", "-m", qemuSize(m.size)]
            } else {
                notes.append("memory \(m.name) at 0x\(String(m.guestAddress, radix: 16)): the virt machine's RAM starts at 0x40000000; map this region with a NUMA node or a pc-dimm of your VM definition")
            }
        }

        for e in layout.expanders {
            let r = e.vsmmu.resolved
            dev("pxb-pcie,id=\(e.busID),bus_nr=\(e.vsmmu.busNumber),bus=pcie.0")
            dev("arm-smmuv3,id=\(e.smmuID),primary-bus=\(e.busID),accel=on,identifier=\(e.vsmmu.identifier),ats=\(onOff(r.ats)),ril=\(onOff(r.ril)),ssidsize=\(r.ssidSize),oas=\(r.oas),cmdqv=\(onOff(r.cmdqv))")
            for p in e.ports { rootPort(p, &args, &fdNames, &notes, g.name, fds) }
        }
        for p in layout.rootPorts { rootPort(p, &args, &fdNames, &notes, g.name, fds) }
        return Output(machine: machine, args: args, notes: notes, fds: fdNames)
    }

    static func rootPort(_ p: VMMLayout.RootPort, _ args: inout [String], _ fdNames: inout [String: String], _ notes: inout [String], _ guest: String, _ fds: Bool) {
        args += ["-device", "pcie-root-port,id=\(p.id),bus=\(p.bus),chassis=\(p.chassis),addr=0x\(String(p.slot, radix: 16))"]
        guard let d = p.device else {
            notes.append("root port \(p.id) is empty on purpose: a removed device's port keeps later guest bus numbers (and vSIDs) where they are")
            return
        }
        switch d.source {
        case .pci(let a):
            if fds {
                let name = "vsmmu-\(guest)-\(d.name)"
                fdNames[name] = "the VFIO cdev of \(a) (vsmmu handoff: devices.\(d.name).fd)"
                args += ["-device", "vfio-pci,id=\(d.name),bus=\(p.id),iommufd=iommufd0,fd=\(name)"]
            } else {
                args += ["-device", "vfio-pci,id=\(d.name),host=\(a),bus=\(p.id),iommufd=iommufd0"]
            }
        case .selftest(let n):
            notes.append("device \(d.name) is kernel self-test mock device selftest:\(n): it has no QEMU counterpart")
        }
    }

    /// Shell form: one option per line, values quoted only where the shell needs it.
    public static func text(_ o: Output, guest: String, topology: String) -> String {
        var out = "# QEMU arguments for guest \(guest) (topology \(topology)), as vsmmu plans it\n"
        out += "# machine: \(o.machine.joined(separator: " "))\n"
        for n in o.notes { out += "# note: \(n)\n" }
        for (k, v) in o.fds.sorted(by: { $0.key < $1.key }) { out += "# fd \(k): \(v)\n" }
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

    public static func json(_ o: Output, guest: String) -> JSONValue {
        ["guest": .string(guest), "machine": .array(o.machine.map { .string($0) }), "args": .array(o.args.map { .string($0) }),
         "notes": .array(o.notes.map { .string($0) }), "fds": .object(o.fds.mapValues { .string($0) })]
    }
}
