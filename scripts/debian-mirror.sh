#!/usr/bin/env bash
# Prints the Debian archive URI this machine's apt already uses (deb822 *.sources first,
# then sources.list), so the project never names a mirror itself. Sourced or run:
#   MIRROR=$(bash scripts/debian-mirror.sh) || exit 1
# $1 (optional): a URI to use instead (the scripts' *_MIRROR overrides).
debian_mirror() {
	local m=${1:-}
	[ -n "$m" ] || m=$(awk '$1=="URIs:" { for (i=2;i<=NF;i++) if ($i ~ /^[a-z+]+:\/\/.*\/debian\/?$/) { sub(/\/$/, "", $i); print $i; exit } }' \
		/etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
	[ -n "$m" ] || m=$(awk '$1=="deb" { for (i=2;i<=NF;i++) if ($i ~ /^[a-z+]+:\/\/.*\/debian\/?$/) { sub(/\/$/, "", $i); print $i; exit } }' \
		/etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -1)
	if [ -z "$m" ]; then
		echo "no Debian archive (a URI ending in /debian) in this machine's apt sources; set the mirror variable" >&2
		return 1
	fi
	printf '%s\n' "$m"
}
if [ "${BASH_SOURCE[0]}" = "$0" ]; then debian_mirror "$@"; fi
