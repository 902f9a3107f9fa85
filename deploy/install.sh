#!/usr/bin/env bash
# Install or upgrade edge-agent as a systemd service; see deploy/README.md.
#
#   sudo deploy/install.sh [--checkpoint FILE] [--torch-spec SPEC]
#   sudo deploy/install.sh --rollback
#
# Each install goes into a new release folder /opt/edge-agent/releases/<version>-<time>
# with its own virtual environment. /opt/edge-agent/current points at the running
# release and /opt/edge-agent/previous at the one before, so a rollback is a switch
# of two links and a restart. The config in /etc/edge-agent/ and the state in
# /var/lib/edge-agent/ are never overwritten.
set -euo pipefail

PREFIX=${PREFIX:-/opt/edge-agent}
CONFIG_DIR=/etc/edge-agent
STATE_DIR=/var/lib/edge-agent
UNIT_PATH=/etc/systemd/system/edge-agent.service
SERVICE_USER=edge-agent
PYTHON=${PYTHON:-python3}
# The CPU build by default; set TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# where the default index serves a CUDA build, or pick a CUDA build for a GPU box.
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-}
SOURCE_DIR=$(cd "$(dirname "$0")/.." && pwd)

usage() {
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    echo
    echo "options:"
    echo "  --checkpoint FILE   copy this checkpoint to $STATE_DIR/model.pt (the config's model.checkpoint);"
    echo "                      without it the agent uses the checkpoint shipped in the package"
    echo "  --torch-spec SPEC   PyTorch requirement to install (default: $TORCH_SPEC)"
    echo "  --rollback          point $PREFIX/current back at the previous release and restart"
}

checkpoint=""
rollback=0
while [ $# -gt 0 ]; do
    case "$1" in
        --checkpoint) checkpoint=${2:?--checkpoint needs a file}; shift 2 ;;
        --torch-spec) TORCH_SPEC=${2:?--torch-spec needs a requirement}; shift 2 ;;
        --rollback) rollback=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (sudo), because it creates a system user and writes to /opt, /etc and /var/lib" >&2
    exit 1
fi

have_systemd() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

if [ "$rollback" -eq 1 ]; then
    if [ ! -L "$PREFIX/previous" ]; then
        echo "install.sh: no previous release to roll back to ($PREFIX/previous is missing)" >&2
        exit 1
    fi
    current=$(readlink "$PREFIX/current")
    previous=$(readlink "$PREFIX/previous")
    ln -sfn "$previous" "$PREFIX/current.new" && mv -T "$PREFIX/current.new" "$PREFIX/current"
    ln -sfn "$current" "$PREFIX/previous.new" && mv -T "$PREFIX/previous.new" "$PREFIX/previous"
    echo "current release: $previous (was $current)"
    if have_systemd; then systemctl restart edge-agent; echo "edge-agent restarted"; fi
    exit 0
fi

if [ -n "$checkpoint" ] && [ ! -f "$checkpoint" ]; then
    echo "install.sh: checkpoint $checkpoint not found" >&2
    exit 1
fi
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
    echo "install.sh: $PYTHON is older than Python 3.10; install a newer python3 and python3-venv" >&2
    exit 1
}

# 1. The service user, without a login shell or home folder of its own.
if ! getent passwd "$SERVICE_USER" >/dev/null; then
    useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
        --shell /usr/sbin/nologin "$SERVICE_USER"
    echo "created system user $SERVICE_USER"
fi

# 2. A new release with its own virtual environment.
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$SOURCE_DIR/pyproject.toml" | head -n 1)
release="$PREFIX/releases/$version-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$PREFIX/releases"
"$PYTHON" -m venv "$release"
"$release/bin/python" -m pip install --quiet --upgrade pip
if [ -n "$TORCH_INDEX_URL" ]; then
    "$release/bin/python" -m pip install --quiet --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"
else
    "$release/bin/python" -m pip install --quiet "$TORCH_SPEC"
fi
"$release/bin/python" -m pip install --quiet "$SOURCE_DIR"
install -d -m 0755 "$release/share/edge-agent"
install -m 0644 "$SOURCE_DIR/config/agent.yaml" "$SOURCE_DIR/docs/operations.md" "$release/share/edge-agent/"

# 3. Config and state, created once and kept across upgrades.
install -d -m 0750 -o root -g "$SERVICE_USER" "$CONFIG_DIR"
install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$STATE_DIR"
if [ ! -e "$CONFIG_DIR/agent.yaml" ]; then
    # Without --checkpoint, model.checkpoint stays null: the checkpoint shipped in the package.
    if [ -n "$checkpoint" ]; then
        sed -e "s#^  checkpoint: null #  checkpoint: \"$STATE_DIR/model.pt\"#" \
            "$SOURCE_DIR/config/agent.yaml" > "$CONFIG_DIR/agent.yaml.new"
    else
        cp "$SOURCE_DIR/config/agent.yaml" "$CONFIG_DIR/agent.yaml.new"
    fi
    chown root:"$SERVICE_USER" "$CONFIG_DIR/agent.yaml.new"
    chmod 0640 "$CONFIG_DIR/agent.yaml.new"
    mv "$CONFIG_DIR/agent.yaml.new" "$CONFIG_DIR/agent.yaml"
    echo "wrote $CONFIG_DIR/agent.yaml; set mqtt.host and agent_id in it"
else
    echo "kept $CONFIG_DIR/agent.yaml; compare with $release/share/edge-agent/agent.yaml for new keys"
fi
if [ -n "$checkpoint" ]; then
    install -m 0640 -o "$SERVICE_USER" -g "$SERVICE_USER" "$checkpoint" "$STATE_DIR/model.pt.new"
    sync "$STATE_DIR/model.pt.new"
    mv "$STATE_DIR/model.pt.new" "$STATE_DIR/model.pt"
    echo "installed checkpoint $STATE_DIR/model.pt"
fi

# 4. Check the config with the new release, as the service user, before switching.
if ! runuser -u "$SERVICE_USER" -- "$release/bin/edge-agent" check-config "$CONFIG_DIR/agent.yaml" >/dev/null; then
    echo "install.sh: $CONFIG_DIR/agent.yaml is invalid for edge-agent $version (errors above);" \
        "fix it and run install.sh again. The running release is unchanged." >&2
    exit 1
fi

# 5. Switch the links: current is the new release, previous the one it replaces.
if [ -L "$PREFIX/current" ]; then
    ln -sfn "$(readlink "$PREFIX/current")" "$PREFIX/previous.new" && mv -T "$PREFIX/previous.new" "$PREFIX/previous"
fi
ln -sfn "$release" "$PREFIX/current.new" && mv -T "$PREFIX/current.new" "$PREFIX/current"

# 6. The unit.
install -m 0644 "$SOURCE_DIR/deploy/edge-agent.service" "$UNIT_PATH"
if have_systemd; then
    systemctl daemon-reload
fi

echo "edge-agent $version installed in $release"
echo "start it now and at every boot:  systemctl enable --now edge-agent"
echo "after an upgrade:                 systemctl restart edge-agent"
echo "follow its log:                   journalctl -u edge-agent -f"
