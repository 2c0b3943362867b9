#!/bin/sh
# TEST STAND-IN for k3s's install script (https://get.k3s.io), for piml's tests. NOT the real script.
# It honours the documented interface piml's playbooks use, nothing more:
#   INSTALL_K3S_SKIP_DOWNLOAD=true (required here: the stand-in cannot download; /usr/local/bin/k3s must exist)
#   INSTALL_K3S_EXEC   "server ..." | "agent ..." | flags only (then server, or agent when K3S_URL is set)
#   INSTALL_K3S_VERSION  recorded, and checked against `k3s --version` like a pinned download would be
#   INSTALL_K3S_SKIP_ENABLE, INSTALL_K3S_SKIP_START, K3S_URL, K3S_TOKEN, K3S_NODE_NAME
# It writes k3s.service or k3s-agent.service (Type=notify, TimeoutStartSec=0 like the real units),
# the service's .env file (K3S_* variables, mode 0600), /usr/local/bin/k3s-killall.sh and
# /usr/local/bin/k3s-uninstall.sh or k3s-agent-uninstall.sh. Settings come from /etc/rancher/k3s/config.yaml.
set -e

info() { echo "[INFO]  $*"; }
fatal() { echo "[ERROR] $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fatal "run as root"
[ "${INSTALL_K3S_SKIP_DOWNLOAD:-}" = true ] || fatal "stand-in install.sh cannot download k3s: set INSTALL_K3S_SKIP_DOWNLOAD=true and put the binary at /usr/local/bin/k3s"
BIN_DIR=/usr/local/bin
[ -x "$BIN_DIR/k3s" ] || fatal "$BIN_DIR/k3s is missing or not executable"

# shellcheck disable=SC2086
set -- ${INSTALL_K3S_EXEC:-} "$@"
case "${1:-}" in
    -*|"") if [ -n "${K3S_URL:-}" ]; then
               [ -n "${K3S_TOKEN:-}" ] || fatal "Defaulted k3s exec command to 'agent' because K3S_URL is defined, but K3S_TOKEN is not defined."
               CMD_K3S=agent
           else CMD_K3S=server; fi ;;
    *) CMD_K3S=$1; shift ;;
esac
if [ "$CMD_K3S" = server ]; then SYSTEM_NAME=k3s; UNINSTALL=k3s-uninstall.sh; else SYSTEM_NAME=k3s-$CMD_K3S; UNINSTALL=k3s-agent-uninstall.sh; fi

if [ -n "${INSTALL_K3S_VERSION:-}" ]; then
    have=$("$BIN_DIR/k3s" --version | sed -n 's/^k3s version \([^ ]*\).*/\1/p')
    [ "$have" = "$INSTALL_K3S_VERSION" ] || fatal "$BIN_DIR/k3s is $have, not INSTALL_K3S_VERSION=$INSTALL_K3S_VERSION"
fi
info "Skipping k3s download and verify (stand-in)"
for cmd in kubectl crictl ctr; do
    [ -e "$BIN_DIR/$cmd" ] || ln -sf k3s "$BIN_DIR/$cmd"
done

UNIT=/etc/systemd/system/$SYSTEM_NAME.service
ENV_FILE=$UNIT.env
umask 077
: > "$ENV_FILE"
for var in K3S_URL K3S_TOKEN K3S_NODE_NAME; do
    eval "val=\${$var:-}"
    [ -n "$val" ] && echo "$var=$val" >> "$ENV_FILE"
done
chmod 0600 "$ENV_FILE"
umask 022

ARGS=""
for a in "$@"; do ARGS="$ARGS '$(printf %s "$a" | sed "s/'/'\\\\''/g")'"; done
info "systemd: Creating service file $UNIT"
cat > "$UNIT" <<EOF
[Unit]
Description=Lightweight Kubernetes (piml test stand-in)
Documentation=https://k3s.io
Wants=network-online.target
After=network-online.target

[Install]
WantedBy=multi-user.target

[Service]
Type=notify
EnvironmentFile=-/etc/default/%N
EnvironmentFile=-/etc/sysconfig/%N
EnvironmentFile=-$ENV_FILE
KillMode=process
Delegate=yes
LimitNOFILE=1048576
TimeoutStartSec=0
Restart=always
RestartSec=5s
ExecStart=$BIN_DIR/k3s $CMD_K3S$ARGS
EOF

cat > "$BIN_DIR/k3s-killall.sh" <<'EOF'
#!/bin/sh
# piml test stand-in: stop k3s services (the real script also tears down containers and network)
[ "$(id -u)" = 0 ] || exec sudo "$0" "$@"
for service in /etc/systemd/system/k3s*.service; do
    [ -s "$service" ] && systemctl stop "$(basename "$service")"
done
exit 0
EOF
chmod 755 "$BIN_DIR/k3s-killall.sh"

cat > "$BIN_DIR/$UNINSTALL" <<EOF
#!/bin/sh
# piml test stand-in: uninstall k3s ($SYSTEM_NAME)
set -x
[ "\$(id -u)" = 0 ] || exec sudo "\$0" "\$@"
$BIN_DIR/k3s-killall.sh
systemctl disable $SYSTEM_NAME || true
rm -f $UNIT $ENV_FILE
systemctl daemon-reload
for cmd in kubectl crictl ctr; do [ -L $BIN_DIR/\$cmd ] && rm -f $BIN_DIR/\$cmd; done
rm -rf /etc/rancher/k3s /run/k3s /var/lib/rancher/k3s /var/lib/kubelet
rm -f $BIN_DIR/k3s $BIN_DIR/k3s-killall.sh
rm -f $BIN_DIR/$UNINSTALL
EOF
chmod 755 "$BIN_DIR/$UNINSTALL"

systemctl daemon-reload
if [ "${INSTALL_K3S_SKIP_ENABLE:-}" != true ]; then
    info "systemd: Enabling $SYSTEM_NAME unit"
    systemctl enable "$SYSTEM_NAME" >/dev/null 2>&1
fi
if [ "${INSTALL_K3S_SKIP_START:-}" != true ] && [ "${INSTALL_K3S_SKIP_ENABLE:-}" != true ]; then
    info "systemd: Starting $SYSTEM_NAME"
    systemctl restart "$SYSTEM_NAME"
fi
