#!/usr/bin/env bash
# The fleet test: the collection vsmmu.vsmmu, built and installed as ansible-galaxy would,
# drives two inventory hosts (local connections, each its own simulated host and state
# directory) through ansible-core from PyPI. Prints `ansible: N passed, M failed`.
#
#   VSMMU_BIN=.build/debug/vsmmu bash contrib/ansible/tests/run.sh   (VSMMU_ANSIBLE_KEEP=1 keeps the work directory)
#
# ansible-core is pinned and kept in a venv under ~/.cache (about a minute to install cold).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
ANSIBLE_CORE_VERSION=2.19.14
venv=${XDG_CACHE_HOME:-$HOME/.cache}/vsmmu-ansible-$ANSIBLE_CORE_VERSION
vsmmu=${VSMMU_BIN:-$(cd "$repo" && swift build --show-bin-path)/vsmmu}
vsmmu=$(cd "$(dirname "$vsmmu")" && pwd)/$(basename "$vsmmu")
[ -x "$vsmmu" ] || { echo "ansible: no vsmmu binary at $vsmmu (build it first)"; echo "ansible: 0 passed, 1 failed"; exit 1; }

# (The version is read whole: grep -q would end the pipe early and fail it under pipefail.)
if [[ "$("$venv/bin/ansible-playbook" --version 2>/dev/null)" != *"core $ANSIBLE_CORE_VERSION"* ]]; then
  echo "ansible: installing ansible-core $ANSIBLE_CORE_VERSION into $venv"
  rm -rf "$venv"
  # ansible-core 2.19 needs Python >= 3.11 on the controller.
  python3 -m venv "$venv" || { echo "ansible: python3 -m venv failed ($(python3 --version 2>&1))"; echo "ansible: 0 passed, 1 failed"; exit 1; }
  "$venv/bin/pip" install --quiet --disable-pip-version-check "ansible-core==$ANSIBLE_CORE_VERSION" \
    || { echo "ansible: could not install ansible-core $ANSIBLE_CORE_VERSION from the package index: test not run"; rm -rf "$venv"; exit 75; }
fi

work=$(mktemp -d /tmp/vsmmu-ansible.XXXXXX)
agent_pid=
cleanup() {
  [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null
  if [ -n "${VSMMU_ANSIBLE_KEEP:-}" ]; then echo "ansible: kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
log=$work/log
export ANSIBLE_HOME=$work/ansible-home ANSIBLE_LOCAL_TEMP=$work/ansible-tmp ANSIBLE_COLLECTIONS_PATH=$work/collections
export ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0 ANSIBLE_RETRY_FILES_ENABLED=0 ANSIBLE_DEPRECATION_WARNINGS=0
# No ansible.cfg from the caller's directory or home: only what is set here.
printf '[defaults]\n' >"$work/ansible.cfg"
export ANSIBLE_CONFIG=$work/ansible.cfg

passed=0 failed=0
ok() { passed=$((passed + 1)); echo "  ok    $1"; }
fail() { failed=$((failed + 1)); echo "  FAIL  $1"; [ -n "${2:-}" ] && sed 's/^/        | /' "$2" | tail -15; }
check() { local what=$1; shift; if "$@"; then ok "$what"; else fail "$what" "$out"; fi; }

# play NAME PLAYBOOK [ansible-playbook args]: runs it, output in $work/NAME.out, exit status in $rc.
play() {
  local name=$1 book=$2; shift 2
  out=$work/$name.out
  "$venv/bin/ansible-playbook" -i "$here/fleet/inventory.yml" "$here/fleet/$book" \
    -e "vsmmu_repo=$repo" -e "vsmmu_work=$work" -e "vsmmu_binary=$vsmmu" -e "vsmmu_state_root=${state_root:-$work/state}" \
    "$@" >"$out" 2>&1
  rc=$?
}
# recap HOST KEY: that host's KEY= in the last run's PLAY RECAP.
recap() { sed -n "s/^$1 *:.* $2=\([0-9]*\).*/\1/p" "$out" | tail -1; }
changed_on_both() { [ "$rc" = 0 ] && [ "$(recap node1 changed)" = "$1" ] && [ "$(recap node2 changed)" = "$1" ]; }
# Every file's hash and every path beneath both state directories (which must exist and hold files).
snapshot() { [ -n "$(find "$1"/node1 "$1"/node2 -type f)" ] && (cd "$1" && find . -type f -exec sha256sum {} + | sort && find . | sort); }

echo "ansible: ansible-core $ANSIBLE_CORE_VERSION, vsmmu $vsmmu, work $work"

# The collection as it ships: built (contrib/systemd's files copied in through the role's
# links) and installed, offline.
"$venv/bin/ansible-galaxy" collection build --output-path "$work" "$here/.." >"$work/build.out" 2>&1 \
  && "$venv/bin/ansible-galaxy" collection install --offline -p "$work/collections" "$work"/vsmmu-vsmmu-*.tar.gz >>"$work/build.out" 2>&1
rc=$?; out=$work/build.out
check "ansible-galaxy builds and installs vsmmu.vsmmu" [ "$rc" = 0 ]
installed=$work/collections/ansible_collections/vsmmu/vsmmu
check "the built role carries contrib/systemd's unit and tmpfiles rule byte for byte" \
  cmp -s "$installed/roles/agent/files/vsmmu.service" "$repo/contrib/systemd/vsmmu.service"
check "the installed modules document themselves (ansible-doc)" \
  bash -c "'$venv/bin/ansible-doc' vsmmu.vsmmu.topology vsmmu.vsmmu.host_info >'$out' 2>&1 && grep -q 'state_dir' '$out' && grep -q 'probe_driverless' '$out'"

sed '/name: nic0/,+1d' "$repo/examples/devices-without-vsmmu.yaml" >"$work/node2-one-device.yaml"
# node1's other topology is a new version of its own (the same metadata.name: a topology owns
# its guests, and another one may not take their devices): one guest on one vSMMU instead.
sed 's/^  name: rack12-node03$/  name: rack12-node04/' "$repo/examples/one-guest-one-vsmmu.yaml" >"$work/node1-one-guest.yaml"
cat >"$work/bad-topology.yaml" <<'EOF'
apiVersion: vsmmu/v1
kind: Topology
metadata:
  name: broken
guests:
  - name: vm1
    memory:
      - { name: ram0, guestAddress: 0x40000000, size: 1GiB, backing: memfd }
    bogus: 3
EOF

# Check mode before anything exists: a change is reported, no state directory is created.
state_root=$work/fresh play check-fresh site.yml --check
check "check mode on fresh hosts reports changed on both" changed_on_both 1
check "check mode on fresh hosts creates no state directory" [ ! -e "$work/fresh" ]

play facts-before facts.yml -e phase=before
check "host_info gathers both hosts' descriptions as facts" [ "$rc" = 0 ]

play apply-1 site.yml
check "first run: changed on both hosts" changed_on_both 1
play facts-applied facts.yml -e phase=applied
check "the devices moved to vfio-pci on both hosts" \
  bash -c "grep -q vfio-pci '$work/node1-drivers-applied.json' && grep -q vfio-pci '$work/node2-drivers-applied.json' && ! cmp -s '$work/node1-drivers-before.json' '$work/node1-drivers-applied.json'"

play apply-2 site.yml
check "second run: changed=0 on both hosts (idempotent)" changed_on_both 0

snapshot "$work/state" >"$work/before.sha" || echo "missing" >"$work/before.sha"
play check-alt site.yml --check --diff -e vsmmu_use_alt=true
check "check mode with another topology reports changed on both" changed_on_both 1
check "diff mode shows the text plan" grep -q 'Plan: [1-9][0-9]* to add' "$out"
play check-absent site.yml --check --diff -e vsmmu_state=absent
check "check mode with state=absent reports changed on both" changed_on_both 1
check "check mode's diff names what absent would release" grep -q -- '- guest train0' "$out"
snapshot "$work/state" >"$work/after.sha" || echo "missing too" >"$work/after.sha"
out=$work/after.sha
check "check mode left both state directories byte-identical" cmp -s "$work/before.sha" "$work/after.sha"

play bad bad.yml
check "a bad topology (src, then inline content) fails on both hosts naming FILE:LINE:COL and the hint" \
  bash -c "[ $rc = 0 ] && grep -q 'bad-topology.yaml:9:5: error: unknown key' '$out' && grep -q '^node1 .*rescued=2' '$out' && grep -q '^node2 .*rescued=2' '$out'"

play absent-1 site.yml -e vsmmu_state=absent
check "state=absent: changed on both hosts" changed_on_both 1
play absent-2 site.yml -e vsmmu_state=absent
check "state=absent again: changed=0 on both hosts" changed_on_both 0
play facts-after facts.yml -e phase=after
check "state=absent gave every device back to its driver on node1" cmp -s "$work/node1-drivers-before.json" "$work/node1-drivers-after.json"
check "state=absent gave every device back to its driver on node2" cmp -s "$work/node2-drivers-before.json" "$work/node2-drivers-after.json"

# The agent role, with systemd left out: the agent runs as the unit's ExecStart would, over a simulated host.
"$vsmmu" agent --host "$repo/examples/hosts/grace-2smmu-cmdqv.yaml" --socket "$work/agent.sock" \
  --state-dir "$work/agent-state" --reconcile fix >"$work/agent.out" 2>&1 &
agent_pid=$!
play role-1 role.yml
check "agent role: installs and applies the topology through the agent's socket" \
  bash -c "[ $rc = 0 ] && [ \"\$(sed -n 's/^node1 *:.* changed=\([0-9]*\).*/\1/p' '$out')\" -ge 1 ]"
check "agent role: the unit, tmpfiles rule and binary are installed as shipped" \
  bash -c "cmp -s '$work/root/etc/systemd/system/vsmmu.service' '$repo/contrib/systemd/vsmmu.service' && cmp -s '$work/root/usr/lib/tmpfiles.d/vsmmu.conf' '$repo/contrib/systemd/vsmmu.conf' && cmp -s '$work/root/usr/bin/vsmmu' '$vsmmu'"
out=$work/show.out
check "agent role: the agent holds the topology's guest" \
  bash -c "'$vsmmu' show --socket '$work/agent.sock' --format json >'$out' 2>&1 && grep -q '\"vm1\"' '$out'"
play role-2 role.yml
check "agent role: second run changed=0" bash -c "[ $rc = 0 ] && [ \"\$(sed -n 's/^node1 *:.* changed=\([0-9]*\).*/\1/p' '$out')\" = 0 ]"

echo "ansible: $passed passed, $failed failed"
[ "$failed" = 0 ]
