#!/usr/bin/env bash
# Unpacks Debian packages with their whole dependency closure (down to libc6) into a cache
# directory, for one architecture, without installing anything on this machine: a private
# apt configuration (own sources, lists, cache, and an EMPTY dpkg status, so apt resolves
# every dependency), `install --download-only`, then `dpkg-deb -x` of each .deb. The
# mirror is this machine's own (scripts/debian-mirror.sh). Grown from
# a recipe kept outside the repository (lab-arm64-kvm/2-fetch-qemu-arm64.sh).
#
#   bash scripts/debian-closure.sh ARCH DEST PKG...     # e.g. amd64 DIR qemu-system-x86
#
# DEST/root is the unpacked tree, DEST/debs.txt the .debs. DEST/.ready holds the key
# (arch, suites, packages, this script's hash): a second call with the same key does
# nothing. Environment: CLOSURE_SUITE (trixie), CLOSURE_TARGET (trixie-backports: the
# release packages are taken from when it has them), CLOSURE_MIRROR (default: apt's).
# Prints "closure: N debs, M MB, fetch Xs, unpack Ys" or "closure: cached".
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[ $# -ge 3 ] || { echo "usage: debian-closure.sh ARCH DEST PKG..." >&2; exit 2; }
arch=$1 dest=$2; shift 2
suite=${CLOSURE_SUITE:-trixie} target=${CLOSURE_TARGET:-trixie-backports}
key="closure v1 arch=$arch suite=$suite target=$target pkgs=$* script=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)"
if [ -f "$dest/.ready" ] && [ "$(cat "$dest/.ready")" = "$key" ]; then
	echo "closure: cached ($dest)"
	exit 0
fi
mirror=$(bash "$HERE/debian-mirror.sh" "${CLOSURE_MIRROR:-}")
rm -rf "$dest.new"
a=$dest.new/apt
mkdir -p "$a/lists/partial" "$a/cache/archives/partial" "$dest.new/root"
: >"$a/status"
kr=/usr/share/keyrings/debian-archive-keyring.gpg
{
	echo "deb [arch=$arch signed-by=$kr] $mirror $suite main"
	[ -z "$target" ] || [ "$target" = "$suite" ] || echo "deb [arch=$arch signed-by=$kr] $mirror $target main"
} >"$a/sources.list"
o=(-o "Dir::Etc::sourcelist=$a/sources.list" -o Dir::Etc::sourceparts=/dev/null
	-o Dir::Etc::preferences=/dev/null -o Dir::Etc::preferencesparts=/dev/null
	-o "Dir::State::Lists=$a/lists" -o "Dir::State::status=$a/status" -o "Dir::Cache=$a/cache"
	-o "Dir::State::extended_states=$a/extended_states"
	-o "APT::Architecture=$arch" -o "APT::Architectures::=$arch"
	-o APT::Install-Recommends=false -o APT::Get::Download-Only=true -o Debug::NoLocking=true
	-o Acquire::Check-Valid-Until=false)
t=$(date +%s.%N)
apt-get "${o[@]}" update -qq
apt-get "${o[@]}" -y ${target:+-t "$target"} install "$@" >"$dest.new/apt.log" 2>&1 ||
	{ tail -20 "$dest.new/apt.log" >&2; exit 1; }
t2=$(date +%s.%N)
for f in "$a"/cache/archives/*.deb; do dpkg-deb -x "$f" "$dest.new/root"; done
t3=$(date +%s.%N)
(cd "$a/cache/archives" && ls ./*.deb | sed 's|^\./||') >"$dest.new/debs.txt"
n=$(wc -l <"$dest.new/debs.txt") mb=$(du -sm "$a/cache/archives" | cut -f1)
rm -rf "$a"
echo "$key" >"$dest.new/.ready"
rm -rf "$dest"; mv "$dest.new" "$dest"
awk -v n="$n" -v mb="$mb" -v a="$t" -v b="$t2" -v c="$t3" 'BEGIN{printf "closure: %d debs, %d MB, fetch %.1fs, unpack %.1fs\n", n, mb, b-a, c-b}'
