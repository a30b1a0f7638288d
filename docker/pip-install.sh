#!/bin/sh
# `pip install` inside an image build, from where the build arguments say (docker/Dockerfile).
#
#   pip-install.sh [--torch] [--requirements-of 'PYPROJECT[EXTRA,...]'] [PIP ARGS...]
#
#   --torch              the install may need the CPU build of torch: in index mode add
#                        TORCH_INDEX_URL as an extra index (PyPI serves only the CUDA build)
#   --requirements-of    install the dependencies of PYPROJECT (and of its EXTRAs), not the
#                        project: that layer then changes only when pyproject.toml does
#
# WHEELHOUSE=scratch: PyPI (+ TORCH_INDEX_URL with --torch). Any other WHEELHOUSE (an image,
# bind-mounted at /wheelhouse): nothing but its wheels, no index at all. /build-ca/ca.crt, when
# present (bind-mounted docker/build-ca), is the CA bundle pip trusts; nothing is written to
# the image about it.
set -eu
torch=0
if [ "${1:-}" = --torch ]; then torch=1; shift; fi
if [ "${1:-}" = --requirements-of ]; then
  python /opt/toolsim-build/requirements.py "$2" >/tmp/requirements.txt
  shift 2
  set -- -r /tmp/requirements.txt "$@"
fi
if [ "${WHEELHOUSE:-scratch}" != scratch ]; then
  if ! ls /wheelhouse/*.whl >/dev/null 2>&1; then
    echo "WHEELHOUSE=$WHEELHOUSE has no wheels at its root: scripts/wheelhouse.sh --image" >&2
    exit 1
  fi
  set -- --no-index --find-links /wheelhouse "$@"
elif [ "$torch" = 1 ] && [ -n "${TORCH_INDEX_URL:-}" ]; then
  set -- --extra-index-url "$TORCH_INDEX_URL" "$@"
fi
if [ -f /build-ca/ca.crt ]; then set -- --cert /build-ca/ca.crt "$@"; fi
python -m pip install --no-cache-dir "$@"
rm -f /tmp/requirements.txt
