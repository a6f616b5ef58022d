#!/usr/bin/env bash
# Build the netpolicy wheel from this checkout, plus a wheel of every dependency, into DIR:
# what the role's netpolicy_install_from=wheel installs on a host without any package index.
#
#   ansible/build-wheels.sh DIR [PYTHON]
#
# The build is reproducible (fixed SOURCE_DATE_EPOCH, built from a clean copy of the sources so
# no stale build/ directory leaks into the wheel): the same sources give the same bytes, so a
# second playbook run copies nothing and reinstalls nothing.
set -euo pipefail
dir="$1"
python="${2:-python3}"
src="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cp "$src/pyproject.toml" "$tmp/"
[ -f "$src/README.md" ] && cp "$src/README.md" "$tmp/"
(cd "$src" && find netpolicy -name __pycache__ -prune -o -type f ! -name '*.pyc' -print0) |
    (cd "$src" && xargs -0 cp --parents -t "$tmp")
export SOURCE_DATE_EPOCH=315532800 PIP_DISABLE_PIP_VERSION_CHECK=1
# The old netpolicy wheel goes first: a rebuild of the same version must replace it.
new="$tmp/dist"
"$python" -m pip wheel -q --no-deps --wheel-dir "$new" "$tmp" 2> >(grep -v 'is ignored: it is neither' >&2)
for whl in "$new"/*.whl; do
    if ! cmp -s "$whl" "$dir/$(basename "$whl")"; then
        rm -f "$dir"/netpolicy-*.whl
        cp "$whl" "$dir/"
        echo "built $(basename "$whl")"
    fi
done
"$python" -m pip wheel -q --wheel-dir "$dir" --find-links "$dir" "$new"/netpolicy-*.whl 2> >(grep -v 'is ignored: it is neither' >&2)
ls "$dir"
