#!/usr/bin/env bash
# Installs what Lacuna needs on Debian 12: the build chain, the C libraries,
# and the Python packages the integration tests use. Idempotent and quiet
# when everything is already there.
set -euo pipefail

APT_PKGS=(build-essential autoconf automake pkg-config unzip curl ca-certificates
  libmicrohttpd-dev libuv1-dev libcjson-dev libpcre2-dev libinih-dev libopenblas-openmp-dev
  check libsystemd-dev systemd python3 python3-pip clang clang-format valgrind)

missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ -n "${LACUNA_SKIP_PIP:-}" ]; then exit 0; fi
PY=${PYTHON:-python3}
pip_missing=()
for m in pytest:pytest openai:openai requests:requests jsonschema:jsonschema jinja2:jinja2; do
  mod=${m%%:*}; pkg=${m##*:}
  $PY -c "import $mod" 2>/dev/null || pip_missing+=("$pkg")
done
if [ ${#pip_missing[@]} -gt 0 ]; then
  echo "==> installing Python packages: ${pip_missing[*]}"
  $PY -m pip install -q "${pip_missing[@]}" 2>/dev/null \
    || $PY -m pip install -q --break-system-packages "${pip_missing[@]}"
fi
