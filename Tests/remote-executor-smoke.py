#!/usr/bin/env python3
"""Smoke test of vsmmu-remote (docs/remote-executor.md) against a fake /sys and /dev tree.

usage: remote-executor-smoke.py PATH-TO-vsmmu-remote

Spawns the executor with --root on a temp tree, speaks the protocol over its stdin/stdout,
prints one line per check and exits nonzero if any check fails. Touches no real device:
/dev/iommu and /dev/vfio/devices/vfio0 are regular files in the temp tree, so ioctls the
executor lets through fail in the kernel with ENOTTY. The aarch64 build can be checked
under qemu-user with a wrapper script (exec qemu-aarch64-static vsmmu-remote "$@").
"""
import errno
import os
import pty
import random
import struct
import subprocess
import sys
import tempfile
import tty

OPS = dict(HELLO=0, OPEN=1, CLOSE=2, IOCTL=3, READ=4, READLINK=5, LISTDIR=6, WRITE=7,
           MEMFD=8, STAT=9, CHOWN=10, MMAP_ANON=11, MUNMAP=12, FDS=13, BYE=14, SPAWN=15, WAIT=16)
IOMMU_IOAS_IOVA_RANGES, IOMMU_IOAS_MAP, IOMMU_DESTROY = 0x3B84, 0x3B85, 0x3B80
# What ioctl(2) on a regular file answers: ENOTTY from the kernel, ENOSYS under qemu-user
# (which is how the aarch64 build can be run here: a wrapper script doing qemu-aarch64-static).
FROM_KERNEL = (-errno.ENOTTY, -errno.ENOSYS)
failures = 0


def check(name, ok, info=""):
    global failures
    print(f"{'ok  ' if ok else 'FAIL'} {name}{'' if ok else '  ' + str(info)}")
    failures += 0 if ok else 1


def u32(v): return struct.pack("<I", v & 0xFFFFFFFF)
def u64(v): return struct.pack("<Q", v)
def bstr(b): b = b.encode() if isinstance(b, str) else b; return u32(len(b)) + b


class Reader:
    def __init__(self, b): self.b, self.i = b, 0
    def take(self, n):
        if self.i + n > len(self.b): raise ValueError("short payload")
        r = self.b[self.i:self.i + n]; self.i += n; return r
    def u32(self): return struct.unpack("<I", self.take(4))[0]
    def i32(self): return struct.unpack("<i", self.take(4))[0]
    def u64(self): return struct.unpack("<Q", self.take(8))[0]
    def bytes(self): return self.take(self.u32())
    def str(self): return self.bytes().decode()
    def done(self): return self.i == len(self.b)


class Executor:
    def __init__(self, exe, root, log, extra=()):
        self.p = subprocess.Popen([exe, "--root", root, "--log", log, *extra],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.seq = 0

    def raw(self, frame):
        self.p.stdin.write(frame); self.p.stdin.flush()
        n = struct.unpack("<I", self.p.stdout.read(4))[0]
        body = self.p.stdout.read(n)
        seq, res = struct.unpack("<Ii", body[:8])
        return seq, res, Reader(body[8:])

    def call(self, op, args=b""):
        self.seq += 1
        body = u32(OPS[op]) + u32(self.seq) + args
        seq, res, r = self.raw(u32(len(body)) + body)
        if seq != self.seq: raise ValueError(f"seq {seq} != {self.seq}")
        return res, r

    def ioctl(self, fd, req, arg, bufs):
        res, r = self.call("IOCTL", u32(fd) + u32(req) + bstr(arg) + u32(len(bufs)) + b"".join(bstr(b) for b in bufs))
        if res == -errno.EPROTO: return res, None, None
        out = r.bytes(); n = r.u32(); outbufs = [r.bytes() for _ in range(n)]
        return res, out, outbufs


class PtyExecutor(Executor):
    """The executor serving a blocking character device (a raw pty stands in for a
    virtio-serial port) given as PORT."""
    def __init__(self, exe, root, log):
        self.m, self.s = pty.openpty()  # slave kept open: else the master reads EIO until the executor opens it
        tty.setraw(self.s)
        self.p = subprocess.Popen([exe, "--root", root, "--log", log, os.ttyname(self.s)])
        self.seq = 0

    def read(self, n):
        b = b""
        while len(b) < n:
            b += os.read(self.m, n - len(b))
        return b

    def raw(self, frame):
        os.write(self.m, frame)
        n = struct.unpack("<I", self.read(4))[0]
        body = self.read(n)
        seq, res = struct.unpack("<Ii", body[:8])
        return seq, res, Reader(body[8:])


def make_tree(t):
    dev = f"{t}/sys/devices/pci0000:00/0000:00:01.0"
    os.makedirs(dev)
    os.makedirs(f"{t}/sys/bus/pci/devices")
    os.makedirs(f"{t}/sys/bus/pci/drivers/vfio-pci")
    os.symlink("../../../devices/pci0000:00/0000:00:01.0", f"{t}/sys/bus/pci/devices/0000:00:01.0")
    os.symlink("../../../bus/pci/drivers/vfio-pci", f"{dev}/driver")
    for name, text in [("vendor", "0x1af4\n"), ("device", "0x1041\n"), ("driver_override", "(null)\n")]:
        open(f"{dev}/{name}", "w").write(text)
    open(f"{t}/sys/bus/pci/drivers/vfio-pci/unbind", "w").close()
    open(f"{t}/sys/bus/pci/drivers_probe", "w").close()
    open(f"{t}/sys/secret", "w").write("keep\n")  # not writable through the executor
    os.makedirs(f"{t}/dev/vfio/devices")
    open(f"{t}/dev/iommu", "w").close()
    open(f"{t}/dev/vfio/devices/vfio0", "w").close()
    open(f"{t}/dev/other", "w").close()


# The stand-in VMM: reports its argv and the fds it inherited (number, link, CLOEXEC) on
# stdout, which SPAWN sends to VMMLOG/vsmmu-vmm-PID.log, then exits with argv[2] or sleeps.
FAKE_VMM = """#!/usr/bin/env python3
import fcntl, os, sys, time
fds = []
for fd in range(3, 1024):
    try:
        os.fstat(fd)
    except OSError:
        continue
    fds.append(f"{fd}:{os.readlink(f'/proc/self/fd/{fd}')}:{fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC}")
print("argv=" + "|".join(sys.argv[1:]))
print("fds=" + "|".join(fds))
print("stdin=" + os.readlink("/proc/self/fd/0"))
print("sid=" + str(os.getsid(0) == os.getpid()), flush=True)
if sys.argv[1] == "exit":
    sys.exit(int(sys.argv[2]))
time.sleep(60)
"""


def spawn_body(argv, fds):
    return u32(len(argv)) + b"".join(bstr(a) for a in argv) + u32(len(fds)) + b"".join(u32(f) for f in fds)


def wait_exit(x, pid, seconds=10):
    """WAIT until the child is no longer running: (state, code), or None."""
    import time
    end = time.time() + seconds
    while time.time() < end:
        res, r = x.call("WAIT", u32(pid))
        if res != 0:
            return ("error", res)
        state, code = r.u32(), r.i32()
        if state != 0:
            return (state, code)
        time.sleep(0.05)
    return None


def spawn_checks(exe, t, root, log):
    """SPAWN and WAIT: the one VMM fixed by --vmm, with held fds at the same numbers."""
    import signal
    vmm = f"{t}/fake-vmm"; logs = f"{t}/vmm-logs"
    open(vmm, "w").write(FAKE_VMM); os.chmod(vmm, 0o755); os.makedirs(logs)

    x = Executor(exe, root, log)
    res, _ = x.call("SPAWN", spawn_body([vmm, "exit", "0"], []))
    check("SPAWN without --vmm -EPERM", res == -errno.EPERM, res)
    res, _ = x.call("WAIT", u32(os.getpid()))
    check("WAIT of a pid it did not spawn -ESRCH", res == -errno.ESRCH, res)
    x.call("BYE"); x.p.wait(timeout=5)

    rc = subprocess.run([exe, "--vmm", "fake-vmm"], stdin=subprocess.DEVNULL, capture_output=True).returncode
    check("--vmm with a relative path refused at start", rc == 2, rc)

    x = Executor(exe, root, log, ["--vmm", vmm, "--vmm-log", logs])
    iommufd, _ = x.call("OPEN", bstr("/dev/iommu") + u32(os.O_RDWR))
    memfd, _ = x.call("MEMFD", bstr("vsmmu-g-ram0") + u64(1 << 20) + u32(0))
    other, _ = x.call("OPEN", bstr("/dev/vfio/devices/vfio0") + u32(os.O_RDWR))
    pid, _ = x.call("SPAWN", spawn_body([vmm, "exit", "3", "fd=%d" % memfd], [iommufd, memfd]))
    check("SPAWN the --vmm binary returns its pid", pid > 0, pid)
    st = wait_exit(x, pid) if pid > 0 else None
    check("WAIT: exited with its status", st == (1, 3), st)
    res, r = x.call("WAIT", u32(pid))
    check("WAIT again: the same answer", res == 0 and (r.u32(), r.i32()) == (1, 3), res)
    out = open(f"{logs}/vsmmu-vmm-{pid}.log").read() if pid > 0 and os.path.exists(f"{logs}/vsmmu-vmm-{pid}.log") else ""
    lines = dict(l.split("=", 1) for l in out.splitlines() if "=" in l)
    check("the VMM got its argv", lines.get("argv") == f"exit|3|fd={memfd}", out)
    want = {f"{iommufd}:{root}/dev/iommu:0", f"{memfd}:/memfd:vsmmu-g-ram0 (deleted):0"}
    got = set(lines.get("fds", "").split("|"))
    check("the VMM inherited exactly the listed fds, same numbers, CLOEXEC cleared", got == want, (got, want))
    check("the VMM's stdin is /dev/null, its own session", lines.get("stdin") == "/dev/null" and lines.get("sid") == "True", out)

    res, _ = x.call("SPAWN", spawn_body(["/bin/sh", "-c", "true"], []))
    check("SPAWN of another program -EPERM", res == -errno.EPERM, res)
    res, _ = x.call("SPAWN", spawn_body([vmm + "/", "exit", "0"], []))
    check("SPAWN of a path that differs from --vmm by one byte -EPERM", res == -errno.EPERM, res)
    res, _ = x.call("SPAWN", spawn_body([vmm, "exit", "0"], [999]))
    check("SPAWN with an fd it does not hold -EBADF", res == -errno.EBADF, res)
    res, _ = x.call("SPAWN", spawn_body([vmm, "exit", "0"], [1]))
    check("SPAWN handing over its stream (fd 1) -EINVAL", res == -errno.EINVAL, res)
    res, _ = x.call("SPAWN", spawn_body([vmm, "exit", "0"], [iommufd, iommufd]))
    check("SPAWN with a duplicate fd -EINVAL", res == -errno.EINVAL, res)
    res, _ = x.call("SPAWN", spawn_body([vmm, "exit", "0"], [iommufd] * 65))
    check("SPAWN with 65 fds -EINVAL", res == -errno.EINVAL, res)
    res, _ = x.call("SPAWN", spawn_body([vmm, "ex\0it", "0"], []))
    check("SPAWN with a NUL in an argument -EINVAL", res == -errno.EINVAL, res)
    res, _ = x.call("SPAWN", spawn_body([], []))
    check("SPAWN with no argv -EINVAL", res == -errno.EINVAL, res)
    res, _ = x.call("SPAWN", spawn_body([vmm, "x" * 4097], []))
    check("SPAWN with a 4097-byte argument -EINVAL", res == -errno.EINVAL, res)
    res, _ = x.call("SPAWN", spawn_body([vmm], [iommufd])[:-2])
    check("SPAWN truncated -EPROTO", res == -errno.EPROTO, res)

    pid, _ = x.call("SPAWN", spawn_body([vmm, "sleep"], [memfd]))
    res, r = x.call("WAIT", u32(pid))
    check("WAIT: running", pid > 0 and res == 0 and (r.u32(), r.i32()) == (0, 0), (pid, res))
    if pid > 0:
        os.kill(pid, signal.SIGKILL)
    st = wait_exit(x, pid) if pid > 0 else None
    check("WAIT: killed by SIGKILL", st == (2, signal.SIGKILL), st)
    res, fds = 0, None
    res, r = x.call("FDS")
    check("the executor still holds its own copies after SPAWN", res == 3, res)

    os.rename(vmm, vmm + ".gone")
    res, _ = x.call("SPAWN", spawn_body([vmm, "exit", "0"], []))
    check("SPAWN whose exec fails: the child's errno (-ENOENT)", res == -errno.ENOENT, res)
    os.rename(vmm + ".gone", vmm)
    x.call("BYE")
    check("BYE exits 0 with spawned children", x.p.wait(timeout=5) == 0)


def main():
    exe = sys.argv[1]
    with tempfile.TemporaryDirectory() as t:
        root = f"{t}/root"; log = f"{t}/log"
        make_tree(root)
        x = Executor(exe, root, log)
        D = "/sys/bus/pci/devices/0000:00:01.0"

        res, r = x.call("HELLO")
        desc = r.str()
        check("HELLO version 1", res == 1 and len(desc.split()) == 2, (res, desc))

        res, r = x.call("READ", bstr(f"{D}/vendor"))
        check("READ sysfs attribute", res == 7 and r.bytes() == b"0x1af4\n", res)
        res, r = x.call("READ", bstr("/sys/missing"))
        check("READ missing -ENOENT", res == -errno.ENOENT, res)
        res, r = x.call("READ", bstr("/dev/iommu"))
        check("READ outside /sys -EACCES", res == -errno.EACCES and r.done(), res)
        res, r = x.call("READLINK", bstr(f"{D}/driver"))
        check("READLINK", res == 0 and r.str() == "../../../bus/pci/drivers/vfio-pci", res)
        res, r = x.call("LISTDIR", bstr(D))
        names = sorted(r.str() for _ in range(r.u32())) if res >= 0 else []
        check("LISTDIR /sys", res == 4 and names == ["device", "driver", "driver_override", "vendor"], (res, names))
        res, r = x.call("LISTDIR", bstr("/dev/vfio/devices"))
        check("LISTDIR /dev/vfio/devices", res == 1 and r.u32() == 1 and r.str() == "vfio0", res)
        res, r = x.call("LISTDIR", bstr("/dev"))
        check("LISTDIR /dev -EACCES", res == -errno.EACCES, res)
        res, r = x.call("STAT", bstr(f"{D}/vendor"))
        st = os.stat(f"{root}{D}/vendor")
        check("STAT /sys", res == 0 and (r.u32(), r.u32(), r.u32()) == (st.st_mode, st.st_uid, st.st_gid), res)
        res, r = x.call("STAT", bstr("/dev/vfio/devices/vfio0"))
        check("STAT /dev", res == 0, res)
        res, r = x.call("STAT", bstr("/etc/passwd"))
        check("STAT /etc -EACCES", res == -errno.EACCES, res)

        res, _ = x.call("WRITE", bstr(f"{D}/driver_override") + bstr("vfio-pci"))
        got = open(f"{root}{D}/driver_override").read()
        check("WRITE driver_override (O_TRUNC)", res == 8 and got == "vfio-pci", (res, got))
        res, _ = x.call("WRITE", bstr("/sys/bus/pci/drivers/vfio-pci/unbind") + bstr("0000:00:01.0"))
        check("WRITE unbind", res == 12, res)
        res, _ = x.call("WRITE", bstr("/sys/secret") + bstr("x"))
        check("WRITE disallowed -EACCES", res == -errno.EACCES and open(f"{root}/sys/secret").read() == "keep\n", res)
        res, _ = x.call("WRITE", bstr(f"{D}/vendor") + bstr("x"))
        check("WRITE vendor -EACCES", res == -errno.EACCES, res)
        res, _ = x.call("WRITE", bstr("/sys/bus/pci/devices/../../../secret/driver_override") + bstr("x"))
        check("WRITE with .. -EACCES", res == -errno.EACCES, res)
        res, _ = x.call("READ", bstr(f"{D}/../../../secret"))
        check("READ with .. -EACCES", res == -errno.EACCES, res)
        res, _ = x.call("READ", bstr("/sys/secret\0"))
        check("READ with NUL -EACCES", res == -errno.EACCES, res)

        res, _ = x.call("OPEN", bstr("/dev/other") + u32(os.O_RDWR))
        check("OPEN non-allowed -EACCES", res == -errno.EACCES, res)

        # Links inside the tree never lead out of it (openat2 RESOLVE_BENEATH, or the
        # component walk with VSMMU_REMOTE_NO_OPENAT2=1): past the root, absolute, a
        # device link and a cdev pointing outside.
        out = f"{t}/outside"
        os.makedirs(out)
        for name, text in [("secret", "outside\n"), ("driver_override", "keep\n"), ("cdev", "")]:
            open(f"{out}/{name}", "w").write(text)
        os.symlink("../../outside", f"{root}/sys/up")
        os.symlink(out, f"{root}/sys/abs")
        os.symlink(out, f"{root}/sys/bus/pci/devices/0000:00:02.0")
        os.symlink("../../../../outside", f"{root}/sys/bus/pci/devices/0000:00:03.0")
        os.symlink(f"{out}/cdev", f"{root}/dev/vfio/devices/vfio1")
        for path in ["/sys/up/secret", "/sys/abs/secret"]:
            res, r = x.call("READ", bstr(path))
            check(f"READ {path} (link out of --root) refused", res < 0 and r.done(), res)
            res, r = x.call("STAT", bstr(path))
            check(f"STAT {path} (link out of --root) refused", res < 0, res)
        res, _ = x.call("LISTDIR", bstr("/sys/abs"))
        check("LISTDIR through an absolute link refused", res < 0, res)
        for dev in ["0000:00:02.0", "0000:00:03.0"]:
            res, _ = x.call("WRITE", bstr(f"/sys/bus/pci/devices/{dev}/driver_override") + bstr("x"))
            check(f"WRITE through {dev} (link out of --root) refused", res < 0 and open(f"{out}/driver_override").read() == "keep\n", res)
        res, _ = x.call("OPEN", bstr("/dev/vfio/devices/vfio1") + u32(os.O_RDWR))
        check("OPEN of a cdev linked out of --root refused", res < 0, res)
        res, r = x.call("READ", bstr(f"{D}/vendor"))
        check("READ through a link inside --root still works", res == 7 and r.bytes() == b"0x1af4\n", res)
        res, _ = x.call("OPEN", bstr("/dev/vfio/devices/../../iommu") + u32(os.O_RDWR))
        check("OPEN with .. -EACCES", res == -errno.EACCES, res)
        res, _ = x.call("OPEN", bstr("/dev/iommu") + u32(os.O_RDWR | os.O_CREAT))
        check("OPEN with O_CREAT -EINVAL", res == -errno.EINVAL, res)
        iommufd, _ = x.call("OPEN", bstr("/dev/iommu") + u32(os.O_RDWR))
        check("OPEN /dev/iommu", iommufd >= 3, iommufd)
        res, _ = x.call("CHOWN", bstr("/dev/vfio/devices/vfio0") + u32(os.getuid()) + u32(os.getgid()))
        check("CHOWN vfio cdev", res == 0, res)
        res, _ = x.call("CHOWN", bstr("/dev/iommu") + u32(os.getuid()) + u32(os.getgid()))
        check("CHOWN /dev/iommu -EACCES", res == -errno.EACCES, res)

        # IOCTL
        ranges = u32(32) + u32(1) + u32(2) + u32(0) + u64(0xdead0000) + u64(0)
        res, out, bufs = x.ioctl(999, IOMMU_IOAS_IOVA_RANGES, ranges, [bytes(32)])
        check("IOCTL on fd not held -EBADF (payload echoed)", res == -errno.EBADF and out == ranges and bufs == [bytes(32)], res)
        res, out, bufs = x.ioctl(1, IOMMU_DESTROY, u32(8) + u32(1), [])
        check("IOCTL on executor's stdout -EBADF", res == -errno.EBADF, res)
        res, out, bufs = x.ioctl(iommufd, 0x3B82, bytes(32), [])
        check("IOCTL unknown request -ENOTTY", res == -errno.ENOTTY and out == bytes(32) and bufs == [], res)
        res, out, bufs = x.ioctl(iommufd, IOMMU_IOAS_IOVA_RANGES, ranges, [])
        check("IOCTL wrong nbuf -EINVAL", res == -errno.EINVAL, res)
        res, out, bufs = x.ioctl(iommufd, IOMMU_IOAS_IOVA_RANGES, ranges, [bytes(16)])
        check("IOCTL wrong buffer length -EINVAL", res == -errno.EINVAL, res)
        res, out, bufs = x.ioctl(iommufd, IOMMU_IOAS_IOVA_RANGES, ranges[:24], [bytes(32)])
        check("IOCTL arg below min size -EINVAL", res == -errno.EINVAL, res)
        res, out, bufs = x.ioctl(iommufd, IOMMU_DESTROY, u32(64) + u32(1), [])
        check("IOCTL size field over arg length -EINVAL", res == -errno.EINVAL, res)
        res, out, bufs = x.ioctl(iommufd, IOMMU_IOAS_IOVA_RANGES, ranges, [b"\x55" * 32])
        check("IOCTL passed to the kernel (regular file: -ENOTTY), pointer restored",
              res in FROM_KERNEL and out == ranges and bufs == [b"\x55" * 32], (res, out))

        # MMAP_ANON / IOAS_MAP range rule / MUNMAP
        res, r = x.call("MMAP_ANON", u64(1 << 20))
        addr = r.u64() if res == 0 else 0
        check("MMAP_ANON 1 MiB", res == 0 and addr != 0, res)
        def ioas_map(va, length):
            return x.ioctl(iommufd, IOMMU_IOAS_MAP, u32(40) + u32(0) + u32(1) + u32(0) + u64(va) + u64(length) + u64(0), [])[0]
        check("IOAS_MAP inside region reaches the kernel (-ENOTTY)", ioas_map(addr + 4096, 8192) in FROM_KERNEL)
        check("IOAS_MAP outside region -EFAULT", ioas_map(addr + 4096, 1 << 20) == -errno.EFAULT)
        check("IOAS_MAP wrapping range -EFAULT", ioas_map(addr, 2**64 - 1) == -errno.EFAULT)
        res, _ = x.call("MUNMAP", u64(addr) + u64(4096))
        check("MUNMAP of a partial region -EINVAL", res == -errno.EINVAL, res)
        res, _ = x.call("MUNMAP", u64(addr) + u64(1 << 20))
        check("MUNMAP", res == 0, res)
        check("IOAS_MAP after MUNMAP -EFAULT", ioas_map(addr + 4096, 8192) == -errno.EFAULT)

        # MEMFD / FDS / CLOSE
        memfd, _ = x.call("MEMFD", bstr("vsmmu-guest") + u64(1 << 20) + u32(0))
        check("MEMFD 1 MiB", memfd >= 3, memfd)
        def held_fds():
            res, r = x.call("FDS")
            fds = {}
            for _ in range(r.u32() if res >= 0 else 0):
                fd = r.i32(); fds[fd] = (r.str(), r.str())
            return res, fds
        res, fds = held_fds()
        check("FDS lists exactly the held fds", res == 2 and set(fds) == {iommufd, memfd}, (res, fds))
        check("FDS link of memfd", fds.get(memfd, ("", ""))[0].startswith("/memfd:vsmmu-guest"), fds.get(memfd))
        check("FDS link of /dev/iommu", fds.get(iommufd, ("", ""))[0] == f"{root}/dev/iommu", fds.get(iommufd))
        check("FDS fdinfo text", "flags:" in fds.get(memfd, ("", ""))[1], fds.get(memfd))
        res, _ = x.call("CLOSE", u32(memfd))
        check("CLOSE memfd", res == 0, res)
        res, fds = held_fds()
        check("FDS no longer lists it", res == 1 and list(fds) == [iommufd], (res, fds))
        res, _ = x.call("CLOSE", u32(memfd))
        check("CLOSE again -EBADF", res == -errno.EBADF, res)
        res, _ = x.call("CLOSE", u32(0))
        check("CLOSE of executor's stdin -EBADF", res == -errno.EBADF, res)
        res, _ = x.call("MEMFD", bstr("bad\0name") + u64(4096) + u32(0))
        check("MEMFD name with NUL -EINVAL", res == -errno.EINVAL, res)

        # Malformed frames: -EPROTO, no payload, keep serving
        seq, res, r = x.raw(u32(2) + b"\0\0")
        check("short frame -EPROTO", res == -errno.EPROTO and seq == 0 and r.done(), res)
        seq, res, r = x.raw(u32(8) + u32(99) + u32(77))
        check("unknown op -EPROTO (seq echoed)", res == -errno.EPROTO and seq == 77 and r.done(), (seq, res))
        seq, res, r = x.raw(u32(8) + u32(OPS["READ"]) + u32(78))
        check("READ without its path -EPROTO", res == -errno.EPROTO and seq == 78, (seq, res))
        seq, res, r = x.raw(u32(16) + u32(OPS["READ"]) + u32(79) + u32(100) + b"/sys")
        check("str longer than frame -EPROTO", res == -errno.EPROTO and seq == 79, (seq, res))
        seq, res, r = x.raw(u32(12) + u32(OPS["HELLO"]) + u32(80) + u32(0))
        check("trailing bytes -EPROTO", res == -errno.EPROTO and seq == 80, (seq, res))
        body = u32(OPS["IOCTL"]) + u32(81) + u32(iommufd) + u32(IOMMU_DESTROY) + bstr(u32(8) + u32(1)) + u32(0xFFFFFFFF)
        seq, res, r = x.raw(u32(len(body)) + body)
        check("IOCTL with huge nbuf -EPROTO, no payload", res == -errno.EPROTO and seq == 81 and r.done(), (seq, res))
        huge = (16 << 20) + 1
        seq, res, r = x.raw(u32(huge) + u32(OPS["HELLO"]) + u32(82) + bytes(huge - 8))
        check("length over 16 MiB -EPROTO (body skipped)", res == -errno.EPROTO and seq == 82 and r.done(), (seq, res))
        res, r = x.call("HELLO")
        check("still serving after malformed frames", res == 1, res)

        # Mutated valid requests (truncated, bit-flipped; never BYE): a response each, no crash.
        rng = random.Random(1)
        samples = [u32(OPS["READ"]) + u32(0) + bstr(f"{D}/vendor"),
                   u32(OPS["LISTDIR"]) + u32(0) + bstr(D),
                   u32(OPS["WRITE"]) + u32(0) + bstr(f"{D}/driver_override") + bstr("x"),
                   u32(OPS["MEMFD"]) + u32(0) + bstr("f") + u64(4096) + u32(0),
                   u32(OPS["STAT"]) + u32(0) + bstr("/dev/iommu"),
                   u32(OPS["FDS"]) + u32(0),
                   u32(OPS["IOCTL"]) + u32(0) + u32(iommufd) + u32(IOMMU_IOAS_IOVA_RANGES) + bstr(ranges) + u32(1) + bstr(bytes(32))]
        answered = 0
        for i in range(2000):
            body = bytearray(rng.choice(samples))
            for _ in range(rng.randint(1, 4)):
                body[rng.randrange(len(body))] ^= 1 << rng.randrange(8)
            body = bytes(body[:rng.randint(0, len(body))] if rng.random() < 0.3 else body)
            if body[:4] == u32(OPS["BYE"]) or body[:4] == u32(OPS["CLOSE"]):
                continue
            seq, res, r = x.raw(u32(len(body)) + body)
            answered += 1
            x.seq += 1  # counted for the log check
        res, r = x.call("HELLO")
        check(f"{answered} mutated requests answered, still serving", res == 1, res)

        res, _ = x.call("BYE")
        check("BYE result 0", res == 0, res)
        rc = x.p.wait(timeout=5)
        check("BYE exits 0", rc == 0, rc)
        lines = open(log, "rb").read().splitlines()
        check("--log has one line per request", len(lines) == x.seq + 7 and lines[-1].startswith(b"BYE seq="),
              (len(lines), x.seq + 7))

        # EOF on the stream (no BYE): clean exit
        y = Executor(exe, root, log)
        y.call("OPEN", bstr("/dev/iommu") + u32(os.O_RDWR))
        y.p.stdin.close()
        rc = y.p.wait(timeout=5)
        check("EOF exits 0", rc == 0, rc)
        # EOF in the middle of a frame: clean exit too
        z = Executor(exe, root, log)
        z.p.stdin.write(u32(100) + u32(0)); z.p.stdin.close()
        rc = z.p.wait(timeout=5)
        check("EOF mid-frame exits 0", rc == 0 and z.p.stdout.read() == b"", rc)

        # A blocking character device as PORT
        w = PtyExecutor(exe, root, log)
        res, r = w.call("HELLO")
        check("PORT (raw pty): HELLO", res == 1, res)
        res, r = w.call("READ", bstr(f"{D}/vendor"))
        check("PORT (raw pty): READ", res == 7 and r.bytes() == b"0x1af4\n", res)
        res, _ = w.call("BYE")
        rc = w.p.wait(timeout=5)
        check("PORT (raw pty): BYE exits 0", res == 0 and rc == 0, (res, rc))
        os.close(w.m); os.close(w.s)

        spawn_checks(exe, t, root, log)

    print("all checks passed" if failures == 0 else f"{failures} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # a protocol violation the checks did not expect
        print(f"FAIL exception: {e!r}")
        sys.exit(1)
