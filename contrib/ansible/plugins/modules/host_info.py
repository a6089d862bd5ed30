#!/usr/bin/python
# -*- coding: utf-8 -*-

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

DOCUMENTATION = r'''
---
module: host_info
short_description: The vsmmu Host description of a target (IOMMUs, PCI devices, kernel) as facts
version_added: "0.1.0"
description:
  - Runs C(vsmmu host --format json) and returns the Host description (kind Host, the format
    C(vsmmu --host) takes) as the fact C(vsmmu_host).
  - On a live host vsmmu reads sysfs and asks the IOMMUs for their features through a device already
    bound to vfio-pci. It may also bind a driverless device to vfio-pci for a moment to probe its
    IOMMU; this module asks it not to unless O(probe_driverless=true), so that gathering facts
    never moves a device.
author:
  - vsmmu developers (!UNKNOWN)
requirements:
  - the vsmmu binary on the target (see O(binary))
options:
  host_file:
    description:
      - A host description (kind Host); describe that simulated host instead of the live one.
    type: path
  state_dir:
    description:
      - The state directory; on a simulated host its C(sim/host.yaml) is what is described once it exists.
    type: path
  remote:
    description:
      - Describe the kernel behind a vsmmu-remote executor (C(vsmmu host --remote unix:PATH)).
    type: str
  probe_driverless:
    description:
      - Let vsmmu bind a device that has no driver to vfio-pci to read its IOMMU's features, then give it back.
    type: bool
    default: false
  binary:
    description:
      - The vsmmu executable, a path or a name looked up on PATH.
    type: str
    default: vsmmu
attributes:
  check_mode:
    description: The module only reads; it runs the same in check mode.
    support: full
  diff_mode:
    description: Nothing changes, so there is no diff.
    support: none
'''

EXAMPLES = r'''
- name: Read the host's IOMMUs and devices
  vsmmu.vsmmu.host_info:

- name: Every GPU left on the NVIDIA driver
  ansible.builtin.debug:
    msg: "{{ ansible_facts.vsmmu_host.pciDevices | selectattr('driver', 'equalto', 'nvidia') | map(attribute='address') | list }}"

- name: A simulated host
  vsmmu.vsmmu.host_info:
    host_file: /srv/vsmmu/hosts/grace.yaml
    state_dir: /var/tmp/vsmmu-sim
'''

RETURN = r'''
ansible_facts:
  description: Facts added to the host.
  returned: always
  type: complex
  contains:
    vsmmu_host:
      description:
        - The Host description, as C(vsmmu host --format json) prints it (see C(vsmmu schema --kind host)).
      returned: always
      type: dict
      sample: {"apiVersion": "vsmmu/v1", "kind": "Host", "metadata": {"name": "grace-01"}, "kernel": {"release": "7.2.13"}, "iommus": [], "pciDevices": []}
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vsmmu.vsmmu.plugins.module_utils.vsmmu import connection_args, json_document, vsmmu_binary


def main():
    module = AnsibleModule(
        argument_spec=dict(
            host_file=dict(type='path'),
            state_dir=dict(type='path'),
            remote=dict(type='str'),
            probe_driverless=dict(type='bool', default=False),
            binary=dict(type='str', default='vsmmu'),
        ),
        supports_check_mode=True,
    )
    p = module.params
    argv = [vsmmu_binary(module, p['binary']), 'host'] + connection_args(p['host_file'], p['state_dir'])
    if p['remote']:
        argv += ['--remote', p['remote']]
    argv += ['--probe-driverless' if p['probe_driverless'] else '--no-probe-driverless', '--format', 'json']
    host = json_document(module, argv)
    module.exit_json(changed=False, ansible_facts=dict(vsmmu_host=host))


if __name__ == '__main__':
    main()
