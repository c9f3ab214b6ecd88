# Shared by the scripts: where things live and how missing pieces get installed.
# Everything installed here goes under .toolsmith/ in the repository, never system-wide.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.toolsmith/venv"
DENO_VERSION="2.9.8"
MCP_VERSION="2.3.0"
KUBERNETES_VALIDATE_VERSION="1.37.0"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# The release gateway that ./scripts/serve runs (scripts/test builds the same one first, so
# tests/quickstart.rs does not wait on it).
build_release_gateway() {
  log "building the gateway (release)"
  cargo build --quiet --release --manifest-path "$ROOT/Cargo.toml" -p gateway --bin gateway
}

# A Python virtual environment under .toolsmith/ (Deno comes from PyPI as a wheel).
ensure_venv() {
  if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV"
    python3 -m venv "$VENV"
  fi
}

# The pinned Deno, installed from PyPI when missing or another version.
ensure_deno() {
  ensure_venv
  if [[ ! -x "$VENV/bin/deno" ]] || [[ "$("$VENV/bin/deno" --version 2>/dev/null | head -1)" != "deno $DENO_VERSION"* ]]; then
    log "installing Deno $DENO_VERSION from PyPI"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "deno==$DENO_VERSION"
  fi
  export TOOLSMITH_DENO="$VENV/bin/deno"
}

# The official MCP Python SDK, for the interoperability tests.
ensure_python_mcp() {
  ensure_venv
  if ! "$VENV/bin/python" -c "import mcp" 2>/dev/null; then
    log "installing the MCP Python SDK $MCP_VERSION from PyPI"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "mcp==$MCP_VERSION"
  fi
  export TOOLSMITH_TEST_PYTHON="$VENV/bin/python"
}

# kubectl exactly as Debian's kubernetes-client package ships it (its built-in kustomize is
# the oldest the overlays are written for), unpacked under .toolsmith/ without touching the
# system's packages.
ensure_kubectl() {
  local dir="$ROOT/.toolsmith/kubernetes-client"
  if [[ ! -x "$dir/usr/bin/kubectl" ]]; then
    log "fetching Debian's kubernetes-client package"
    local tmp
    tmp="$(mktemp -d)"
    if ! (cd "$tmp" && apt-get download -q kubernetes-client > /dev/null 2>&1); then
      apt-get update -q > /dev/null
      (cd "$tmp" && apt-get download -q kubernetes-client > /dev/null)
    fi
    mkdir -p "$dir"
    dpkg-deb -x "$tmp"/kubernetes-client_*.deb "$dir"
    rm -rf "$tmp"
  fi
  export TOOLSMITH_KUBECTL="$dir/usr/bin/kubectl"
}

# The manifest validators: kubernetes-validate (PyPI) for built-in kinds, the published
# KEDA and Prometheus-operator CRD schemas (npm, pinned by deploy/k8s/check's lock file).
ensure_k8s_check() {
  ensure_venv
  if ! "$VENV/bin/python" -c "import kubernetes_validate" 2> /dev/null; then
    log "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION from PyPI"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  fi
  if ! command -v node > /dev/null; then
    echo "error: Node.js is needed to check the KEDA and Prometheus-operator objects" >&2
    exit 1
  fi
  local dir="$ROOT/.toolsmith/k8s-check"
  if ! cmp -s "$ROOT/deploy/k8s/check/package-lock.json" "$dir/package-lock.json" || [[ ! -d "$dir/node_modules" ]]; then
    log "installing the CRD schemas from npm"
    rm -rf "$dir"
    mkdir -p "$dir"
    cp "$ROOT/deploy/k8s/check/package.json" "$ROOT/deploy/k8s/check/package-lock.json" "$dir/"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error > /dev/null)
  fi
  export TOOLSMITH_K8S_NODE_MODULES="$dir/node_modules"
}
