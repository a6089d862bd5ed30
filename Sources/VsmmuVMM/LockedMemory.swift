/// The RLIMIT_MEMLOCK a VMM needs for its VFIO devices. QEMU maps every RAM region into the
/// IOAS, not only guest RAM: firmware and option ROMs too. In the x86 lab a QEMU 11 given
/// exactly its 64 MiB of guest RAM as the limit (and no CAP_IPC_LOCK) failed at realize with
/// ENOMEM mapping `pc.bios` (256 KiB at 0xfffc0000). libvirt allows guest RAM + 1 GiB for
/// VFIO; `vsmmu launch` does the same (docs/kernel-interface.md §9.15).
public enum VMMLockedMemory {
    /// Room for what the VMM maps besides guest RAM.
    public static let margin: UInt64 = 1 << 30
    /// The limit `launch` gives a VMM whose guest RAM is `guestRAM` bytes.
    public static func limit(guestRAM: UInt64) -> UInt64 { guestRAM &+ margin }
}
