# Sourced by the host-side scenarios in scenarios/ (not a scenario itself).
# lab-arm64.sh runs each scenario once per boot, with:
#   VSMMU_REMOTE  unix:<QEMU socket of the guest's org.vsmmu.remote port>
#   LAB_BOOT      the boot's name (acpi, acpi-canwbs, s1only)
#   LAB_EXPECT    what the guest's SMMU allows: viommu (nesting + CANWBS: the vIOMMU gate is
#                 open), no-coherent (nesting, gate closed), no-nesting (stage 1 only)
#   VSMMU         the host vsmmu binary;  LAB_WORK  a fresh directory for this scenario
#   LAB_DIR       lab-arm64/;  LAB_PCI_ID  VENDOR:DEVICE of the guest's test device (edu)
# A scenario prints "LAB-CHECK PASS|FAIL <scenario>-<check>" lines (lab-arm64.sh adds the
# boot) and "LAB-SKIP ..." when it does not apply to the boot; it exits non-zero iff a
# check failed. Only one client can talk to the executor at a time (QEMU's socket accepts
# one connection): stop the agent before any other `--remote` call.
set -u
: "${VSMMU:?}" "${VSMMU_REMOTE:?}" "${LAB_BOOT:?}" "${LAB_EXPECT:?}" "${LAB_WORK:?}"
LAB_DIR=${LAB_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
LAB_PCI_ID=${LAB_PCI_ID:-1234:11e8}
SCEN=${SCEN:-$(basename "$0")}
W=$LAB_WORK
mkdir -p "$W"
export HOME=$W XDG_STATE_HOME=$W/xdg
FAILS=0

check() { # check NAME CMD...: one LAB-CHECK line
	local name=$1; shift
	if "$@"; then echo "LAB-CHECK PASS $SCEN-$name"; else echo "LAB-CHECK FAIL $SCEN-$name"; FAILS=$((FAILS + 1)); fi
}
info() { echo "LAB-INFO $SCEN: $*"; }
skip() { echo "LAB-SKIP $SCEN on $LAB_BOOT (LAB_EXPECT=$LAB_EXPECT): $*"; exit 0; }
finish() { [ "$FAILS" = 0 ]; exit $?; }
show() { sed "s/^/  $1: /" "$2"; } # show TAG FILE: into the scenario log

remote() { python3 "$LAB_DIR/remote.py" "$VSMMU_REMOTE" "$@"; }
edu_bdf() { remote find-dev "0x${LAB_PCI_ID%%:*}" "0x${LAB_PCI_ID#*:}"; }
driver_is() { [ "$(remote driver "$1")" = "$2" ]; } # driver_is BDF NAME|none
has() { grep -qF -- "$2" "$1"; }                    # has FILE TEXT
rc_is() { [ "$1" = "$2" ]; }

jget() { # jget FILE PYEXPR: evaluate PYEXPR over the JSON document d (and helpers dev/iommu)
	python3 - "$1" "$2" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
def dev(addr):
    return next((p for p in d.get("pciDevices", []) if p.get("address") == addr), None)
def iommu(name):
    return next((i for i in d.get("iommus", []) if i.get("name") == name), None)
v = eval(sys.argv[2])
print(json.dumps(v) if not isinstance(v, str) else v)
PY
}

# host_bound BDF OUT [FORMAT]: `vsmmu host --remote` with the device bound to vfio-pci (the
# SMMU's registers and the nesting/vIOMMU probes need a bound device), then the device goes
# back to no driver. Returns vsmmu's exit code.
host_bound() {
	local bdf=$1 out=$2 fmt=${3:-yaml} rc=0
	[ "$(remote bind-vfio "$bdf")" = vfio-pci ] || { echo "host_bound: $bdf did not bind to vfio-pci" >&2; return 97; }
	"$VSMMU" host --remote "$VSMMU_REMOTE" --format "$fmt" >"$out" 2>"$out.err" || rc=$?
	[ "$(remote unbind "$bdf")" = none ] || { echo "host_bound: $bdf did not unbind" >&2; return 98; }
	return $rc
}

AGENT_PID=
agent_start() { # agent_start: vsmmu agent --remote in the background, until "ready"
	rm -rf "$W/agent-state" "$W/agent.sock"
	"$VSMMU" agent --remote "$VSMMU_REMOTE" --socket "$W/agent.sock" --state-dir "$W/agent-state" \
		--reconcile-interval 0 >"$W/agent.log" 2>&1 &
	AGENT_PID=$!
	local i
	for i in $(seq 1 150); do
		grep -q ready "$W/agent.log" 2>/dev/null && return 0
		kill -0 "$AGENT_PID" 2>/dev/null || break
		sleep 0.2
	done
	return 1
}
agent_stop() { # the agent's connection ends, so the executor closes whatever it still holds
	[ -n "$AGENT_PID" ] || return 0
	kill "$AGENT_PID" 2>/dev/null || true
	local i
	for i in $(seq 1 50); do kill -0 "$AGENT_PID" 2>/dev/null || break; sleep 0.2; done
	kill -9 "$AGENT_PID" 2>/dev/null || true
	wait "$AGENT_PID" 2>/dev/null || true
	AGENT_PID=
	sleep 0.5 # let the guest see the disconnect before the next client connects
}
trap agent_stop EXIT
