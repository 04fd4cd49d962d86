#!/bin/sh
# The image's pip steps. The Dockerfile runs them, and so does deploy/check_image.py (CI) in a fresh
# Python 3.13 venv, so what CI checks cannot drift from what the image does.
#   docker-steps.sh wheel SRC_DIR WHEEL_DIR   build the gateway's wheel (no dependencies)
#   docker-steps.sh install WHEEL_DIR         install it with its runtime dependencies only
set -eu
case "${1:-}" in
  wheel)
    python -m pip wheel --no-cache-dir --no-deps --wheel-dir "$3" "$2"
    ;;
  install)
    # Wheels only: the slim image has no compiler, so a dependency without a wheel for this Python
    # must fail here, and in CI, rather than half-build inside the image.
    python -m pip install --no-cache-dir --root-user-action=ignore --only-binary=:all: "$2"/*.whl
    ;;
  *)
    echo "usage: $0 wheel SRC_DIR WHEEL_DIR | install WHEEL_DIR" >&2
    exit 64
    ;;
esac
