#!/usr/bin/python
# -*- coding: utf-8 -*-

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

DOCUMENTATION = r'''
---
module: topology
short_description: Apply or destroy a vsmmu topology (guests, passthrough devices, accelerated vSMMUs)
version_added: "0.1.0"
description:
  - Runs C(vsmmu plan --format json --detailed-exitcode) for the topology, and when the plan is not
    empty, C(vsmmu apply --auto-approve) (O(state=present)) or C(vsmmu destroy --auto-approve)
    (O(state=absent)). A converged host is left untouched and the task reports C(changed=false).
  - In check mode only the plan runs; the state directory is left byte-identical.
  - In diff mode the text plan (the one C(vsmmu plan) prints) is returned as the diff.
  - "When vsmmu refuses the topology the task fails and C(msg) holds vsmmu's error lines,
    each C(FILE:LINE:COL: error: ...) followed by its C(hint: ...)."
author:
  - vsmmu developers (!UNKNOWN)
requirements:
  - the vsmmu binary on the target (see O(binary))
options:
  src:
    description:
      - Path of the topology file on the target. Error messages name it as C(FILE:LINE:COL).
      - Exactly one of O(src) and O(content) is required.
    type: path
  content:
    description:
      - The topology as inline YAML text. It is written to a temporary file named C(topology.yaml),
        which is the FILE that error messages name, and removed afterwards.
    type: str
  state:
    description:
      - V(present) applies the topology; V(absent) tears down its guests and gives every device
        back to the driver it had before.
    type: str
    choices: [present, absent]
    default: present
  host_file:
    description:
      - A host description (kind Host) to run against a simulated host (C(vsmmu --host)).
        Omit on a live host.
    type: path
  state_dir:
    description:
      - The state directory (C(vsmmu --state-dir)). On a simulated host the simulated kernel lives
        under it too. vsmmu's default is C(/var/lib/vsmmu) for root.
    type: path
  socket:
    description:
      - The agent's socket (C(vsmmu --socket)), for example C(/run/vsmmu/agent.sock) when the
        agent runs under systemd. Without it and with O(host_file), vsmmu runs in-process.
    type: path
  binary:
    description:
      - The vsmmu executable, a path or a name looked up on PATH.
    type: str
    default: vsmmu
attributes:
  check_mode:
    description: Only C(vsmmu plan) runs; nothing on the host or in the state directory changes.
    support: full
  diff_mode:
    description: The diff is the text plan, as C(vsmmu plan) prints it.
    support: full
notes:
  - In check mode with a O(host_file) and a O(state_dir) that does not exist yet, the plan is made
    in a temporary state directory so that none is created.
  - O(state=absent) in check mode reports a change when the state directory holds any of the
    topology's guests, or any of its devices still bound for vsmmu (C(vsmmu show)).
'''

EXAMPLES = r'''
- name: Apply the topology on a live host through the agent
  vsmmu.vsmmu.topology:
    src: /etc/vsmmu/topology.yaml
    socket: /run/vsmmu/agent.sock

- name: Apply an inline topology on a simulated host
  vsmmu.vsmmu.topology:
    host_file: /srv/vsmmu/hosts/grace.yaml
    state_dir: /var/tmp/vsmmu-sim
    content: |
      apiVersion: vsmmu/v1
      kind: Topology
      metadata: {name: node03}
      guests:
        - name: vm1
          memory: [{name: ram0, guestAddress: 0x40000000, size: 16GiB, backing: memfd}]
          vsmmus:
            - name: smmu0
              devices: [{name: gpu0, host: "0000:09:01.0"}]

- name: Give every device back to its driver
  vsmmu.vsmmu.topology:
    src: /etc/vsmmu/topology.yaml
    state: absent
    socket: /run/vsmmu/agent.sock
'''

RETURN = r'''
plan:
  description: The JSON plan (C(vsmmu plan --format json), formatVersion 1) made before any change.
  returned: always
  type: dict
  sample: {"formatVersion": 1, "summary": {"add": 5, "change": 0, "destroy": 0}, "changes": [], "operations": [], "layout": [], "guests": []}
summary:
  description: What the plan adds, changes and destroys (for V(absent), what the teardown destroys).
  returned: always
  type: dict
  sample: {"add": 5, "change": 0, "destroy": 0}
guests:
  description:
    - The lifecycle state of each of the topology's guests after the task (before it in check mode),
      V(prepared), V(running) or V(handed-over), with the pid of a running guest's VMM.
  returned: always
  type: list
  elements: dict
  sample: [{"name": "vm1", "state": "prepared"}]
destroyed:
  description: For V(absent), the guests and the device addresses the teardown released.
  returned: when state is absent
  type: dict
  sample: {"guests": ["vm1"], "devices": ["0000:09:01.0"]}
output:
  description: What C(vsmmu apply) or C(vsmmu destroy) printed on standard output (the plan and the result line).
  returned: when a change was made
  type: str
errors:
  description: vsmmu's errors, each with file, line, column (null when vsmmu named no place), message and hint.
  returned: failed
  type: list
  elements: dict
  sample: [{"file": "topology.yaml", "line": 5, "column": 5, "message": "unknown key 'bogus' in guests[0]", "hint": "known keys: name"}]
'''

import os
import shutil
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vsmmu.vsmmu.plugins.module_utils.vsmmu import (
    connection_args, json_document, run_json, run_vsmmu, vsmmu_binary)


def plan_is_empty(plan):
    s = plan.get('summary', {})
    return not (s.get('add') or s.get('change') or s.get('destroy') or plan.get('changes') or plan.get('operations'))


def held_by(plan, shown):
    """Of the topology's guests and devices, those the state directory holds (what destroy would release)."""
    held_guests = set(shown.get('guests', {}))
    bound = set(shown.get('bindings', {}))
    guests, devices = [], []
    for g in plan.get('layout', []):
        if g['guest'] in held_guests:
            guests.append(g['guest'])
        devices += [d['host'] for d in g.get('devices', []) if d['host'] in bound]
    return sorted(guests), sorted(set(devices))


def absent_text(guests, devices):
    lines = ['  - guest %s' % g for g in guests] + ['  - device %s (back to its original driver)' % d for d in devices]
    return 'vsmmu will make these changes:\n\n%s\n' % '\n'.join(lines) if lines else 'No changes.\n'


def main():
    module = AnsibleModule(
        argument_spec=dict(
            src=dict(type='path'),
            content=dict(type='str'),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            host_file=dict(type='path'),
            state_dir=dict(type='path'),
            socket=dict(type='path'),
            binary=dict(type='str', default='vsmmu'),
        ),
        mutually_exclusive=[('src', 'content')],
        required_one_of=[('src', 'content')],
        supports_check_mode=True,
    )
    p = module.params
    binary = vsmmu_binary(module, p['binary'])
    scratch = tempfile.mkdtemp(prefix='vsmmu-ansible-')
    try:
        topology = p['src']
        if p['content'] is not None:
            topology = os.path.join(scratch, 'topology.yaml')
            with open(topology, 'w') as f:
                f.write(p['content'])
        elif not os.path.isfile(topology):
            module.fail_json(msg='src %s: no such file on the target' % topology)

        state_dir = p['state_dir']
        # vsmmu creates a missing state directory (and a simulated kernel in it) even to plan:
        # in check mode plan in a throwaway one instead, which is the same empty host.
        if module.check_mode and p['host_file'] and not p['socket'] and state_dir and not os.path.exists(state_dir):
            state_dir = os.path.join(scratch, 'state')
        conn = connection_args(p['host_file'], state_dir, p['socket'])

        rc, plan = run_json(module, [binary, 'plan', topology] + conn + ['--format', 'json', '--detailed-exitcode'], ok_codes=(0, 2))
        result = dict(changed=False, plan=plan, summary=plan.get('summary', {}), guests=plan.get('guests', []))

        if p['state'] == 'present':
            result['changed'] = rc == 2 or not plan_is_empty(plan)
            if module._diff:
                text = run_vsmmu(module, [binary, 'plan', topology] + conn)
                result['diff'] = dict(prepared=text)
            if result['changed'] and not module.check_mode:
                out = run_vsmmu(module, [binary, 'apply', topology] + conn + ['--auto-approve'])
                result['output'] = out
                rc, after = run_json(module, [binary, 'plan', topology] + conn + ['--format', 'json', '--detailed-exitcode'], ok_codes=(0, 2))
                result['guests'] = after.get('guests', [])
                if rc == 2:
                    module.warn('vsmmu apply finished but the plan is still not empty: %s' % after.get('summary'))
        else:
            shown = json_document(module, [binary, 'show'] + conn + ['--format', 'json'])
            guests, devices = held_by(plan, shown)
            result['destroyed'] = dict(guests=guests, devices=devices)
            result['summary'] = dict(add=0, change=0, destroy=len(guests) + len(devices))
            result['changed'] = bool(guests or devices)
            text = absent_text(guests, devices)
            if result['changed'] and not module.check_mode:
                text = run_vsmmu(module, [binary, 'destroy', topology] + conn + ['--auto-approve'])
                result['output'] = text
                result['changed'] = not text.startswith('No changes.')
                after = json_document(module, [binary, 'plan', topology] + conn + ['--format', 'json'])
                result['guests'] = after.get('guests', [])
            if module._diff:
                result['diff'] = dict(prepared=text)
        module.exit_json(**result)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == '__main__':
    main()
