# -*- coding: utf-8 -*-
# Shared by the vsmmu.vsmmu modules: how to call the vsmmu binary and how to read its errors.

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import json
import re

# `FILE:LINE:COL: error: ...` (a topology error) or a bare `error: ...` (anything else).
_ERROR = re.compile(r'^(?:(?P<file>\S(?:.*?\S)?):(?P<line>\d+):(?P<column>\d+): )?error: (?P<message>.*)$')
_HINT = re.compile(r'^\s*hint: (?P<hint>.*)$')
_ROLLED_BACK = re.compile(r'^rolled back: (?P<what>.*)$')


def vsmmu_binary(module, binary):
    """The vsmmu executable: a path as given, or a name looked up on PATH (fails the task if absent)."""
    if '/' in binary:
        return binary
    return module.get_bin_path(binary, required=True)


def connection_args(host_file=None, state_dir=None, socket=None):
    """The options every kernel-facing vsmmu command takes, in the order vsmmu documents them."""
    args = []
    if host_file:
        args += ['--host', host_file]
    if state_dir:
        args += ['--state-dir', state_dir]
    if socket:
        args += ['--socket', socket]
    return args


def parse_errors(stderr):
    """vsmmu's diagnostics as a list of dicts (file, line, column, message, hint) in the order printed."""
    errors = []
    for raw in (stderr or '').splitlines():
        m = _ERROR.match(raw)
        if m:
            e = {'message': m.group('message'), 'hint': None, 'file': m.group('file'),
                 'line': None, 'column': None, 'text': raw.strip()}
            if m.group('line'):
                e['line'] = int(m.group('line'))
                e['column'] = int(m.group('column'))
            errors.append(e)
            continue
        m = _HINT.match(raw)
        if m and errors and errors[-1]['hint'] is None:
            errors[-1]['hint'] = m.group('hint')
            continue
        m = _ROLLED_BACK.match(raw)
        if m and errors:
            errors[-1].setdefault('rolled_back', []).append(m.group('what'))
    return errors


def error_message(stderr, fallback):
    """One `msg`: each error line as vsmmu printed it (FILE:LINE:COL first), each followed by its hint."""
    lines = []
    for e in parse_errors(stderr):
        lines.append(e['text'])
        if e['hint']:
            lines.append('hint: ' + e['hint'])
        for r in e.get('rolled_back', []):
            lines.append('rolled back: ' + r)
    if not lines:
        tail = [l for l in (stderr or '').splitlines() if l.strip()]
        lines = tail[-3:] or [fallback]
    return '\n'.join(lines)


def run_command(module, argv, ok_codes=(0,)):
    """Runs vsmmu; on an exit status outside ok_codes fails the task with vsmmu's own error lines. Returns (rc, stdout)."""
    rc, out, err = module.run_command(argv, environ_update={'LC_ALL': 'C'})
    if rc not in ok_codes:
        module.fail_json(msg=error_message(err, '%s exited with status %d' % (argv[1], rc)),
                         errors=parse_errors(err), rc=rc, stdout=out, stderr=err, cmd=argv)
    return rc, out


def run_vsmmu(module, argv):
    """Runs vsmmu (exit status 0 or the task fails); returns what it printed."""
    return run_command(module, argv)[1]


def run_json(module, argv, ok_codes=(0,)):
    """Runs a vsmmu command that prints one JSON document; returns (rc, document)."""
    rc, out = run_command(module, argv, ok_codes)
    try:
        return rc, json.loads(out)
    except ValueError as e:
        module.fail_json(msg='vsmmu %s did not print JSON: %s' % (argv[1], e), rc=rc, stdout=out, cmd=argv)
        raise  # not reached: fail_json exits


def json_document(module, argv):
    """Runs a vsmmu command that prints one JSON document (exit status 0 or the task fails)."""
    return run_json(module, argv)[1]
