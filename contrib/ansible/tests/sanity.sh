#!/usr/bin/env bash
# ansible-test sanity on vsmmu.vsmmu as it ships (built and installed by ansible-galaxy, so
# the role's links to contrib/systemd are real files). Not part of .ci/run: cold it takes
# about 3 minutes on 2 busy cores, most of it creating one venv per test.
#
# ansible-test bootstraps pip in each venv with a get-pip script it downloads from outside the
# package index, which cannot be reached here. A stand-in is put in its cache (ensurepip from
# the standard library, then pip installs the rest from the package index), under a private
# HOME so that nothing lands in the user's ~/.ansible. With that, every sanity test runs.
#
#   bash contrib/ansible/tests/sanity.sh [ansible-test sanity options, e.g. --test validate-modules]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ANSIBLE_CORE_VERSION=2.19.14
venv=${XDG_CACHE_HOME:-$HOME/.cache}/vsmmu-ansible-$ANSIBLE_CORE_VERSION
test_home=${XDG_CACHE_HOME:-$HOME/.cache}/vsmmu-ansible-test-home
if [[ "$("$venv/bin/ansible-test" --version 2>/dev/null)" != *"$ANSIBLE_CORE_VERSION"* ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "ansible-core==$ANSIBLE_CORE_VERSION"
fi
python=$("$venv/bin/python3" -c 'import sys; print("%d.%d" % sys.version_info[:2])')

# The pip version ansible-test bootstraps (get_venv_packages' default_packages).
pip_version=$(sed -n "s/^ *pip='\(.*\)',\$/\1/p" "$("$venv/bin/python3" -c 'import ansible_test, os; print(os.path.dirname(ansible_test.__file__))')/_internal/python_requirements.py" | head -1)
[ -n "$pip_version" ] || { echo "sanity: cannot tell which pip ansible-test bootstraps"; exit 1; }
mkdir -p "$test_home/.ansible/test/cache"
cat >"$test_home/.ansible/test/cache/get_pip_${pip_version//./_}.py" <<'EOF'
# Stand-in for ansible-test's downloaded get-pip script (contrib/ansible/tests/sanity.sh).
# ensurepip runs in its own process: it points PIP_CONFIG_FILE at /dev/null in its environment.
import subprocess
import sys

subprocess.check_call([sys.executable, '-m', 'ensurepip', '--default-pip'])
args = [a for a in sys.argv[1:] if a not in ('--no-setuptools', '--no-wheel')]  # get-pip's own options
sys.exit(subprocess.call([sys.executable, '-m', 'pip', 'install'] + args))
EOF

work=$(mktemp -d /tmp/vsmmu-ansible-sanity.XXXXXX)
trap 'rm -rf "$work"' EXIT
"$venv/bin/ansible-galaxy" collection build --output-path "$work" "$here/.." >/dev/null
"$venv/bin/ansible-galaxy" collection install --offline -p "$work" "$work"/vsmmu-vsmmu-*.tar.gz >/dev/null
cd "$work/ansible_collections/vsmmu/vsmmu"
HOME=$test_home "$venv/bin/ansible-test" sanity --python "$python" --requirements "$@"
