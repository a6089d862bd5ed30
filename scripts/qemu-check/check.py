#!/usr/bin/env python3
"""Checks of `vsmmu qemu-args` and `vsmmu libvirt-xml` output against a real QEMU 11 and libvirt's schema.

Runs inside the cached Debian root that scripts/qemu-check.sh prepares (as root, in a
private mount namespace, chroot'ed), with the work directory WORK holding manifest.json
and, per guest, the `vsmmu qemu-args --format json` and `vsmmu plan --format json`
output that the wrapper produced on the host.

Per guest ((a) and (b) for aarch64 virt guests, (c) for all):
  (a) static : every -object/-device/-machine property that vsmmu emits is one that the
               binary lists in `,help`, and its value fits the listed type
               (bool, OnOffAuto, uintN, size, link<...> to an id of the fragment, and
               the enums whose help text says "Valid values are ...").
  (a) start  : every emitted option that has to be changed for the TCG boot is also
               started once verbatim (everything before it in its TCG form, -S; one
               start per shape: options that differ only in id, bus, host address and
               the like share one):
               QEMU must get past parsing and stop only at the expected
               environment gate (no KVM for accel=on, no host device for vfio-pci,
               no hugepages for the memory backend), or start.
  (b) boot   : the topology with the VFIO devices replaced by emulated PCIe
               endpoints and the accel-only SMMU features turned off is booted under
               TCG with the UEFI firmware; once the firmware is in BDS (it has
               enumerated PCI), QMP query-pci must show every pxb-pcie as the root bus
               bus_nr and every placeholder at the predicted bus:slot.fn (from the
               args: bus_nr + 1 + rank of the root port's slot), which must also be
               the plan's layout guestAddress, with vSID = bus << 8 | devfn. Then the
               ACPI IORT that QEMU generated is read from guest memory (RSDP -> XSDT ->
               IORT via QMP pmemsave): each device's RID must map 1:1 to the same
               StreamID on the SMMUv3 node of its pxb, and the node identifier must be
               the `identifier=` vsmmu emitted. With -numa nodes: the SRAT (RAM in node 0,
               a Generic Initiator Affinity structure per acpi-generic-initiator, with the
               device's guest BDF, and no other); with highmem-mmio-size: the DSDT's 64-bit
               host-bridge windows add up to it and each GPU stand-in (a 256 GiB BAR) has
               its window inside them.
  (c) hand-over: `--format argv` (with and without --fds), split as `$(...)` splits it,
               is exactly the JSON args; the --fds arguments with every
               {vsmmu-...} placeholder replaced by a real fd number as `vsmmu launch`
               does (the iommufd object: the /dev/iommu stub; each vfio-pci: a non-VFIO
               fd; each memory backend: a memfd of its size) must start (VFIO devices
               as placeholders), the separate `-machine memory-backend=` must have merged
               into the machine (qom-get), QEMU must map the handed-over memfd; with the
               VFIO devices verbatim QEMU must take both numbers and stop at its own
               VFIO_DEVICE_BIND_IOMMUFD of the cdev fd (ENOTTY on a non-VFIO fd). The x86
               guest runs as the x86 lab starts it: `qemu-system-x86_64 -machine q35 ...
               $(vsmmu qemu-args ... --format argv)`. `vsmmu libvirt-xml` must validate
               against the domain.rng of Debian's libvirt-common (12.9, trixie-backports)
               with xmllint --relaxng, and so must `--dialect nvidia` with its ssidSize
               mapped back. Once: a name in fd= is refused by QEMU (why the
               placeholders must become numbers).

Prints one PASS/FAIL line per check (NOTE lines are information) and ends with
`qemu-check: N passed, M failed`; exit status 1 on any failure.
"""
import json
import os
import re
import socket
import subprocess
import sys
import time

WORK = sys.argv[1] if len(sys.argv) > 1 else "."
M = json.load(open(os.path.join(WORK, "manifest.json")))
QEMU = M["qemu"]
FIRMWARE = M["firmware"]
PLACEHOLDER = M["placeholder"]
# A device with Generic Initiator nodes (a Grace GPU) is stood in for by a device with a
# GPU-sized 64-bit prefetchable BAR, so that the emitted 64-bit PCI hole is what fits it.
GPU_PLACEHOLDER = M.get("gpu_placeholder", "pci-testdev,membar=256G")
BOOT_TIMEOUT = float(M.get("boot_timeout", 240))
BOOT_MEM = M.get("boot_mem", "1G")
QEMU_VERSION = ""

passed = 0
failed = 0


def emit(ok, guest, what, detail=""):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
    line = "%s %s %s" % ("PASS" if ok else "FAIL", guest, what)
    if detail:
        line += ": " + detail
    print(line, flush=True)


def note(guest, text):
    print("NOTE %s %s" % (guest, text), flush=True)


# --------------------------------------------------------------------------- options

def split_opts(s):
    """QEMU option string -> list of (key, value); ',,' is an escaped comma."""
    parts, cur, i = [], "", 0
    while i < len(s):
        c = s[i]
        if c == ",":
            if i + 1 < len(s) and s[i + 1] == ",":
                cur += ","
                i += 2
                continue
            parts.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    parts.append(cur)
    out = []
    for p in parts:
        if "=" in p:
            k, v = p.split("=", 1)
            out.append((k, v))
        else:
            out.append((p, None))
    return out


def join_opts(kv):
    return ",".join(k if v is None else "%s=%s" % (k, v.replace(",", ",,")) for k, v in kv)


class Opt:
    """One command-line option: flag (-device, -object, -machine, -m, ...) and value."""

    def __init__(self, flag, value):
        self.flag = flag
        self.value = value
        self.kv = split_opts(value) if value is not None and flag in ("-device", "-object", "-machine") else []

    @property
    def type(self):
        if self.flag in ("-device", "-object") and self.kv:
            first = self.kv[0]
            if first[1] is None:
                return first[0]
            return dict(self.kv).get("driver" if self.flag == "-device" else "qom-type")
        if self.flag == "-machine" and self.kv and self.kv[0][1] is None:
            return self.kv[0][0]
        return None

    def props(self):
        """Properties (key, value) without the leading type."""
        kv = list(self.kv)
        if kv and kv[0][1] is None:
            kv = kv[1:]
        return kv

    def get(self, key, default=None):
        for k, v in self.props():
            if k == key:
                return v
        return default

    @property
    def id(self):
        return self.get("id")

    def argv(self):
        return [self.flag] if self.value is None else [self.flag, self.value]

    def text(self):
        return " ".join(self.argv())


FLAGS_WITH_VALUE = {"-object", "-device", "-machine", "-m", "-cpu", "-bios", "-smp", "-accel",
                    "-drive", "-netdev", "-numa", "-global", "-chardev", "-add-fd", "-fw_cfg"}


def parse_args(args):
    opts, i = [], 0
    while i < len(args):
        a = args[i]
        if a in FLAGS_WITH_VALUE and i + 1 < len(args):
            opts.append(Opt(a, args[i + 1]))
            i += 2
        else:
            opts.append(Opt(a, None))
            i += 1
    return opts


# --------------------------------------------------------------------------- qemu runs

def qemu_env():
    env = dict(os.environ)
    env.setdefault("HOME", "/root")
    return env


_help_cache = {}


def qemu_help(kind, typ):
    """Parse `qemu -machine virt -device TYPE,help` (or -object, or -machine virt,help)."""
    key = (kind, typ)
    if key in _help_cache:
        return _help_cache[key]
    if kind == "-machine":
        argv = [QEMU, "-machine", "%s,help" % typ]
    else:
        argv = [QEMU, "-machine", "virt", kind, "%s,help" % typ]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=qemu_env())
    props = {}
    ok = p.returncode == 0
    for line in p.stdout.splitlines():
        m = re.match(r"^\s+([^=\s]+)=<(link<[^>]*>|[^>]*)>(?:\s+-\s?(.*))?$", line)
        if m:
            props[m.group(1)] = (m.group(2), m.group(3) or "")
    res = (ok and (props or "options" in p.stdout), props, (p.stderr or p.stdout).strip())
    _help_cache[key] = res
    return res


def start_once(argv, timeout=90, pass_fds=()):
    """Start QEMU paused (-S) with a QMP monitor on stdio and quit at once.
    Returns (started, error text). QEMU handles monitor input only after machine
    init, so an init error exits before the quit is read."""
    full = argv + ["-S", "-nodefaults", "-display", "none", "-qmp", "stdio"]
    inp = '{"execute":"qmp_capabilities"}\n{"execute":"quit"}\n'
    try:
        p = subprocess.run(full, input=inp, capture_output=True, text=True, timeout=timeout, env=qemu_env(), pass_fds=pass_fds)
    except subprocess.TimeoutExpired:
        return False, "timed out after %ss" % timeout
    err = "\n".join(l for l in p.stderr.splitlines() if l.strip())
    started = p.returncode == 0 and '"return"' in p.stdout
    return started, err


# errors that say QEMU did not accept a name or a value (never an environment gate)
PARSE_ERRORS = re.compile(
    r"Property '[^']*' not found|Parameter '[^']*' (expects|does not accept)|Invalid parameter|"
    r"is not a valid device model name|Bus '[^']*' not found|Device '[^']*' not found")


def last_error_for(err, opt):
    """The error line QEMU attributes to opt (it prefixes the option text)."""
    lines = [l for l in err.splitlines() if "qemu-system" in l]
    for l in lines:
        if opt.value is not None and (": %s %s: " % (opt.flag, opt.value)) in l:
            return l.split(": %s %s: " % (opt.flag, opt.value), 1)[1], True
    return (lines[-1].split(": ", 1)[1] if lines and ": " in lines[-1] else err.strip()), False


# --------------------------------------------------------------------------- static (a)

def int_range(t):
    m = re.match(r"^(u?)int(\d+)$", t)
    if m:
        bits = int(m.group(2))
        return (0, 2 ** bits - 1) if m.group(1) else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    if t == "int":
        return (-(2 ** 63), 2 ** 63 - 1)
    return None


def valid_values(desc):
    """'Valid values are 44, 48, and auto' / '0-20 and auto' / '2, 3, 4, x-5, host and max'."""
    m = re.search(r"[Vv]alid values are (.*?)(?:\.|$)", desc)
    if not m:
        return None
    toks = [t for t in re.split(r",\s*|\s+and\s+|\s+or\s+|\s+", m.group(1).strip()) if t and t != "and"]
    vals = set()
    ranges = []
    for t in toks:
        r = re.match(r"^(\d+)-(\d+)$", t)
        if r:
            ranges.append((int(r.group(1)), int(r.group(2))))
        else:
            vals.add(t)
    return vals, ranges


def check_value(name, typ, desc, value, ids, buses):
    """-> (ok, reason). ok None = the type is not checked statically."""
    if value is None:
        return False, "%s has no value" % name
    if typ == "bool":
        return value in ("on", "off", "true", "false", "yes", "no"), "bool"
    if typ == "OnOffAuto":
        return value in ("on", "off", "auto"), "on/off/auto"
    r = int_range(typ)
    if r:
        try:
            v = int(value, 0)
        except ValueError:
            if re.match(r"^\d+(\.\d+)?[kKmMgGtTpPeE][bB]?$", value):
                # memory-backend size/hugetlbsize are listed as <int> but parsed as sizes
                return None, "<%s> given as a size" % typ
            return False, "%s is not an integer" % value
        return r[0] <= v <= r[1], "%s in %d..%d" % (typ, r[0], r[1])
    if typ == "size":
        return bool(re.match(r"^\d+(\.\d+)?[kKmMgGtTpPeE]?[bB]?$", value)), "size"
    if typ in ("str", "string"):
        return True, "string"
    if typ.startswith("link<"):
        if typ == "link<PCI>":
            return value in buses, "a PCI bus of the fragment (%s)" % ", ".join(sorted(buses))
        return value in ids, "an id defined earlier in the fragment"
    vv = valid_values(desc)
    if vv:
        vals, ranges = vv
        ok = value in vals
        if not ok and re.match(r"^\d+$", value):
            ok = any(a <= int(value) <= b for a, b in ranges)
        listed = sorted(vals) + ["%d-%d" % r for r in ranges]
        return ok, "one of %s" % "/".join(listed)
    return None, "type %s is not checked statically (the verbatim start checks it)" % typ


GENERIC = {"-device": {"id", "bus", "driver"}, "-object": {"id", "qom-type"}, "-machine": {"type"}}


def static_check(guest, opts):
    ids = set()
    buses = {"pcie.0"}
    for o in opts:
        if o.flag not in ("-device", "-object", "-machine"):
            if o.flag == "-m":
                ok = bool(re.match(r"^\d+(\.\d+)?[kKmMgGtT]?$", o.value or ""))
                emit(ok, guest, "(a) -m %s" % o.value, "a memory size" if ok else "not a memory size")
            continue
        typ = o.type
        if o.flag == "-machine":
            mtype = typ or "virt"
            ok, props, err = qemu_help("-machine", mtype)
            label = "-machine %s" % o.value
        else:
            ok, props, err = qemu_help(o.flag, typ)
            label = "%s %s%s" % (o.flag, typ, (" id=" + o.id) if o.id else "")
        if not ok:
            emit(False, guest, "(a) %s" % label, "QEMU does not know %s %s: %s" % (o.flag, typ, err.splitlines()[-1] if err else "?"))
            continue
        bad, checked, unchecked = [], [], []
        for k, v in o.props():
            if k in GENERIC.get(o.flag, ()):
                if k == "bus" and v not in buses:
                    bad.append("bus=%s names no bus of the fragment" % v)
                continue
            if o.flag == "-machine" and k == "accel":
                # a -machine option of vl.c, not a machine property; its value is checked
                # by the starts (tcg) -- kvm cannot be used in an x86-64 build for aarch64
                checked.append("accel(legacy -machine option)=%s" % v)
                continue
            if k not in props:
                bad.append("property '%s' is not in `%s,help`" % (k, typ if o.flag != "-machine" else mtype))
                continue
            ptyp, desc = props[k]
            vok, why = check_value(k, ptyp, desc, v, ids, buses)
            if vok is False:
                bad.append("%s=%s: expected %s (<%s>)" % (k, v, why, ptyp))
            elif vok is None:
                unchecked.append("%s=%s <%s>" % (k, v, ptyp))
            else:
                checked.append("%s=%s" % (k, v))
        if o.id:
            ids.add(o.id)
            if typ in ("pxb-pcie", "pcie-root-port", "pcie-pci-bridge", "pci-bridge", "pxb", "pcie-expander-bus"):
                buses.add(o.id)
        if bad:
            detail = "; ".join(bad)
        elif checked:
            detail = "%d properties known, values fit: %s" % (len(checked), " ".join(checked))
        else:
            detail = "type known; no properties besides the generic ones"
        if unchecked:
            detail += " (not typed statically: %s)" % ", ".join(unchecked)
        emit(not bad, guest, "(a) %s" % label, detail)


# --------------------------------------------------------------------------- TCG form

def parse_size(s):
    m = re.match(r"^(\d+)([kKmMgGtT]?)", s or "")
    if not m:
        return None
    mult = {"": 1 << 20, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    return int(m.group(1)) * mult


# what the accel=off SMMUv3 model accepts (docs/qemu-interface.md §1.3, smmuv3.c)
ACCEL_OFF = [("accel", "off"), ("ats", "off"), ("ril", "on"), ("oas", "44"), ("ssidsize", "0"), ("cmdqv", "off")]


def tcg_machine(machine_opts):
    """The `machine` part of vsmmu's output in a form this TCG-only binary runs.
    -> (opts, changes)"""
    out, changes = [], []
    for o in machine_opts:
        if o.flag == "-machine":
            kv = []
            for k, v in o.kv:
                if k == "accel" and v != "tcg":
                    changes.append("-machine accel=%s -> accel=tcg (no KVM for aarch64 here)" % v)
                    v = "tcg"
                kv.append((k, v))
            if not any(k == "accel" for k, _ in kv):
                kv.append(("accel", "tcg"))
            out.append(Opt("-machine", join_opts(kv)))
        elif o.flag == "-cpu":
            if o.value == "host":
                changes.append("-cpu host -> -cpu max (host needs KVM)")
                out.append(Opt("-cpu", "max"))
            else:
                out.append(o)
        elif o.flag == "-bios":
            if o.value != FIRMWARE:
                changes.append("-bios %s -> -bios %s (the Debian qemu-efi-aarch64 file)" % (o.value, FIRMWARE))
            out.append(Opt("-bios", FIRMWARE))
        else:
            out.append(o)
    if not any(o.flag == "-machine" for o in out):
        out.insert(0, Opt("-machine", "virt,accel=tcg"))
        changes.append("added -machine virt,accel=tcg")
    if not any(o.flag == "-bios" for o in out):
        out.append(Opt("-bios", FIRMWARE))
        changes.append("added -bios %s" % FIRMWARE)
    return out, changes


def initiator_devices(opts):
    """The devices that acpi-generic-initiator objects name."""
    return {o.get("pci-dev") for o in opts if o.flag == "-object" and o.type == "acpi-generic-initiator"}


def tcg_form(opts):
    """-> list of (original Opt, tcg Opt or None (dropped), [changes])."""
    res = []
    mem_ids = set()
    gpus = initiator_devices(opts)
    for o in opts:
        t = o.type
        ch = []
        n = o
        if o.flag == "-object" and t and t.startswith("memory-backend"):
            mem_ids.add(o.id)
            kv = [("memory-backend-ram", None), ("id", o.id), ("size", BOOT_MEM)]
            n = Opt("-object", join_opts(kv))
            ch.append("%s -> %s (the emitted size/hugepages/prealloc cannot be had here; TCG guest gets %s)"
                      % (o.value, n.value, BOOT_MEM))
        elif o.flag == "-m":
            if parse_size(o.value) != parse_size(BOOT_MEM):
                n = Opt("-m", BOOT_MEM)
                ch.append("-m %s -> -m %s" % (o.value, BOOT_MEM))
        elif o.flag == "-device" and t == "arm-smmuv3":
            kv = []
            seen = set()
            want = dict(ACCEL_OFF)
            for k, v in o.kv:
                if k in want:
                    seen.add(k)
                    if v != want[k]:
                        ch.append("%s %s=%s -> %s=%s" % (o.id, k, v, k, want[k]))
                        v = want[k]
                kv.append((k, v))
            n = Opt("-device", join_opts(kv))
        elif o.flag == "-device" and t in ("vfio-pci", "vfio-pci-nohotplug"):
            kv = split_opts(GPU_PLACEHOLDER if o.id in gpus else PLACEHOLDER)
            for k in ("id", "bus", "addr"):
                if o.get(k) is not None:
                    kv.append((k, o.get(k)))
            n = Opt("-device", join_opts(kv))
            ch.append("%s -> %s" % (o.value, n.value))
        res.append((o, n, ch))
    return res


# --------------------------------------------------------------------------- verbatim starts (a)

def prealloc_would_allocate(o):
    """prealloc=on on a backend that this machine could really fill (anything but hugetlbfs
    under /dev, which is a 16 MiB tmpfs in the check's namespace, or hugetlb memfd, which has
    no huge pages here)."""
    if o.flag != "-object" or not (o.type or "").startswith("memory-backend"):
        return False
    if o.get("prealloc") not in ("on", "true", "yes"):
        return False
    if o.type == "memory-backend-file" and (o.get("mem-path") or "").startswith("/dev/"):
        return False
    if o.type == "memory-backend-memfd" and o.get("hugetlb") in ("on", "true", "yes"):
        return False
    return True


def gate_for(o):
    """The environment gate that may stop a verbatim option here: regex, description."""
    t = o.type
    if o.flag == "-device" and t == "arm-smmuv3" and o.get("accel") == "on":
        return re.compile(r"accel=on requires KVM"), "the KVM gate of accel=on"
    if o.flag == "-device" and t in ("vfio-pci", "vfio-pci-nohotplug"):
        return re.compile(r"no such host device|/sys/bus/pci/devices|vfio-dev|/dev/vfio"), "no such host device"
    if o.flag in ("-object", "-m", "-machine"):
        return (re.compile(r"backing store|hugepage|hugetlb|prealloc|Cannot allocate memory|memfd|mem-path|"
                           r"cannot set up guest memory|Bad address"), "no hugepages / memory for the backend")
    return None, "none"


def verbatim_starts(guest, mach_tcg, forms):
    """Start QEMU once per changed option with that option verbatim."""
    units = []
    mem = [i for i, (o, n, ch) in enumerate(forms)
           if (o.flag == "-object" and (o.type or "").startswith("memory-backend"))
           or o.flag == "-m" or (o.flag == "-machine" and o.get("memory-backend"))
           or (o.flag == "-numa" and "memdev=" in (o.value or ""))]
    if any(forms[i][2] for i in mem):
        units.append(("memory: " + " ".join(forms[i][0].text() for i in mem), mem))
    # One start per shape: options that differ only in where they sit (id, bus, host
    # address, ...) parse and stop alike, so the first stands for the rest.
    where = ("id", "bus", "host", "addr", "primary-bus", "identifier", "fd", "chassis")
    shapes = {}
    for i, (o, n, ch) in enumerate(forms):
        if i in mem or not ch:
            continue
        shape = (o.flag, o.type, tuple(sorted((k, v) for k, v in o.props() if k not in where)))
        if shape in shapes:
            note(guest, "verbatim start of %s: as %s's (the same option in another place)" % (o.id or o.text(), shapes[shape]))
            continue
        shapes[shape] = o.id or o.text()
        units.append((o.text(), [i]))
    base = []
    for o in mach_tcg:
        base += o.argv()
    for label, idx in units:
        argv = [QEMU] + base
        last = max(idx)
        for i, (o, n, ch) in enumerate(forms):
            if i > last:
                break
            use = o if i in idx else n
            if use is not None and i in idx and prealloc_would_allocate(use):
                # never let a verbatim start really allocate guest RAM on this machine
                use = Opt(use.flag, join_opts([(k, "off" if k == "prealloc" else v) for k, v in use.kv]))
                note(guest, "verbatim start of %s runs with prealloc=off: prealloc=on would allocate %s of "
                     "real memory here" % (o.id, o.get("size")))
            if use is not None:
                argv += use.argv()
        started, err = start_once(argv)
        gate, gdesc = gate_for(forms[idx[0]][0])
        if started:
            emit(True, guest, "(a) verbatim start of %s" % label, "QEMU accepted it and started (paused)")
            continue
        msg, attributed = last_error_for(err, forms[idx[0]][0])
        if not attributed:
            for i in idx:
                m2, a2 = last_error_for(err, forms[i][0])
                if a2:
                    msg, attributed = m2, True
                    break
        ok = bool(gate and gate.search(msg)) and not PARSE_ERRORS.search(msg)
        emit(ok, guest, "(a) verbatim start of %s" % label,
             ("parsed; stopped only at %s: \"%s\"" % (gdesc, msg)) if ok
             else "QEMU rejected it: \"%s\"" % (msg or err))


# --------------------------------------------------------------------------- QMP

class QMP:
    def __init__(self, path, timeout=60):
        t0 = time.time()
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX)
                self.s.connect(path)
                break
            except OSError:
                self.s.close()
                if time.time() - t0 > timeout:
                    raise
                time.sleep(0.1)
        self.s.settimeout(60)
        self.f = self.s.makefile("rw")
        self.greeting = json.loads(self.f.readline())
        self.cmd("qmp_capabilities")

    def cmd(self, name, **args):
        self.f.write(json.dumps({"execute": name, "arguments": args}) + "\n")
        self.f.flush()
        while True:
            line = self.f.readline()
            if not line:
                raise EOFError("QMP closed")
            m = json.loads(line)
            if "event" in m:
                continue
            if "error" in m:
                raise RuntimeError("%s: %s" % (name, m["error"].get("desc")))
            return m.get("return")

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


def flatten_pci(roots):
    """query-pci -> {qdev_id: (bus, slot, fn)}, {root bus number: [qdev ids]}, bridges."""
    devs, rootbus, bridges = {}, {}, {}

    def walk(lst, root):
        for d in lst:
            qid = d.get("qdev_id") or "%02x:%02x.%x" % (d["bus"], d["slot"], d["function"])
            devs[qid] = (d["bus"], d["slot"], d["function"])
            rootbus.setdefault(root, []).append(qid)
            if "pci_bridge" in d:
                b = d["pci_bridge"]["bus"]
                bridges[qid] = (b["number"], b["secondary"], b["subordinate"])
                walk(d["pci_bridge"].get("devices", []), root)
    for r in roots:
        walk(r["devices"], r["bus"])
    return devs, rootbus, bridges


def fmt_addr(b, s, f):
    return "%02x:%02x.%x" % (b, s, f)


# --------------------------------------------------------------------------- predictions

def predict(guest, forms):
    """From the args: pxb id -> bus_nr; root port -> secondary bus
    (bus_nr + 1 + rank of its slot among the pxb's root ports); device -> address."""
    pxb = {}
    ports = {}
    for o, n, ch in forms:
        if o.flag != "-device":
            continue
        if o.type == "pxb-pcie":
            pxb[o.id] = int(o.get("bus_nr", "0"), 0)
        elif o.type == "pcie-root-port":
            ports[o.id] = (o.get("bus"), o.get("addr"))
    problems = []
    sec = {}
    for pid, nr in pxb.items():
        mine = [(rid, a) for rid, (b, a) in ports.items() if b == pid]
        if any(a is None for _, a in mine):
            problems.append("root port without addr= on %s: slot order unknown" % pid)
            continue
        slots = sorted((int(a.split(".")[0], 16), rid) for rid, a in mine)
        for rank, (s, rid) in enumerate(slots):
            sec[rid] = nr + 1 + rank
    pred = {}
    for o, n, ch in forms:
        if o.flag == "-device" and o.type in ("vfio-pci", "vfio-pci-nohotplug"):
            b = o.get("bus")
            if b not in sec:
                problems.append("%s: bus=%s is not a root port on a pxb-pcie" % (o.id, b))
                continue
            a = o.get("addr") or "0"
            slot = int(a.split(".")[0], 16)
            fn = int(a.split(".")[1], 16) if "." in a else 0
            pred[o.id] = (sec[b], slot, fn)
    return pxb, sec, pred, problems


def plan_layout(plan, guest):
    for g in plan.get("layout", []):
        if g.get("guest") == guest:
            return g
    return None


def plan_vsid(d):
    """A plan layout device's vSID: the plan JSON writes it as the kernel and QEMU do, "0x1100"."""
    v = d.get("vsid") if d else None
    if isinstance(v, str):
        return int(v, 16)
    return v


def parse_guest_addr(s):
    m = re.match(r"^(?:([0-9a-fA-F]{4}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$", s or "")
    if not m:
        return None
    return int(m.group(2), 16), int(m.group(3), 16), int(m.group(4), 16)


# --------------------------------------------------------------------------- boot (b)

def wait_serial(path, pattern, timeout, alive):
    """Wait until the guest's serial log (terminal escapes dropped) matches pattern."""
    t0 = time.time()
    while True:
        try:
            with open(path, "rb") as f:
                text = re.sub(r"\x1b\[[0-9;=?]*[A-Za-z]", "", f.read().decode("latin-1"))
            m = re.search(pattern, text)
            if m:
                return m
        except OSError:
            pass
        if time.time() - t0 >= timeout or not alive():
            return None
        time.sleep(0.3)


def read_phys(qmp, logdir, addr, size):
    """Guest-physical memory through QMP pmemsave (QEMU writes a file we read)."""
    path = os.path.join(logdir, "pmem.bin")
    qmp.cmd("pmemsave", val=addr, size=size, filename=path)
    with open(path, "rb") as f:
        data = f.read()
    os.unlink(path)
    return data


def find_acpi_table(qmp, logdir, rsdp_addr, sig):
    import struct
    rsdp = read_phys(qmp, logdir, rsdp_addr, 36)
    if rsdp[:8] != b"RSD PTR ":
        raise RuntimeError("no RSDP at 0x%x" % rsdp_addr)
    xsdt_addr = struct.unpack_from("<Q", rsdp, 24)[0]
    hdr = read_phys(qmp, logdir, xsdt_addr, 36)
    n = (struct.unpack_from("<I", hdr, 4)[0] - 36) // 8
    ents = read_phys(qmp, logdir, xsdt_addr + 36, 8 * n)
    for i in range(n):
        a = struct.unpack_from("<Q", ents, 8 * i)[0]
        h = read_phys(qmp, logdir, a, 36)
        if h[:4] == sig:
            return read_phys(qmp, logdir, a, struct.unpack_from("<I", h, 4)[0])
    raise RuntimeError("no %s table in the XSDT" % sig.decode())


def parse_iort(t):
    """-> revision, {offset: node}; node: type, id, base (SMMUv3), maps [(in, n, out, ref)]."""
    import struct
    rev = t[8]
    count, off0 = struct.unpack_from("<II", t, 36)
    nodes, off = {}, off0
    for _ in range(count):
        typ, length, nrev, ident, nmap, mapoff = struct.unpack_from("<BHBIII", t, off)
        node = {"type": typ, "rev": nrev, "id": ident, "maps": []}
        if typ == 4:
            node["base"] = struct.unpack_from("<Q", t, off + 16)[0]
        if typ == 2:
            node["segment"] = struct.unpack_from("<I", t, off + 28)[0]
        for i in range(nmap):
            ib, num, ob, ref, flags = struct.unpack_from("<IIIII", t, off + mapoff + 20 * i)
            node["maps"].append((ib, num, ob, ref))
        nodes[off] = node
        off += length
    return rev, nodes


VIRT_RAM_BASE = 0x40000000  # RAM of the aarch64 virt machine starts at 1 GiB

NODE_TYPES = {0: "ITS", 1: "NamedComponent", 2: "RootComplex", 3: "SMMUv1/2", 4: "SMMUv3", 5: "PMCG", 6: "RMR"}


def boot(guest, mach_tcg, forms, pxb, sec, pred, layout, logdir):
    argv = [QEMU]
    for o in mach_tcg:
        argv += o.argv()
    for o, n, ch in forms:
        if n is not None:
            argv += n.argv()
    sock = os.path.join(logdir, "qmp.sock")
    serial = os.path.join(logdir, "serial.log")
    for p in (sock, serial):
        if os.path.exists(p):
            os.unlink(p)
    argv += ["-nodefaults", "-display", "none", "-smp", "1", "-no-reboot",
             "-serial", "file:" + serial, "-qmp", "unix:%s,server=on,wait=off" % sock]
    with open(os.path.join(logdir, "boot.cmd"), "w") as f:
        f.write(" ".join(argv) + "\n")
    errpath = os.path.join(logdir, "qemu.stderr")
    errf = open(errpath, "w")
    t0 = time.time()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=errf, stderr=subprocess.STDOUT, env=qemu_env())
    alive = lambda: proc.poll() is None  # noqa: E731
    qmp = None
    try:
        while not os.path.exists(sock) and alive() and time.time() - t0 < 60:
            time.sleep(0.1)
        if not alive() or not os.path.exists(sock):
            errf.flush()
            emit(False, guest, "(b) TCG start of the placeholder topology",
                 "QEMU did not start: \"%s\"" % open(errpath).read().strip())
            return
        qmp = QMP(sock)
        emit(True, guest, "(b) TCG start of the placeholder topology",
             "%s accepted %d options (log %s)" % (QEMU_VERSION, sum(1 for _, n, _ in forms if n is not None), logdir))
        # SMMUv3 instances as realized (identifier separately, below)
        smmu_qom_id = {}
        for o, n, ch in forms:
            if n is None or o.type != "arm-smmuv3":
                continue
            path = "/machine/peripheral/%s" % o.id
            got, bad = [], []
            for k, v in n.props():
                if k == "id":
                    continue
                try:
                    val = qmp.cmd("qom-get", path=path, property=k)
                except Exception as e:  # noqa
                    bad.append("%s: %s" % (k, e))
                    continue
                if k == "identifier":
                    smmu_qom_id[o.id] = val
                    continue
                if k == "primary-bus":
                    ok = isinstance(val, str) and (val == v or val.endswith("/" + v))
                    val = v if ok else val
                elif isinstance(val, bool):
                    val = "on" if val else "off"
                    ok = val == v.lower()
                else:
                    ok = str(val).lower() == v.lower()
                (got if ok else bad).append("%s=%s" % (k, val))
            emit(not bad, guest, "(b) %s realized with the TCG values" % o.id,
                 " ".join(got) if not bad else "; ".join(bad))
        # wait for the firmware to reach BDS: PCI is enumerated by then
        reached = wait_serial(serial, r"BdsDxe", BOOT_TIMEOUT, alive)
        took = time.time() - t0
        emit(bool(reached), guest, "(b) UEFI firmware enumerated PCI and reached BDS",
             "after %.1fs of TCG" % took if reached else "not within %ds (serial log in %s)" % (BOOT_TIMEOUT, logdir))
        roots = qmp.cmd("query-pci")
        with open(os.path.join(logdir, "query-pci.json"), "w") as f:
            json.dump(roots, f, indent=1)
        try:
            with open(os.path.join(logdir, "info-pci.txt"), "w") as f:
                f.write(qmp.cmd("human-monitor-command", **{"command-line": "info pci"}))
        except Exception:  # noqa
            pass
        devs, rootbus, bridges = flatten_pci(roots)
        # pxb bus numbers
        vs_by_bus = {}
        if layout:
            for v in layout.get("vsmmus", []):
                vs_by_bus[v.get("busNumber")] = v.get("name")
        for pid, nr in pxb.items():
            kids = [rid for rid in sec if rid in rootbus.get(nr, [])]
            want = [rid for rid in sec if forms_bus(forms, rid) == pid]
            ok = nr in rootbus and sorted(kids) == sorted(want) and nr in vs_by_bus
            planned = ("plan vSMMU %s has busNumber %d" % (vs_by_bus[nr], nr)) if nr in vs_by_bus else \
                "no plan vSMMU has busNumber %d" % nr
            emit(ok, guest, "(b) pxb-pcie %s is root bus 0x%02x (bus_nr=%d)" % (pid, nr, nr),
                 ("query-pci root bus %d holds %s; %s" % (nr, " ".join(sorted(kids)), planned)) if ok else
                 "query-pci root buses %s, bus %d holds %s (want %s); %s" % (
                     sorted(rootbus), nr, rootbus.get(nr), want, planned))
        # devices
        plan_devs = {d.get("name"): d for d in (layout or {}).get("devices", [])}
        for did, (pb, ps, pf) in sorted(pred.items(), key=lambda x: x[1]):
            vsid = pb << 8 | ps << 3 | pf
            act = devs.get(did)
            pd = plan_devs.get(did)
            want = "predicted %s (vSID 0x%04x)" % (fmt_addr(pb, ps, pf), vsid)
            if act is None:
                emit(False, guest, "(b) %s at %s" % (did, fmt_addr(pb, ps, pf)), "%s; not in query-pci" % want)
                continue
            avsid = act[0] << 8 | act[1] << 3 | act[2]
            ok = act == (pb, ps, pf)
            if pd:
                if parse_guest_addr(pd.get("guestAddress")) != act or plan_vsid(pd) != avsid:
                    ok = False
                extra = "; plan says %s vsid 0x%04x" % (pd.get("guestAddress"), plan_vsid(pd) or 0)
            else:
                ok = False
                extra = "; not in the plan's layout"
            emit(ok, guest, "(b) %s at %s" % (did, fmt_addr(pb, ps, pf)),
                 "query-pci %s (vSID 0x%04x) behind %s, %s%s" % (
                     fmt_addr(*act), avsid, forms_bus(forms, did), want, extra))
        # the ACPI IORT QEMU built: RID -> StreamID -> SMMUv3 node, and node identifiers
        iort_checks(guest, qmp, forms, pxb, pred, smmu_qom_id, layout, logdir)
        # the SRAT (NUMA nodes, Generic Initiators) and the 64-bit PCI hole
        numa_checks(guest, qmp, forms, devs, roots, logdir)
    finally:
        if qmp is not None:
            try:
                qmp.cmd("quit")
            except Exception:  # noqa
                pass
            qmp.close()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        errf.close()


def find_rsdp(qmp, logdir, ram_base, ram_size, chunk=64 << 20):
    """Scan guest RAM from the top down (where the firmware puts its ACPI tables) for a
    valid ACPI 2.0 RSDP: 'RSD PTR ', revision >= 2, both checksums zero. (UEFI puts it
    in ACPI memory, not necessarily 16-byte aligned.)"""
    end = ram_base + ram_size
    while end > ram_base:
        start = max(ram_base, end - chunk)
        data = read_phys(qmp, logdir, start, end - start)
        i = data.rfind(b"RSD PTR ")
        while i >= 0:
            r = data[i:i + 36]
            if len(r) == 36 and sum(r[:20]) % 256 == 0 and r[15] >= 2 and sum(r) % 256 == 0:
                return start + i
            i = data.rfind(b"RSD PTR ", 0, i)
        end = start
    raise RuntimeError("no ACPI 2.0 RSDP in guest RAM 0x%x..0x%x" % (ram_base, ram_base + ram_size))


def iort_checks(guest, qmp, forms, pxb, pred, smmu_qom_id, layout, logdir):
    """The IORT that QEMU built and the firmware installed, read from guest memory."""
    what = "(b) IORT read from guest memory"
    try:
        for attempt in range(10):  # the firmware installs the tables once PCI is enumerated
            try:
                rsdp = find_rsdp(qmp, logdir, VIRT_RAM_BASE, parse_size(BOOT_MEM))
                break
            except RuntimeError:
                if attempt == 9:
                    raise
                time.sleep(3)
        iort = find_acpi_table(qmp, logdir, rsdp, b"IORT")
        with open(os.path.join(logdir, "IORT.bin"), "wb") as f:
            f.write(iort)
        rev, nodes = parse_iort(iort)
    except Exception as e:  # noqa
        emit(False, guest, what, str(e))
        return
    with open(os.path.join(logdir, "IORT.txt"), "w") as f:
        f.write("IORT revision %d\n" % rev)
        for off, nd in sorted(nodes.items()):
            f.write("node @0x%x %s id=%d%s\n" % (off, NODE_TYPES.get(nd["type"], nd["type"]), nd["id"],
                                                  " base=0x%x" % nd["base"] if "base" in nd else ""))
            for ib, num, ob, ref in nd["maps"]:
                tgt = nodes.get(ref, {})
                f.write("   in 0x%04x..0x%04x -> out 0x%04x.. node @0x%x %s\n" % (
                    ib, ib + num, ob, ref, NODE_TYPES.get(tgt.get("type"), "?")))
    smmus = {off: nd for off, nd in nodes.items() if nd["type"] == 4}
    rcs = [nd for nd in nodes.values() if nd["type"] == 2]
    emit(bool(smmus) and bool(rcs), guest, what,
         "revision %d, %d SMMUv3 node(s) (identifiers %s), %d root complex node(s); dump in %s/IORT.txt" % (
             rev, len(smmus), ",".join(str(nd["id"]) for _, nd in sorted(smmus.items())), len(rcs), logdir))

    def lookup(rid):
        for rc in rcs:
            for ib, num, ob, ref in rc["maps"]:
                if ib <= rid <= ib + num and ref in smmus:
                    return ob + (rid - ib), ref
        return None, None

    # per SMMUv3 of the args: its pxb's devices must map RID -> same StreamID on one node
    used = {}
    for o, n, ch in forms:
        if o.type != "arm-smmuv3":
            continue
        bus = o.get("primary-bus")
        devs = sorted(d for d in pred if forms_pxb(forms, d) == bus)
        res, bad, node = [], [], None
        for d in devs:
            b, s, f = pred[d]
            rid = b << 8 | s << 3 | f
            sid, ref = lookup(rid)
            if sid is None:
                bad.append("%s RID 0x%04x is not mapped to an SMMUv3" % (d, rid))
                continue
            if sid != rid:
                bad.append("%s RID 0x%04x -> StreamID 0x%04x" % (d, rid, sid))
            if node is not None and ref != node:
                bad.append("%s maps to another SMMUv3 node" % d)
            node = ref
            res.append("%s 0x%04x->0x%04x" % (d, rid, sid))
        if node is not None and node in used:
            bad.append("node @0x%x is also used by %s" % (node, used[node]))
        if node is not None:
            used[node] = o.id
        label = "(b) IORT maps %s's devices (RID = vSID) to one SMMUv3 node" % o.id
        emit(not bad and node is not None, guest, label,
             ("%s on node id=%d base=0x%x" % (", ".join(res), smmus[node]["id"], smmus[node]["base"]))
             if not bad and node is not None else "; ".join(bad) or "no device behind %s" % bus)
        # the emitted identifier against what QEMU uses
        emitted = o.get("identifier")
        if emitted is not None and node is not None:
            iid = smmus[node]["id"]
            qid = smmu_qom_id.get(o.id)
            ok = str(iid) == emitted and (qid is None or str(qid) == emitted)
            plan_id = None
            for v in (layout or {}).get("vsmmus", []):
                if v.get("busNumber") == pxb.get(bus):
                    plan_id = v.get("identifier")
            emit(ok, guest, "(b) %s identifier=%s is what QEMU uses" % (o.id, emitted),
                 "IORT SMMUv3 node identifier %d, QOM %s.identifier reads %s, plan identifier %s%s" % (
                     iid, o.id, qid, plan_id,
                     "" if ok else " (QEMU replaced the emitted value; seen with accel=off, accel=on "
                     "cannot be started here)"))


def acpi_tables(qmp, logdir):
    """RSDP -> XSDT -> {signature: table bytes} (the firmware installed them once PCI was enumerated)."""
    import struct
    rsdp = find_rsdp(qmp, logdir, VIRT_RAM_BASE, parse_size(BOOT_MEM))
    r = read_phys(qmp, logdir, rsdp, 36)
    xsdt = struct.unpack_from("<Q", r, 24)[0]
    hdr = read_phys(qmp, logdir, xsdt, 36)
    n = (struct.unpack_from("<I", hdr, 4)[0] - 36) // 8
    ents = read_phys(qmp, logdir, xsdt + 36, 8 * n)
    tables = {}
    for i in range(n):
        a = struct.unpack_from("<Q", ents, 8 * i)[0]
        h = read_phys(qmp, logdir, a, 36)
        tables[h[:4].decode("latin-1")] = read_phys(qmp, logdir, a, struct.unpack_from("<I", h, 4)[0])
    fadt = tables.get("FACP")
    if fadt is not None:  # the DSDT is reached through the FADT, not the XSDT
        dsdt = struct.unpack_from("<Q", fadt, 140)[0] if len(fadt) >= 148 else 0
        dsdt = dsdt or struct.unpack_from("<I", fadt, 40)[0]
        h = read_phys(qmp, logdir, dsdt, 36)
        tables["DSDT"] = read_phys(qmp, logdir, dsdt, struct.unpack_from("<I", h, 4)[0])
    return tables


def parse_srat(t):
    """-> memory affinity [(domain, base, length)], generic initiators [(domain, segment, bdf, flags, handle type)]."""
    import struct
    mem, gis, off = [], [], 48
    while off + 2 <= len(t):
        typ, length = t[off], t[off + 1]
        if length == 0:
            break
        if typ == 1:
            dom, base, size, flags = struct.unpack_from("<I2xQQ4xI", t, off + 2)
            if flags & 1:
                mem.append((dom, base, size))
        elif typ == 5:
            # the PCI device handle is segment (2 bytes), then bus and devfn a byte each
            # (how QEMU writes it and Linux reads it)
            htype = t[off + 3]
            dom, seg = struct.unpack_from("<IH", t, off + 4)
            bdf = t[off + 10] << 8 | t[off + 11]
            flags = struct.unpack_from("<I", t, off + 24)[0]
            gis.append((dom, seg, bdf, flags, htype))
        off += length
    return mem, gis


def ecam_windows(mcfg):
    """MCFG -> [(base, last)] of the config-space windows (a DSDT names them too, in RES0)."""
    import struct
    out = []
    for off in range(44, len(mcfg) - 15, 16):
        base, seg, b0, b1 = struct.unpack_from("<QHBB", mcfg, off)
        out.append((base, base + ((b1 - b0 + 1) << 20) - 1))
    return out


def qword_memory_ranges(aml):
    """Every ACPI QWord Memory descriptor in an AML blob (the host bridges' _CRS buffers):
    [(min, max, length)], with max = min + length - 1 as a descriptor must have it."""
    import struct
    out, i = [], 0
    while True:
        i = aml.find(b"\x8a\x2b\x00\x00", i)
        if i < 0 or i + 46 > len(aml):
            return out
        mn, mx, _, ln = struct.unpack_from("<QQQQ", aml, i + 14)
        if ln and mx == mn + ln - 1:
            out.append((mn, mx, ln))
        i += 1


def numa_checks(guest, qmp, forms, devs, roots, logdir):
    """The guest's view of what vsmmu wrote for NUMA and the PCI hole: the SRAT has a
    Generic Initiator Affinity structure (type 5, PCI handle) for each node of each
    acpi-generic-initiator, with the device's guest BDF; node 0 holds the RAM; the 64-bit
    memory windows of the host bridges (QWord descriptors of the DSDT _CRS) add up to
    highmem-mmio-size; each GPU stand-in's BAR was assigned inside them."""
    nodes = [o for o, n, ch in forms if o.flag == "-numa"]
    gi = {}
    for o, n, ch in forms:
        if o.flag == "-object" and o.type == "acpi-generic-initiator":
            gi.setdefault(o.get("pci-dev"), set()).add(int(o.get("node")))
    hole = None
    for o in [o for o, n, ch in forms] + []:
        if o.flag == "-machine" and o.get("highmem-mmio-size"):
            hole = parse_size(o.get("highmem-mmio-size"))
    if not nodes and hole is None:
        return
    try:
        tables = acpi_tables(qmp, logdir)
    except Exception as e:  # noqa
        emit(False, guest, "(b) ACPI tables read from guest memory (SRAT, DSDT)", str(e))
        return
    if nodes:
        srat = tables.get("SRAT")
        if srat is None:
            emit(False, guest, "(b) SRAT in the XSDT", "no SRAT, though the args give %d NUMA nodes" % len(nodes))
        else:
            with open(os.path.join(logdir, "SRAT.bin"), "wb") as f:
                f.write(srat)
            mem, gis = parse_srat(srat)
            ram_dom = [d for d, b, l in mem if b <= VIRT_RAM_BASE < b + l]
            emit(ram_dom == [0], guest, "(b) SRAT: the RAM is in node 0",
                 "memory affinity: " + ", ".join("node %d 0x%x+0x%x" % m for m in mem))
            found = {}
            for dom, seg, bdf, flags, htype in gis:
                found.setdefault((seg, bdf), []).append((dom, flags, htype))
            for did, want in sorted(gi.items()):
                a = devs.get(did)
                if a is None:
                    emit(False, guest, "(b) SRAT Generic Initiators of %s" % did, "%s is not in query-pci" % did)
                    continue
                bdf = a[0] << 8 | a[1] << 3 | a[2]
                got = found.pop((0, bdf), [])
                doms = sorted(d for d, f, h in got)
                ok = doms == sorted(want) and all(f & 1 and h == 1 for d, f, h in got)
                emit(ok, guest, "(b) SRAT Generic Initiators of %s (PCI handle 0000:%s)" % (did, fmt_addr(*a)),
                     "type 5 structures, nodes %s%s" % (",".join(map(str, doms)) or "none",
                                                       "" if ok else "; want %s, enabled, handle type 1 (PCI)" % ",".join(map(str, sorted(want)))))
            emit(not found, guest, "(b) SRAT has no Generic Initiator for another device",
                 "left: %s" % sorted(found) if found else "%d structures, all for the devices above" % len(gis))
    if hole is not None:
        dsdt = tables.get("DSDT", b"")
        ecam = ecam_windows(tables.get("MCFG", b""))
        win = sorted(r for r in qword_memory_ranges(dsdt)
                     if r[0] >= 1 << 32 and not any(lo <= r[0] <= hi for lo, hi in ecam))
        total = sum(r[2] for r in win)
        contiguous = all(win[i][1] + 1 == win[i + 1][0] for i in range(len(win) - 1))
        ok = bool(win) and total == hole and contiguous
        emit(ok, guest, "(b) DSDT: the host bridges' 64-bit windows are the %s PCI hole" % fmt_size(hole),
             "%d QWord memory ranges 0x%x..0x%x, %s in all%s" % (
                 len(win), win[0][0] if win else 0, win[-1][1] if win else 0, fmt_size(total),
                 "" if contiguous else " (not contiguous)"))
        # The firmware leaves a device without a UEFI driver undecoded (query-pci shows its
        # BAR unmapped), but the window it opened on the root port above is the BAR's place.
        bars, windows = pci_big_bars(roots)
        for did in sorted(gi):
            size = max(bars.get(did, [0]))
            pw = windows.get(did)
            ok = size >= 1 << 32 and pw is not None and pw[1] - pw[0] + 1 >= size \
                and any(lo <= pw[0] and pw[1] <= hi for lo, hi, _ in win)
            emit(ok, guest, "(b) %s stand-in's %s BAR has its place inside the 64-bit window" % (did, fmt_size(size)),
                 "root port prefetchable window 0x%x..0x%x" % pw if pw else "no prefetchable window on its root port (query-pci)")


def pci_big_bars(roots):
    """query-pci -> {qdev_id: [64-bit BAR sizes]}, {qdev_id: (base, limit) of the prefetchable
    window of the bridge the device sits behind}."""
    sizes, windows = {}, {}

    def walk(lst, window):
        for d in lst:
            qid = d.get("qdev_id")
            for r in d.get("regions", []):
                if r.get("type") == "memory" and r.get("mem_type_64"):
                    sizes.setdefault(qid, []).append(r["size"])
            if window is not None:
                windows[qid] = window
            if "pci_bridge" in d:
                pr = d["pci_bridge"]["bus"].get("prefetchable_range") or {}
                walk(d["pci_bridge"].get("devices", []),
                     (pr["base"], pr["limit"]) if pr.get("limit", 0) > pr.get("base", 0) else None)
    for r in roots:
        walk(r["devices"], None)
    return sizes, windows


def fmt_size(v):
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if v and v % (1 << shift) == 0:
            return "%d%s" % (v >> shift, unit)
    return str(v)


def forms_pxb(forms, devid):
    """The pxb-pcie a device sits under (through its root port)."""
    rp = forms_bus(forms, devid)
    return forms_bus(forms, rp)


def forms_bus(forms, devid):
    for o, n, ch in forms:
        if o.id == devid:
            return o.get("bus")
    return None


# --------------------------------------------------------------------------- hand-over (c)

QEMU_X86 = M.get("qemu_x86", "/usr/bin/qemu-system-x86_64")
LIBVIRT_RNG = M.get("libvirt_rng", "/usr/share/libvirt/schemas/domain.rng")
PLACEHOLDER_RE = re.compile(r"\{(vsmmu-[^}]*)\}")


def load(logdir, name):
    try:
        return open(os.path.join(logdir, name)).read()
    except OSError:
        return None


def argv_check(label, logdir, form, jtext, atext):
    """`--format argv`, split the way `$(...)` splits it, must be the JSON args."""
    if jtext is None or atext is None:
        emit(False, label, "(c) vsmmu qemu-args%s --format argv" % form, "no output (see the .err files in %s)" % logdir)
        return
    want = json.loads(jtext)["args"]
    got = atext.split()
    ok = got == want and atext.count("\n") == 1 and "\\" not in atext and "#" not in atext
    emit(ok, label, "(c) --format argv%s is the args on one line, word-split intact" % form,
         "%d arguments" % len(got) if ok else "split: %s / json: %s" % (got[:6], want[:6]))


def open_fds(args):
    """One fd per {vsmmu-...} placeholder, as a launch would pass them: the iommufd object
    gets the /dev/iommu stub, a vfio-pci a non-VFIO fd (/dev/null; QEMU's own bind must be
    what fails), a memory backend a memfd of its size (sparse). -> (resolved args, {name: fd})."""
    fds = {}
    for a in args:
        for name in PLACEHOLDER_RE.findall(a):
            if name in fds:
                continue
            if a.startswith("iommufd,"):
                fds[name] = os.open("/dev/iommu", os.O_RDWR)
            elif a.startswith("memory-backend"):
                fd = os.memfd_create(name, 0)
                os.ftruncate(fd, parse_size(dict(split_opts(a)).get("size", "0")))
                fds[name] = fd
            else:
                fds[name] = os.open("/dev/null", os.O_RDWR)
    out = [PLACEHOLDER_RE.sub(lambda m: str(fds[m.group(1)]), a) for a in args]
    return out, fds


def run_held(argv, fds, logdir, tag, queries):
    """Start QEMU paused with the fds inherited and a QMP socket; run queries (list of
    (path, property)), read its memory map, quit. -> (started, {query: value}, maps, err)."""
    sock = os.path.join(logdir, "qmp-%s.sock" % tag)
    errf = os.path.join(logdir, "%s.err" % tag)
    try:
        os.unlink(sock)
    except OSError:
        pass
    full = argv + ["-S", "-nodefaults", "-display", "none", "-qmp", "unix:%s,server=on,wait=off" % sock]
    with open(errf, "w") as ef:
        p = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=ef, stderr=ef, pass_fds=list(fds.values()), env=qemu_env())
    vals, maps, qmp = {}, "", None
    try:
        t0 = time.time()
        while not os.path.exists(sock) and p.poll() is None and time.time() - t0 < 60:
            time.sleep(0.05)
        if p.poll() is not None:
            return False, vals, maps, open(errf).read().strip()
        qmp = QMP(sock)
        for path, prop in queries:
            try:
                vals[(path, prop)] = qmp.cmd("qom-get", path=path, property=prop)
            except RuntimeError as e:
                vals[(path, prop)] = "error: %s" % e
        try:
            maps = open("/proc/%d/maps" % p.pid).read()
        except OSError:
            pass
        qmp.cmd("quit")
        p.wait(timeout=30)
        return True, vals, maps, open(errf).read().strip()
    except Exception as e:  # noqa
        return False, vals, maps, "%s; %s" % (e, open(errf).read().strip())
    finally:
        if qmp:
            qmp.close()
        if p.poll() is None:
            p.kill()
            p.wait()


def memory_queries(opts):
    """The machine's memory backend and each backend's mem-path (when it has one)."""
    q = [("/machine", "memory-backend")]
    for o in opts:
        if o.flag == "-object" and o.type == "memory-backend-file":
            q.append(("/objects/%s" % o.id, "mem-path"))
    return q


def machine_ram(opts):
    for o in opts:
        if o.flag == "-machine" and o.get("memory-backend"):
            return o.get("memory-backend")
    return None


def held_start_checks(label, what, argv, fds, opts, logdir, tag):
    """The start without VFIO devices: QEMU must start, the separate -machine
    memory-backend= must have merged into the machine, and each handed-over memfd must be
    what QEMU mapped."""
    ok, vals, maps, err = run_held(argv, fds, logdir, tag, memory_queries(opts))
    if not ok:
        emit(False, label, "(c) %s: QEMU starts" % what, err)
        return
    ram = machine_ram(opts)
    got = vals.get(("/machine", "memory-backend"))
    if ram:
        emit(got == "/objects/%s" % ram, label, "(c) %s: -machine memory-backend=%s merged into the machine" % (what, ram),
             "qom-get /machine memory-backend = %s" % got)
    for name, fd in sorted(fds.items()):
        if not any(o.flag == "-object" and o.type == "memory-backend-file" and ("/proc/self/fd/%d" % fd) == o.get("mem-path") for o in opts):
            continue
        mp = [v for (pth, prop), v in vals.items() if prop == "mem-path"]
        mapped = ("/memfd:%s" % name) in maps
        emit(("/proc/self/fd/%d" % fd) in mp and mapped, label,
             "(c) %s: memory from the handed-over memfd {%s} (mem-path=/proc/self/fd/%d)" % (what, name, fd),
             "QEMU maps /memfd:%s" % name if mapped else "not in QEMU's memory map; mem-path %s" % mp)


def bind_check(label, what, argv, fds, opts, logdir):
    """With the VFIO devices verbatim, QEMU must get as far as its own bind of the fd it was
    given: VFIO_DEVICE_BIND_IOMMUFD on a non-VFIO fd fails with ENOTTY, which proves the
    number was taken for both the cdev and the iommufd."""
    vf = [o for o in opts if o.flag == "-device" and o.type in ("vfio-pci", "vfio-pci-nohotplug")]
    io = [o for o in opts if o.flag == "-object" and o.type == "iommufd"]
    if not vf or not io:
        return
    ok, err = start_once(argv, pass_fds=list(fds.values()))
    want = re.compile(r"error bind device fd=%s to iommufd=%s" % (re.escape(vf[0].get("fd") or "?"), re.escape(io[0].get("fd") or "?")))
    good = not ok and want.search(err) is not None and "Invalid file descriptor" not in err
    last = err.splitlines()[-1] if err else ""
    emit(good, label, "(c) %s: QEMU takes fd=%s (cdev) and fd=%s (iommufd) and binds the cdev itself" % (what, vf[0].get("fd"), io[0].get("fd")),
         ("stopped at its own bind, as a non-VFIO fd must: \"%s\"" % last) if good else "QEMU said: %s" % (err or "nothing (it started)"))


def drop_vfio(forms):
    """tcg forms, with the memory options kept verbatim (the fd test is about them)."""
    out = []
    for o, n, ch in forms:
        if o.flag == "-m" or (o.flag == "-object" and (o.type or "").startswith("memory-backend")):
            out.append(o)
        elif n is not None:
            out.append(n)
    return out


def vfio_to_placeholder(opts):
    """q35: each vfio-pci becomes the emulated placeholder endpoint in its root port."""
    out = []
    for o in opts:
        if o.flag == "-device" and o.type in ("vfio-pci", "vfio-pci-nohotplug"):
            o = Opt("-device", join_opts(split_opts(PLACEHOLDER) + [(k, o.get(k)) for k in ("id", "bus") if o.get(k)]))
        out.append(o)
    return out


def keep_vfio_and_memory(forms):
    """aarch64: the TCG forms, but the VFIO devices and the memory options verbatim."""
    out = []
    for o, n, _ in forms:
        if (o.flag == "-device" and o.type in ("vfio-pci", "vfio-pci-nohotplug")) or o.flag == "-m" \
                or (o.flag == "-object" and (o.type or "").startswith("memory-backend")):
            out.append(o)
        elif n is not None:
            out.append(n)
    return out


def flat(opts):
    return sum((o.argv() for o in opts), [])


def handover_checks(label, g, logdir, platform):
    jf = load(logdir, "qemu-args-fds.json")
    jp = load(logdir, "qemu-args.json")
    argv_check(label, logdir, "", jp, load(logdir, "qemu-args.argv"))
    argv_check(label, logdir, " --fds", jf, load(logdir, "qemu-args-fds.argv"))
    if jf is None:
        emit(False, label, "(c) vsmmu qemu-args --fds --format json", "no output")
        return
    j = json.loads(jf)
    if platform == "x86_64-q35":
        # what the x86 lab does: its own -machine q35, then $(vsmmu qemu-args ... --format argv)
        head = [QEMU_X86, "-machine", "q35", "-accel", "tcg", "-cpu", "max"]
        plain = parse_args(json.loads(jp)["args"])
        held_start_checks(label, "q35 without --fds", head + flat(vfio_to_placeholder(plain)), {}, vfio_to_placeholder(plain), logdir, "q35")
        ok, err = start_once(head + flat(plain))
        msg = err.splitlines()[-1] if err else ""
        emit(not ok and "no such host device" in msg and not PARSE_ERRORS.search(err), label,
             "(c) q35 verbatim: parsed, stopped only at vfio-pci host= (no such host device here)", msg or "it started")
    else:
        head = [QEMU] + flat(tcg_machine(parse_args(j.get("machine", [])))[0])
    args, fds = open_fds(j["args"])
    try:
        opts = parse_args(args)
        if platform == "x86_64-q35":
            held, full = vfio_to_placeholder(opts), opts
        else:
            forms = tcg_form(opts)
            held = []
            for o, n, _ in forms:
                if o.flag == "-m" or (o.flag == "-object" and (o.type or "").startswith("memory-backend")):
                    held.append(o)   # the memory verbatim: that is what the fds test is about
                elif n is not None:
                    held.append(n)   # vfio-pci -> placeholder, SMMU -> the TCG values
            full = keep_vfio_and_memory(forms)
        held_start_checks(label, "--fds", head + flat(held), fds, held, logdir, "fds")
        bind_check(label, "--fds", head + flat(full), fds, full, logdir)
    finally:
        for fd in fds.values():
            os.close(fd)


def libvirt_check(label, g, logdir):
    path = os.path.join(logdir, "libvirt.xml")
    if g.get("xml_rc") != 0 or not os.path.exists(path):
        emit(False, label, "vsmmu libvirt-xml", "exit %s: %s" % (g.get("xml_rc"), g.get("xml_err", "").strip()))
        return
    p = subprocess.run(["xmllint", "--noout", "--relaxng", LIBVIRT_RNG, path], capture_output=True, text=True, timeout=60)
    err = (p.stderr or "").strip().splitlines()
    emit(p.returncode == 0, label, "(c) libvirt-xml validates against libvirt %s's domain.rng" % M.get("libvirt_version", "?"),
         "xmllint --relaxng: " + (err[-1] if err else "ok") if p.returncode == 0 else " / ".join(err[-3:]))
    nvidia_check(label, g, logdir)


# The nvidia dialect differs from upstream only in the spelling of the smmuv3 <driver>'s
# SubstreamID width; NVIDIA's libvirt publishes no schema that could be had here, so the
# rest of the domain is validated against upstream's RNG with that one name mapped back.
NVIDIA_ONLY = [("ssidSize=", "ssidsize=")]


def nvidia_check(label, g, logdir):
    path = os.path.join(logdir, "libvirt-nvidia.xml")
    if g.get("xml_nvidia_rc") is None:
        return
    if g.get("xml_nvidia_rc") != 0 or not os.path.exists(path):
        emit(False, label, "vsmmu libvirt-xml --dialect nvidia", "exit %s: %s" % (g.get("xml_nvidia_rc"), g.get("xml_nvidia_err", "").strip()))
        return
    text = open(path).read()
    mapped = text
    for a, b in NVIDIA_ONLY:
        mapped = mapped.replace(a, b)
    mp = os.path.join(logdir, "libvirt-nvidia-mapped.xml")
    open(mp, "w").write(mapped)
    p = subprocess.run(["xmllint", "--noout", "--relaxng", LIBVIRT_RNG, mp], capture_output=True, text=True, timeout=60)
    err = (p.stderr or "").strip().splitlines()
    differs = sum(text.count(a) for a, _ in NVIDIA_ONLY)
    emit(p.returncode == 0, label, "(c) libvirt-xml --dialect nvidia validates (upstream %s domain.rng, %d nvidia-only attribute(s) mapped)"
         % (M.get("libvirt_version", "?"), differs),
         "xmllint --relaxng: ok" if p.returncode == 0 else " / ".join(err[-3:]))


def nvidia_bites(logdir):
    """The dialects really differ: upstream's RNG refuses the nvidia spelling as written."""
    path = os.path.join(logdir, "libvirt-nvidia.xml")
    if not os.path.exists(path) or "ssidSize=" not in open(path).read():
        return
    p = subprocess.run(["xmllint", "--noout", "--relaxng", LIBVIRT_RNG, path], capture_output=True, text=True, timeout=60)
    emit(p.returncode != 0, "-", "(c) upstream domain.rng refuses the nvidia dialect's <driver ssidSize=> as written",
         "xmllint exit %d" % p.returncode)


def schema_bites(logdir):
    """The schema check is worth something: the first smmuv3 <driver> with an attribute
    libvirt does not have (the identifier vsmmu allocates) must fail to validate."""
    path = os.path.join(logdir, "libvirt.xml")
    try:
        text = open(path).read()
    except OSError:
        return
    if "<driver pciBus=" not in text:
        return
    bad = os.path.join(logdir, "libvirt-invented.xml")
    open(bad, "w").write(text.replace("<driver pciBus=", "<driver identifier='1' pciBus=", 1))
    p = subprocess.run(["xmllint", "--noout", "--relaxng", LIBVIRT_RNG, bad], capture_output=True, text=True, timeout=60)
    emit(p.returncode != 0, "-", "(c) libvirt's domain.rng refuses an invented <iommu><driver identifier=>",
         "xmllint exit %d" % p.returncode)


def name_fd_is_refused():
    """Why --fds writes placeholders that launch resolves: on the command line QEMU's
    monitor_fd_param takes a number only (a name needs a monitor's getfd)."""
    ok, err = start_once([QEMU, "-machine", "virt,accel=tcg", "-object", "iommufd,id=iommufd0,fd=vsmmu-vm1-iommufd"])
    emit(not ok and "Invalid file descriptor number" in err, "-", "(c) a name is no fd on QEMU's command line (placeholders must become numbers)",
         err.splitlines()[-1] if err else "it started")


# --------------------------------------------------------------------------- main

def main():
    global QEMU_VERSION
    v = subprocess.run([QEMU, "--version"], capture_output=True, text=True).stdout.splitlines()
    QEMU_VERSION = v[0].replace("QEMU emulator version ", "QEMU ") if v else "QEMU ?"
    m = re.search(r"(\d+)\.(\d+)\.(\d+)", QEMU_VERSION)
    ver = tuple(int(x) for x in m.groups()) if m else (0, 0, 0)
    print("qemu-check: %s, firmware %s, placeholder %s" % (QEMU_VERSION, M.get("firmware_version", FIRMWARE), PLACEHOLDER), flush=True)
    emit(ver >= (11, 0, 0), "-", "QEMU >= 11.0 (accelerated SMMUv3)", QEMU_VERSION)
    ok, props, err = qemu_help("-device", "arm-smmuv3")
    want = ["accel", "ats", "ril", "ssidsize", "oas", "cmdqv", "identifier", "primary-bus"]
    have = [p for p in want if p in props]
    miss = [p for p in want if p not in props]
    emit(not miss, "-", "arm-smmuv3 properties of this QEMU",
         ("has %s" % " ".join(have)) + ("; MISSING %s" % " ".join(miss) if miss else ""))

    name_fd_is_refused()
    for g in M["guests"]:
        label = g["label"]
        name = g["guest"]
        logdir = os.path.join(WORK, g["dir"])
        if g["args_rc"] != 0:
            emit(False, label, "vsmmu qemu-args", "exit %d: %s" % (g["args_rc"], g.get("args_err", "").strip()))
            continue
        try:
            j = json.load(open(os.path.join(logdir, "qemu-args.json")))
        except Exception as e:  # noqa
            emit(False, label, "vsmmu qemu-args", "output is not JSON: %s" % e)
            continue
        emit(True, label, "vsmmu qemu-args --format json", "%d args, %d machine args" % (len(j["args"]), len(j.get("machine", []))))
        platform = j.get("platform", "aarch64-virt")
        # (c) the hand-over forms (fds, argv) and the libvirt domain
        handover_checks(label, g, logdir, platform)
        libvirt_check(label, g, logdir)
        if platform != "aarch64-virt":
            continue  # (a) and (b) are the aarch64 virt checks
        layout = None
        if g["plan_rc"] == 0:
            try:
                layout = plan_layout(json.load(open(os.path.join(logdir, "plan.json"))), name)
            except Exception:  # noqa
                layout = None
        emit(layout is not None, label, "vsmmu plan --format json has layout for %s" % name,
             "" if layout is not None else "exit %d %s" % (g["plan_rc"], g.get("plan_err", "").strip()))
        mach = parse_args(j.get("machine", []))
        opts = parse_args(j["args"])
        # (a) static
        static_check(label, mach + opts)
        mach_tcg, mch = tcg_machine(mach)
        for c in mch:
            note(label, "changed for TCG: " + c)
        forms = tcg_form(opts)
        for o, n, ch in forms:
            for c in ch:
                note(label, "changed for TCG: " + c)
        # (a) verbatim starts
        verbatim_starts(label, mach_tcg, forms)
        # predictions and their agreement with the plan
        pxb, sec, pred, problems = predict(label, forms)
        pd = {d["name"]: d for d in (layout or {}).get("devices", [])}
        disagree = []
        for did, (b, s, f) in sorted(pred.items()):
            d = pd.get(did)
            if d is None or parse_guest_addr(d.get("guestAddress")) != (b, s, f) or plan_vsid(d) != (b << 8 | s << 3 | f):
                disagree.append("%s args->%s plan->%s/%s" % (did, fmt_addr(b, s, f), d and d.get("guestAddress"), d and d.get("vsid")))
        missing = sorted(set(pd) - set(pred))
        if missing:
            disagree.append("plan devices without a vfio-pci in the args: %s" % " ".join(missing))
        emit(not problems and not disagree, label, "(b) predictions from the args agree with the plan layout",
             "; ".join(problems + disagree) if (problems or disagree) else
             " ".join("%s=%s" % (k, fmt_addr(*v)) for k, v in sorted(pred.items())))
        # (b) boot
        boot(label, mach_tcg, forms, pxb, sec, pred, layout, logdir)

    if M["guests"]:
        schema_bites(os.path.join(WORK, M["guests"][0]["dir"]))
        nvidia_bites(os.path.join(WORK, M["guests"][0]["dir"]))
    for g in M.get("libvirt_only", []):
        libvirt_check(g["label"], g, os.path.join(WORK, g["dir"]))

    if M.get("t0"):
        print("qemu-check: took %ds in all" % (time.time() - M["t0"]), flush=True)
    print("qemu-check: %d passed, %d failed" % (passed, failed), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
