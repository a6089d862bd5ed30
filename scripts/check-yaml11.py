#!/usr/bin/env python3
"""Loads YAML with a YAML 1.1 reader (PyYAML, as Ansible does) and checks that every PCI
address (the values of `host` and `address` keys) comes back as the string it is: an
unquoted 0000:09:01.0 is a sexagesimal number to YAML 1.1 (541.0).

Arguments: files; a Markdown file contributes its ```yaml blocks; `-` reads standard input.
Prints one FAIL line per bad value; exits 1 if there is any."""
import re
import sys
import yaml

failures = []


def walk(node, where):
    if isinstance(node, dict):
        for k, v in node.items():
            if isinstance(k, float):
                failures.append(f"FAIL {where}: key read as the number {k!r} (an unquoted PCI address?)")
            if k in ("host", "address") and not isinstance(v, (dict, list, str)):
                failures.append(f"FAIL {where}: {k}: read as {type(v).__name__} {v!r}, not the PCI address string")
            walk(v, where)
    elif isinstance(node, list):
        for v in node:
            walk(v, where)


def documents(name):
    text = sys.stdin.read() if name == "-" else open(name, encoding="utf-8").read()
    if name.endswith(".md"):
        return [(f"{name} block {i + 1}", b) for i, b in enumerate(re.findall(r"```yaml\n(.*?)```", text, re.S))]
    return [(name, text)]


for arg in sys.argv[1:]:
    for where, text in documents(arg):
        for doc in yaml.safe_load_all(text):
            walk(doc, where)
print("\n".join(failures) if failures else "ok")
sys.exit(1 if failures else 0)
