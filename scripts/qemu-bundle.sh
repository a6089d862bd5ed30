#!/usr/bin/env bash
# Makes a self-contained QEMU for a lab guest's initramfs out of an unpacked Debian tree
# (scripts/debian-closure.sh): the binary, the shared objects its NEEDED entries name
# (recursively) and its dynamic loader, the data files asked for, and a wrapper that runs
# it through that loader, so it needs nothing from the guest's own /lib:
#
#   bash scripts/qemu-bundle.sh ROOT BINARY DEST PREFIX READELF [SHARE-FILE...]
#
# DEST/libexec/BINARY (the real one), DEST/lib/* (its closure), DEST/share/qemu/* (the
# data files named, symlinks resolved), and DEST/bin/BINARY, a /bin/sh wrapper that `exec`s
# PREFIX/lib/LOADER --library-path PREFIX/lib PREFIX/libexec/BINARY -L PREFIX/share/qemu
# "$@" (exec: the VMM keeps the wrapper's pid and fds). PREFIX is where DEST sits in the
# guest (e.g. /opt/qemu). SHARE-FILEs are paths under ROOT/usr/share (seabios/bios-256k.bin),
# all put into DEST/share/qemu. Prints "bundle: N libraries, M MB".
set -euo pipefail
[ $# -ge 5 ] || { echo "usage: qemu-bundle.sh ROOT BINARY DEST PREFIX READELF [SHARE-FILE...]" >&2; exit 2; }
root=$1 bin=$2 dest=$3 prefix=$4 readelf=$5; shift 5
rm -rf "$dest"; mkdir -p "$dest/bin" "$dest/libexec" "$dest/lib" "$dest/share/qemu"
cp "$root/usr/bin/$bin" "$dest/libexec/$bin"
interp=$("$readelf" -l "$root/usr/bin/$bin" | sed -n 's/.*Requesting program interpreter: \(.*\)\]/\1/p')
[ -n "$interp" ] || { echo "qemu-bundle: $bin has no program interpreter" >&2; exit 1; }
loader=${interp##*/}
found=
for d in usr/lib usr/lib64 "$(dirname "$interp" | sed 's|^/||')" "usr$(dirname "$interp")"; do
	[ -e "$root/$d/$loader" ] && { cp -L "$root/$d/$loader" "$dest/lib/$loader"; found=1; break; }
done
[ -n "$found" ] || { echo "qemu-bundle: no $loader in $root" >&2; exit 1; }
libdirs=$(cd "$root" && ls -d usr/lib/*-linux-gnu usr/lib 2>/dev/null)
declare -A seen
todo=("$root/usr/bin/$bin")
while ((${#todo[@]})); do
	f=${todo[0]}; todo=("${todo[@]:1}")
	for n in $("$readelf" -d "$f" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'); do
		[ -n "${seen[$n]:-}" ] && continue
		seen[$n]=1
		p=
		for d in $libdirs; do [ -e "$root/$d/$n" ] && { p=$root/$d/$n; break; }; done
		[ -n "$p" ] || { echo "qemu-bundle: $n (needed by $f) is not in $root" >&2; exit 1; }
		cp -L "$p" "$dest/lib/$n"
		todo+=("$(readlink -f "$p")")
	done
done
# data files are often symlinks to absolute paths (/usr/share/seabios/...): resolved in ROOT
inroot() { local p=$1 t n=0; while [ -L "$p" ] && [ $n -lt 10 ]; do t=$(readlink "$p"); case $t in /*) p=$root$t ;; *) p=$(dirname "$p")/$t ;; esac; n=$((n + 1)); done; echo "$p"; }
for s in "$@"; do cp "$(inroot "$root/usr/share/$s")" "$dest/share/qemu/${s##*/}"; done
cat >"$dest/bin/$bin" <<EOT
#!/bin/sh
# $bin from Debian, through its own loader and libraries (scripts/qemu-bundle.sh)
exec $prefix/lib/$loader --library-path $prefix/lib $prefix/libexec/$bin -L $prefix/share/qemu "\$@"
EOT
chmod 755 "$dest/bin/$bin"
echo "bundle: ${#seen[@]} libraries, $(du -sm "$dest" | cut -f1) MB"
