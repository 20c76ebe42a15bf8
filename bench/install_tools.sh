#!/usr/bin/env bash
# Install the benchmark's contenders from package registries only, once; later runs reuse them.
# Everything but the two Debian packages lives under bench/.tools/ (gitignored).
set -euo pipefail
cd "$(dirname "$0")"
TOOLS=.tools
AZCOPY_VERSION=10.32.2    # @azure-tools/azcopy-linux on npm
AZURE_CLI_VERSION=2.91.0  # azure-cli on PyPI
MATPLOTLIB_VERSION=3.11.2 # for the bar chart only; kept out of the project's requirements
PYTHON=${PYTHON:-python3}
mkdir -p "$TOOLS"

# rclone and AzCopy's runtime library come from Debian (apt cannot pin past what the mirror has).
if ! command -v rclone >/dev/null || ! dpkg -s libsecret-1-0 >/dev/null 2>&1; then
  echo "Installing rclone and libsecret-1-0 (apt-get) ..." >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rclone libsecret-1-0 >&2
fi

if [ ! -f "$TOOLS/azcopy/.installed-$AZCOPY_VERSION" ]; then
  echo "Installing AzCopy $AZCOPY_VERSION (npm) ..." >&2
  rm -rf "$TOOLS/azcopy" && mkdir -p "$TOOLS/azcopy"
  (cd "$TOOLS/azcopy" && echo '{"name":"bench-azcopy","private":true}' > package.json &&
   npm install --no-audit --no-fund --loglevel=error --save-exact \
     "@azure-tools/azcopy-linux@$AZCOPY_VERSION" >&2)
  chmod +x "$TOOLS"/azcopy/node_modules/@azure-tools/azcopy-linux/dist/bin/azcopy_linux_amd64
  touch "$TOOLS/azcopy/.installed-$AZCOPY_VERSION"
fi

# The az CLI gets a venv of its own: its pins clash with Airflow's.
if [ ! -f "$TOOLS/az-venv/.installed-$AZURE_CLI_VERSION" ]; then
  echo "Installing azure-cli $AZURE_CLI_VERSION into its own venv (about a minute) ..." >&2
  rm -rf "$TOOLS/az-venv" && "$PYTHON" -m venv "$TOOLS/az-venv"
  "$TOOLS/az-venv/bin/pip" install --quiet --disable-pip-version-check "azure-cli==$AZURE_CLI_VERSION" >&2
  touch "$TOOLS/az-venv/.installed-$AZURE_CLI_VERSION"
fi

if [ ! -f "$TOOLS/plot-venv/.installed-$MATPLOTLIB_VERSION" ]; then
  echo "Installing matplotlib $MATPLOTLIB_VERSION into bench/.tools/plot-venv ..." >&2
  rm -rf "$TOOLS/plot-venv" && "$PYTHON" -m venv "$TOOLS/plot-venv"
  "$TOOLS/plot-venv/bin/pip" install --quiet --disable-pip-version-check "matplotlib==$MATPLOTLIB_VERSION" >&2
  touch "$TOOLS/plot-venv/.installed-$MATPLOTLIB_VERSION"
fi
