#!/usr/bin/env bash
# Install, upgrade or roll back the industry expert appliance from this package, offline.
#
# Run (as root, from the unpacked package):
#   ./install.sh                                   install (or reinstall) and start the service
#   ./install.sh --upgrade-bundle NEW.tar|DIR      verify, install, switch atomically, reload
#   ./install.sh --rollback                        switch back to the previous bundle, reload
#   ./install.sh --set-public-key FILE             require bundles (and packages) signed with it
#   ./install.sh --verify-package                  check this package's files and signature only
#   ./install.sh --help
# Tested by tests/build/test_package.py (slow): unpack, install into a fresh venv with no index.
#
# Nothing is downloaded: pip installs from ./wheelhouse with --no-index. The bundle is verified
# (sizes, sha256, signature where required) before it becomes `current`. The package's
# SHA256SUMS is checked, and its signature (SHA256SUMS.sig) verified with the public key
# already configured on this box or given with --public-key, never with the key the package
# brings. A configured key is never replaced by a package's.
#
# Ownership: $STATE_DIR, its bundles/ and the current/previous links belong to root and are
# read-only to the service; the service writes only $STATE_DIR/service (API keys, the index
# copy with documents added through the API).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SERVICE=industry-expert
PREFIX=/opt/industry-expert
STATE_DIR=/var/lib/industry-expert
CONF_DIR=/etc/industry-expert
SERVICE_USER=industry-expert
PYTHON=python3
PUBLIC_KEY=""
PUBLIC_KEY_GIVEN=0
NO_SYSTEMD=0
NO_USER=0
MODE=install
NEW_BUNDLE=""
LAYOUT=1  # 2: the service's writable state is $STATE_DIR/service (install.conf says which)

log() { echo "install.sh: $*"; }
die() { echo "install.sh: error: $*" >&2; exit 1; }

usage() {
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    cat <<EOF
Options:
  --prefix DIR         where the virtual environment goes (default $PREFIX)
  --state-dir DIR      bundles and the \`current\` link (default $STATE_DIR)
  --conf-dir DIR       env file and keys (default $CONF_DIR)
  --user NAME          system user the service runs as (default $SERVICE_USER)
  --python PY          Python 3.11+ to build the venv with (default $PYTHON)
  --public-key FILE    require bundles (and packages) signed with this ed25519 key (.pub)
  --no-systemd         do not install or touch the systemd unit
  --no-user            do not create a system user (files stay owned by the caller)
Upgrades and rollbacks reuse the paths of the install ($CONF_DIR/install.conf).
EOF
}

# --conf-dir first: install.conf there holds the paths chosen at install time.
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    if [[ "${args[$i]}" == "--conf-dir" && $((i + 1)) -lt ${#args[@]} ]]; then
        CONF_DIR="${args[$((i + 1))]}"
    fi
done
if [[ -f "$CONF_DIR/install.conf" ]]; then
    # shellcheck source=/dev/null
    . "$CONF_DIR/install.conf"
fi

while [[ $# -gt 0 ]]; do
    case "$1" in
        --prefix) PREFIX="${2:?--prefix needs a folder}"; shift 2 ;;
        --state-dir) STATE_DIR="${2:?--state-dir needs a folder}"; shift 2 ;;
        --conf-dir) CONF_DIR="${2:?--conf-dir needs a folder}"; shift 2 ;;
        --user) SERVICE_USER="${2:?--user needs a name}"; shift 2 ;;
        --python) PYTHON="${2:?--python needs an interpreter}"; shift 2 ;;
        --public-key) PUBLIC_KEY="${2:?--public-key needs a .pub file}"; PUBLIC_KEY_GIVEN=1; shift 2 ;;
        --set-public-key) MODE=set-key; PUBLIC_KEY="${2:?--set-public-key needs a .pub file}"; PUBLIC_KEY_GIVEN=1; shift 2 ;;
        --verify-package) MODE=verify-package; shift ;;
        --no-systemd) NO_SYSTEMD=1; shift ;;
        --no-user) NO_USER=1; shift ;;
        --upgrade-bundle) MODE=upgrade; NEW_BUNDLE="${2:?--upgrade-bundle needs a .tar or folder}"; shift 2 ;;
        --rollback) MODE=rollback; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

for path in "$PREFIX" "$STATE_DIR" "$CONF_DIR"; do
    [[ "$path" == /* ]] || die "--prefix, --state-dir and --conf-dir take absolute paths, got $path"
done
VENV="$PREFIX/venv"
ENV_FILE="$CONF_DIR/env"
SERVICE_STATE="$STATE_DIR/service"
CONF_KEY="$CONF_DIR/bundle-signing.pub"

have_systemd() {
    [[ $NO_SYSTEMD == 0 && -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1
}

env_value() {
    # The last KEY=value of the env file (systemd syntax; not sourced: values may hold spaces).
    [[ -f "$ENV_FILE" ]] || return 0
    sed -n "s/^[[:space:]]*$1=//p" "$ENV_FILE" | tail -n 1 | sed -e 's/^"\(.*\)"$/\1/'
}

bundle_tool() {
    # The device's signature policy comes from the env file, as it does for the service.
    EXPERT_REQUIRE_SIGNATURE="$(env_value EXPERT_REQUIRE_SIGNATURE)" \
        EXPERT_BUNDLE_PUBLIC_KEY="$(env_value EXPERT_BUNDLE_PUBLIC_KEY)" \
        "$VENV/bin/expert" device "$@" --state-dir "$STATE_DIR"
}

set_ownership() {
    # Root owns the state folder, the bundles and the links; the service owns only service/.
    if [[ $LAYOUT != 2 ]]; then
        # An install from before the split: its unit still writes $STATE_DIR itself. Only
        # the bundles and links change hands; ./install.sh moves the rest.
        if [[ $NO_USER == 0 ]]; then
            [[ -d "$STATE_DIR/bundles" ]] && chown -R root:root "$STATE_DIR/bundles"
            for link in current previous; do
                [[ -L "$STATE_DIR/$link" ]] && chown -h root:root "$STATE_DIR/$link"
            done
        fi
        log "run ./install.sh from this package to move the service's state to $SERVICE_STATE"
        return 0
    fi
    mkdir -p "$SERVICE_STATE"
    chmod 0755 "$STATE_DIR"
    chmod 0750 "$SERVICE_STATE"
    if [[ $NO_USER == 0 ]]; then
        chown root:root "$STATE_DIR"
        [[ -d "$STATE_DIR/bundles" ]] && chown -R root:root "$STATE_DIR/bundles"
        for link in current previous; do
            [[ -L "$STATE_DIR/$link" ]] && chown -h root:root "$STATE_DIR/$link"
        done
        chown -R "$SERVICE_USER:$SERVICE_USER" "$SERVICE_STATE"
    fi
    if [[ -d "$STATE_DIR/bundles" ]]; then
        chmod 0755 "$STATE_DIR/bundles"
    fi
}

migrate_service_state() {
    # Installs before the split kept keys and the index copy in $STATE_DIR itself.
    mkdir -p "$SERVICE_STATE"
    local name
    for name in api_keys.json index; do
        if [[ -e "$STATE_DIR/$name" && ! -e "$SERVICE_STATE/$name" ]]; then
            log "moving $STATE_DIR/$name to $SERVICE_STATE/"
            mv "$STATE_DIR/$name" "$SERVICE_STATE/$name"
        fi
    done
}

set_env_value() {
    # Replace (or add) KEY=value in the env file; other lines stay as they are.
    local key="$1" value="$2" tmp
    tmp="$(mktemp "$ENV_FILE.XXXXXX")"
    if [[ -f "$ENV_FILE" ]]; then
        grep -v -E "^[[:space:]]*#?[[:space:]]*$key=" "$ENV_FILE" >"$tmp" || true
        chmod --reference="$ENV_FILE" "$tmp"
        chown --reference="$ENV_FILE" "$tmp" 2>/dev/null || true
    fi
    echo "$key=$value" >>"$tmp"
    mv "$tmp" "$ENV_FILE"
}

check_public_key() {
    # An ed25519 public key in PEM, or stop.
    [[ -f "$1" ]] || die "$1: no such public key file"
    if command -v openssl >/dev/null 2>&1; then
        openssl pkey -pubin -in "$1" -noout -text 2>/dev/null | grep -q "ED25519" ||
            die "$1: not an ed25519 public key in PEM (use the .pub written with the signing key)"
    fi
}

configure_public_key() {
    # $1: the key file; $2: operator (given on the command line) or package (in the tarball).
    # A package's key never replaces a configured one; the operator's does. A configured key
    # always means: signed bundles only.
    local key="$1" source="$2"
    mkdir -p "$CONF_DIR"
    if [[ -f "$CONF_KEY" ]] && ! cmp -s "$key" "$CONF_KEY"; then
        if [[ "$source" == package ]]; then
            log "keeping the configured public key $CONF_KEY: the package's own key does not replace it"
            key="$CONF_KEY"
        else
            log "replacing the configured public key $CONF_KEY with $key (given with --public-key)"
        fi
    fi
    if [[ "$key" != "$CONF_KEY" ]]; then
        check_public_key "$key"
        install -m 0644 "$key" "$CONF_KEY"
    fi
    set_env_value EXPERT_BUNDLE_PUBLIC_KEY "$CONF_KEY"
    set_env_value EXPERT_REQUIRE_SIGNATURE 1
    chmod 0640 "$ENV_FILE"
    if [[ $NO_USER == 0 ]] && getent group "$SERVICE_USER" >/dev/null; then
        chgrp "$SERVICE_USER" "$ENV_FILE"
    fi
}

verify_package() {
    # The files against SHA256SUMS, and SHA256SUMS against a key from outside the package.
    local trusted=""
    if [[ $PUBLIC_KEY_GIVEN == 1 ]]; then
        trusted="$PUBLIC_KEY"
    elif [[ -f "$CONF_KEY" ]]; then
        trusted="$CONF_KEY"
    fi
    [[ -f "$HERE/SHA256SUMS" ]] || die "the package has no SHA256SUMS: copy the tarball again"
    if [[ -n "$trusted" ]]; then
        command -v openssl >/dev/null 2>&1 ||
            die "openssl is needed to check the package signature with $trusted: install it"
        [[ -f "$HERE/SHA256SUMS.sig" ]] ||
            die "the package is not signed, but this box requires signed packages ($trusted): build it with --sign-key"
        openssl pkeyutl -verify -pubin -inkey "$trusted" -rawin -in "$HERE/SHA256SUMS" \
            -sigfile "$HERE/SHA256SUMS.sig" >/dev/null 2>&1 ||
            die "the package's SHA256SUMS signature does not verify with $trusted: the package was altered or signed with another key; do not install it"
        log "package signature verified with $trusted"
    elif [[ -f "$HERE/SHA256SUMS.sig" ]]; then
        log "the package is signed, but no key is configured here to check it: pass --public-key FILE (a copy obtained separately) to authenticate it"
    fi
    if command -v sha256sum >/dev/null 2>&1; then
        (cd "$HERE" && sha256sum --quiet --strict -c SHA256SUMS) ||
            die "package files are damaged or incomplete: copy the tarball again"
    elif [[ -n "$trusted" ]]; then
        die "sha256sum not found: cannot check the package's files against its signed SHA256SUMS"
    else
        log "sha256sum not found: skipping the package check (the bundle is still verified)"
    fi
}

reload_service() {
    if have_systemd && systemctl is-active --quiet "$SERVICE"; then
        systemctl reload "$SERVICE"
        log "sent reload (SIGHUP) to $SERVICE: it switches bundles without dropping requests"
    elif have_systemd; then
        log "$SERVICE is not running; start it with: systemctl start $SERVICE"
    else
        log "no systemd here: send SIGHUP to the running server (kill -HUP <pid>) or restart it"
    fi
}

need_install() {
    [[ -x "$VENV/bin/python" ]] || die "no installation at $PREFIX: run ./install.sh first"
}

case "$MODE" in
    upgrade)
        need_install
        [[ -e "$NEW_BUNDLE" ]] || die "$NEW_BUNDLE: no such bundle tarball or folder"
        bundle_tool install --activate "$NEW_BUNDLE"
        set_ownership
        reload_service
        exit 0
        ;;
    set-key)
        configure_public_key "$PUBLIC_KEY" operator
        log "bundles must now be signed with $CONF_KEY; restart the service to apply"
        exit 0
        ;;
    verify-package)
        verify_package
        log "package OK"
        exit 0
        ;;
    rollback)
        need_install
        bundle_tool rollback
        reload_service
        exit 0
        ;;
esac

# ---- install -------------------------------------------------------------------------------
if [[ $(id -u) != 0 && ($NO_USER == 0 || $NO_SYSTEMD == 0) ]]; then
    die "run as root (sudo ./install.sh), or pass --no-user --no-systemd with writable folders"
fi

log "checking the package's files"
verify_package

command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found: install Python 3.11+ first"
want_tag="$(sed -n 's/.*"python": "\(cp[0-9]*\)".*/\1/p' "$HERE/package.json")"
have_tag="$("$PYTHON" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
[[ "$want_tag" == "$have_tag" ]] ||
    die "the wheels are for Python $want_tag but $PYTHON is $have_tag: pass --python with the matching interpreter"
[[ "$(uname -m)" == x86_64 ]] || die "this package is for x86-64; this machine is $(uname -m)"

if [[ $NO_USER == 0 ]] && ! getent passwd "$SERVICE_USER" >/dev/null; then
    log "creating system user $SERVICE_USER"
    nologin="$(command -v nologin || echo /usr/sbin/nologin)"
    useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
        --shell "$nologin" "$SERVICE_USER"
fi

log "installing into $VENV (offline, from the wheelhouse)"
if [[ ! -x "$VENV/bin/python" ]]; then
    mkdir -p "$PREFIX"
    "$PYTHON" -m venv "$VENV" ||
        die "$PYTHON -m venv failed: install your distribution's venv module (Debian: python3-venv)"
fi
project_wheels=("$HERE"/wheelhouse/industry_expert-*.whl)
project_wheel="${project_wheels[0]}"
[[ -f "$project_wheel" ]] || die "the wheelhouse holds no industry_expert wheel: copy the package again"
# No index, no config files (a stray pip.conf could name one), only the wheelhouse.
PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 "$VENV/bin/python" -m pip install --quiet \
    --disable-pip-version-check --no-index --find-links "$HERE/wheelhouse" \
    --upgrade --force-reinstall "${project_wheel}[appliance]"
# The venv is read-only to the service (ProtectSystem=strict): compile the bytecode now.
"$VENV/bin/python" -m compileall -q "$VENV/lib" >/dev/null 2>&1 || true
cp "$HERE/README.txt" "$PREFIX/README.txt"

mkdir -p "$CONF_DIR"
if [[ ! -f "$ENV_FILE" ]]; then
    log "writing $ENV_FILE"
    {
        echo "# Configuration of the $SERVICE service (systemd EnvironmentFile: KEY=value lines)."
        echo "EXPERT_STATE_DIR=$SERVICE_STATE"
        echo "EXPERT_HOST=127.0.0.1"
        echo "EXPERT_PORT=8080"
        echo "# API keys are required before binding a non-loopback address (stored hashed);"
        echo "# (add one with: sudo -u $SERVICE_USER $VENV/bin/expert keys add NAME --state-dir $SERVICE_STATE)"
        echo "# EXPERT_API_KEYS_FILE=$SERVICE_STATE/api_keys.json"
        echo "# A configured public key means only signed bundles are accepted:"
        echo "# EXPERT_BUNDLE_PUBLIC_KEY=$CONF_KEY"
    } >"$ENV_FILE"
    chmod 0640 "$ENV_FILE"
    [[ $NO_USER == 1 ]] || chgrp "$SERVICE_USER" "$ENV_FILE"
else
    log "keeping the existing $ENV_FILE"
fi
# The signing key: the operator's --public-key, else one already configured, else the
# package's (first install). Whichever it is, the env file requires signatures from then on.
if [[ $PUBLIC_KEY_GIVEN == 1 ]]; then
    configure_public_key "$PUBLIC_KEY" operator
elif [[ -f "$CONF_KEY" ]]; then
    configure_public_key "$CONF_KEY" operator
elif [[ -f "$HERE/keys/bundle-signing.pub" ]]; then
    configure_public_key "$HERE/keys/bundle-signing.pub" package
fi
cat >"$CONF_DIR/install.conf" <<EOF
# Written by install.sh: the paths later --upgrade-bundle and --rollback runs use.
PREFIX='$PREFIX'
STATE_DIR='$STATE_DIR'
SERVICE_USER='$SERVICE_USER'
NO_USER=$NO_USER
NO_SYSTEMD=$NO_SYSTEMD
LAYOUT=2
EOF

log "installing the bundle into $STATE_DIR"
mkdir -p "$STATE_DIR"
migrate_service_state
LAYOUT=2
bundles=("$HERE"/bundle/bundle-*)
[[ ${#bundles[@]} == 1 && -d "${bundles[0]}" ]] || die "the package holds no bundle (bundle/bundle-*)"
bundle_tool install --activate "${bundles[0]}"
set_ownership

# The unit, with this install's paths. StateDirectory= only names folders under /var/lib.
unit="$(sed -e "s#/opt/industry-expert#$PREFIX#g" \
    -e "s#/var/lib/industry-expert#$STATE_DIR#g" \
    -e "s#/etc/industry-expert/env#$ENV_FILE#g" \
    -e "s#^User=.*#User=$SERVICE_USER#" -e "s#^Group=.*#Group=$SERVICE_USER#" \
    "$HERE/systemd/$SERVICE.service")"
if [[ "$STATE_DIR" == /var/lib/?* ]]; then
    unit="$(sed "s#^StateDirectory=.*#StateDirectory=${STATE_DIR#/var/lib/}/service#" <<<"$unit")"
else
    unit="$(sed -e "s#^StateDirectory=.*#ReadWritePaths=$SERVICE_STATE#" -e '/^StateDirectoryMode=/d' <<<"$unit")"
fi
if [[ "$CONF_DIR" == /etc/?* ]]; then
    unit="$(sed "s#^ConfigurationDirectory=.*#ConfigurationDirectory=${CONF_DIR#/etc/}#" <<<"$unit")"
else
    unit="$(sed -e '/^ConfigurationDirectory/d' <<<"$unit")"
fi

if have_systemd; then
    printf '%s\n' "$unit" >"/etc/systemd/system/$SERVICE.service"
    chmod 0644 "/etc/systemd/system/$SERVICE.service"
    systemctl daemon-reload
    systemctl enable "$SERVICE" >/dev/null
    systemctl restart "$SERVICE"
    log "installed and started $SERVICE (systemctl status $SERVICE; journalctl -u $SERVICE)"
else
    printf '%s\n' "$unit" >"$PREFIX/$SERVICE.service"
    if [[ $NO_SYSTEMD == 1 ]]; then
        log "--no-systemd: unit written to $PREFIX/$SERVICE.service, not installed"
    else
        log "systemd is not running here (a container?): unit written to $PREFIX/$SERVICE.service, not enabled"
    fi
    log "start the server by hand: $VENV/bin/expert serve --bundle $STATE_DIR/current --state-dir $SERVICE_STATE"
fi
log "done: serving $(bundle_tool current)"
