#!/usr/bin/env python3
"""Tiny host-side client of the vsmmu-remote protocol (docs/remote-executor.md), for the
arm64 lab: waiting for a boot's executor, a few sysfs reads/writes, and BYE.

    remote.py SOCK wait [TIMEOUT]        connect (retrying), HELLO; prints "HELLO <version> <description>"
    remote.py SOCK hello
    remote.py SOCK listdir PATH          one name a line, sorted
    remote.py SOCK read PATH             the content
    remote.py SOCK readlink PATH         the target
    remote.py SOCK write PATH DATA       e.g. write /sys/bus/pci/drivers_probe 0000:00:01.0
    remote.py SOCK find-dev VENDOR DEVICE   PCI address of the first such device (e.g. 0x1234 0x11e8)
    remote.py SOCK driver BDF            the device's driver, or "none"
    remote.py SOCK bind-vfio BDF         driver_override=vfio-pci + drivers_probe; prints the driver
    remote.py SOCK unbind BDF            unbind from its driver, clear driver_override; prints the driver
    remote.py SOCK fds                   the fds the executor holds for this connection
    remote.py SOCK bye [CTLSOCK] [TIMEOUT]   HELLO; then (with CTLSOCK) a "poweroff" line on
                                         the lab control port, acknowledged by the guest's
                                         init; then BYE; then waits until QEMU closes the
                                         control socket (or TIMEOUT)

SOCK is a path or unix:PATH. Exit 0 on success; a negative result prints "error: <op>: -errno"
and exits 1.
"""
import errno
import os
import socket
import struct
import sys
import time

OPS = {"HELLO": 0, "OPEN": 1, "CLOSE": 2, "IOCTL": 3, "READ": 4, "READLINK": 5, "LISTDIR": 6,
       "WRITE": 7, "MEMFD": 8, "STAT": 9, "CHOWN": 10, "MMAP_ANON": 11, "MUNMAP": 12, "FDS": 13, "BYE": 14}


def s(x):
    b = x.encode() if isinstance(x, str) else x
    return struct.pack("<I", len(b)) + b


class Remote:
    def __init__(self, path, timeout=60.0, retry_until=None):
        self.path = path[5:] if path.startswith("unix:") else path
        self.seq = 0
        self.timeout = timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(self.path)
                break
            except OSError:
                self.sock.close()
                if retry_until is None or time.monotonic() > retry_until:
                    raise
                time.sleep(0.2)
        self.sock.settimeout(timeout)

    def _recvn(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError("connection closed by the executor (or QEMU)")
            buf += chunk
        return buf

    def call(self, op, args=b""):
        self.seq += 1
        body = struct.pack("<II", OPS[op], self.seq) + args
        self.sock.sendall(struct.pack("<I", len(body)) + body)
        (n,) = struct.unpack("<I", self._recvn(4))
        resp = self._recvn(n)
        seq, result = struct.unpack("<Ii", resp[:8])
        if seq != self.seq:
            raise RuntimeError(f"{op}: seq {seq}, expected {self.seq}")
        return result, resp[8:]

    def must(self, op, args=b""):
        r, p = self.call(op, args)
        if r < 0:
            name = errno.errorcode.get(-r, "?")
            raise OSError(-r, f"{op} {args[4:].decode(errors='replace')[:80]!r}: {r} ({name})")
        return r, p

    @staticmethod
    def str_at(p, off):
        (n,) = struct.unpack_from("<I", p, off)
        return p[off + 4:off + 4 + n].decode(errors="replace"), off + 4 + n

    def hello(self):
        r, p = self.must("HELLO")
        return r, self.str_at(p, 0)[0]

    def listdir(self, path):
        _, p = self.must("LISTDIR", s(path))
        (n,) = struct.unpack_from("<I", p, 0)
        off, names = 4, []
        for _ in range(n):
            name, off = self.str_at(p, off)
            names.append(name)
        return sorted(names)

    def read(self, path):
        _, p = self.must("READ", s(path))
        return self.str_at(p, 0)[0]

    def readlink(self, path):
        _, p = self.must("READLINK", s(path))
        return self.str_at(p, 0)[0]

    def write(self, path, data):
        return self.must("WRITE", s(path) + s(data))[0]

    def driver(self, bdf):
        r, p = self.call("READLINK", s(f"/sys/bus/pci/devices/{bdf}/driver"))
        if r == -errno.ENOENT:
            return "none"
        if r < 0:
            raise OSError(-r, f"READLINK driver: {r}")
        return os.path.basename(self.str_at(p, 0)[0])

    def find_dev(self, vendor, device):
        for bdf in self.listdir("/sys/bus/pci/devices"):
            d = f"/sys/bus/pci/devices/{bdf}"
            if self.read(d + "/vendor").strip() == vendor and self.read(d + "/device").strip() == device:
                return bdf
        return None

    def fds(self):
        _, p = self.must("FDS")
        (n,) = struct.unpack_from("<I", p, 0)
        off, out = 4, []
        for _ in range(n):
            (fd,) = struct.unpack_from("<i", p, off)
            target, off = self.str_at(p, off + 4)
            _info, off = self.str_at(p, off)
            out.append((fd, target))
        return out


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    sock, cmd, args = argv[1], argv[2], argv[3:]
    try:
        if cmd == "wait":
            deadline = time.monotonic() + float(args[0] if args else 120)
            r = Remote(sock, timeout=max(1.0, deadline - time.monotonic()), retry_until=deadline)
            v, desc = r.hello()
            print(f"HELLO {v} {desc}")
            return 0
        if cmd == "bye":
            # The executor must be in a session (HELLO answered) before the power-off is
            # armed: between sessions it restarts, and an armed guest powers off then.
            ctl_path = args[0] if args else None
            timeout = float(args[1]) if len(args) > 1 else 60
            r = Remote(sock, timeout=timeout)
            r.hello()
            ctl = None
            if ctl_path:
                ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                ctl.connect(ctl_path[5:] if ctl_path.startswith("unix:") else ctl_path)
                ctl.settimeout(timeout)
                ctl.sendall(b"poweroff\n")
                got = b""
                while b"poweroff-armed" not in got:
                    chunk = ctl.recv(4096)
                    if not chunk:
                        raise EOFError("control port closed before the power-off was armed")
                    got += chunk
            r.must("BYE")
            print("BYE ok")
            if ctl:
                try:  # QEMU closes the control socket when it exits
                    while ctl.recv(4096):
                        pass
                except OSError:
                    pass
            return 0
        r = Remote(sock)
        if cmd == "hello":
            v, desc = r.hello()
            print(f"HELLO {v} {desc}")
        elif cmd == "listdir":
            print("\n".join(r.listdir(args[0])))
        elif cmd == "read":
            sys.stdout.write(r.read(args[0]))
        elif cmd == "readlink":
            print(r.readlink(args[0]))
        elif cmd == "write":
            r.write(args[0], args[1])
        elif cmd == "find-dev":
            bdf = r.find_dev(args[0], args[1])
            if not bdf:
                print(f"error: no PCI device {args[0]}:{args[1]}", file=sys.stderr)
                return 1
            print(bdf)
        elif cmd == "driver":
            print(r.driver(args[0]))
        elif cmd == "bind-vfio":
            bdf = args[0]
            r.write(f"/sys/bus/pci/devices/{bdf}/driver_override", "vfio-pci")
            cur = r.driver(bdf)
            if cur not in ("none", "vfio-pci"):
                r.write(f"/sys/bus/pci/drivers/{cur}/unbind", bdf)
            if cur != "vfio-pci":
                r.write("/sys/bus/pci/drivers_probe", bdf)
            print(r.driver(bdf))
        elif cmd == "unbind":
            bdf = args[0]
            cur = r.driver(bdf)
            if cur != "none":
                r.write(f"/sys/bus/pci/drivers/{cur}/unbind", bdf)
            r.write(f"/sys/bus/pci/devices/{bdf}/driver_override", "\n")
            print(r.driver(bdf))
        elif cmd == "fds":
            for fd, target in r.fds():
                print(fd, target)
        else:
            print(f"unknown command {cmd}", file=sys.stderr)
            return 2
        return 0
    except (OSError, EOFError, RuntimeError, socket.timeout) as e:
        print(f"error: {cmd}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
