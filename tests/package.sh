#!/usr/bin/env bash
# The Debian package, end to end (issue 21): build it with cargo-deb, check
# its contents, install it with dpkg -i on this machine, run the installed
# binary's --test on the shipped config as the service user, verify the
# installed unit, check that nothing was started or enabled, reinstall it
# (the upgrade path), remove it (the edited conffile, the keys and the state
# stay), purge it (they go), and leave the machine as it was.
#
#   bash tests/package.sh               build with `cargo deb` (a release build), then test
#   bash tests/package.sh --from-debug  package target/debug/tollgate instead (what CI
#                                       does: the release build takes 6 to 40 minutes
#                                       on 2 shared cores, the debug one is built anyway)
#   bash tests/package.sh FILE.deb      test a package built before
#
# Needs root (dpkg -i), dpkg-deb, systemd-analyze and cargo-deb
# (cargo install cargo-deb --version 3.8.0 --locked). Not root: prints why
# and exits 0 without testing, so `bash tests/run.sh` never needs root;
# .ci/run runs it as root.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ "$(id -u)" != 0 ]]; then
    echo "SKIPPED: tests/package.sh installs a package with dpkg -i and needs root (CI runs it from .ci/run)."
    exit 0
fi

PKG=tollgate
passed=0
failed=0
ok() { echo "ok: $*"; passed=$((passed + 1)); }
bad() { echo "FAILED: $*" >&2; failed=$((failed + 1)); }
check() { # check DESCRIPTION COMMAND...
    local what=$1
    shift
    if "$@"; then ok "$what"; else bad "$what"; fi
}

if dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null | grep -q 'installed'; then
    echo "error: package $PKG is already installed here; this test would replace it." >&2
    exit 1
fi
had_user=0
getent passwd tollgate >/dev/null && had_user=1
had_group=0
getent group tollgate >/dev/null && had_group=1
if [[ -e /etc/tollgate || -e /var/lib/tollgate ]]; then
    echo "error: /etc/tollgate or /var/lib/tollgate exists; this test would change it." >&2
    exit 1
fi

cleanup() {
    dpkg -P "$PKG" >/dev/null 2>&1 || true
    # The package leaves its system user on purge, as Debian packages do;
    # the test removes the one it made.
    if ((!had_user)) && getent passwd tollgate >/dev/null; then deluser --system --quiet tollgate 2>/dev/null || true; fi
    if ((!had_group)) && getent group tollgate >/dev/null; then delgroup --system --quiet tollgate || true; fi
}
trap cleanup EXIT

# ---------------------------------------------------------------------------
if [[ "${1:-}" == *.deb ]]; then
    DEB=$1
else
    command -v cargo-deb >/dev/null || {
        echo "error: cargo-deb is not installed: cargo install cargo-deb --version 3.8.0 --locked" >&2
        exit 1
    }
    version=$(cargo metadata --no-deps --format-version 1 --locked |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["packages"][0]["version"])')
    SECONDS=0
    if [[ "${1:-}" == --from-debug ]]; then
        # cargo-deb takes the binary from <target dir>/release/: give it a
        # target dir of its own holding the debug build, so target/release
        # is never mixed up with a debug binary.
        cargo build --locked --bin tollgate
        staging=$(mktemp -d)
        trap 'cleanup; rm -rf "$staging"' EXIT
        mkdir -p "$staging/release"
        cp target/debug/tollgate "$staging/release/tollgate"
        CARGO_TARGET_DIR=$staging cargo deb --locked --no-build --fast --output "$staging/"
        DEB="$staging/${PKG}_${version}-1_$(dpkg --print-architecture).deb"
    elif (($# == 0)); then
        cargo deb --locked
        DEB=$(ls -t "target/debian/${PKG}_${version}"-*_"$(dpkg --print-architecture)".deb | head -n1)
    else
        echo "usage: bash tests/package.sh [--from-debug | FILE.deb]" >&2
        exit 2
    fi
    echo "building the package took ${SECONDS}s"
fi
echo "package: $DEB"

contents=$(dpkg-deb -c "$DEB")
for f in ./usr/bin/tollgate ./usr/lib/systemd/system/tollgate.service ./etc/tollgate/tollgate.yaml \
    ./usr/share/tollgate/tollgate.env.example ./usr/share/tollgate/certbot-deploy-tollgate.sh \
    ./usr/share/tollgate/dashboards/tollgate.json ./usr/share/tollgate/dashboards/alerts.yaml \
    ./usr/share/doc/tollgate/README.md ./usr/share/doc/tollgate/config.md \
    ./usr/share/doc/tollgate/copyright ./usr/share/doc/tollgate/examples/demo.yaml; do
    check "the package holds $f" grep -qF " $f" <<<"$contents"
done
check "the certbot hook is executable" grep -qE '^-rwxr-xr-x .* \./usr/share/tollgate/certbot-deploy-tollgate.sh$' <<<"$contents"
check "only /etc/tollgate/tollgate.yaml is a conffile" \
    test "$(dpkg-deb --ctrl-tarfile "$DEB" | tar -xO ./conffiles)" = "/etc/tollgate/tollgate.yaml"
check "it depends on adduser" grep -q 'adduser' <<<"$(dpkg-deb -f "$DEB" Depends)"

# ---------------------------------------------------------------------------
SECONDS=0
dpkg -i "$DEB"
echo "dpkg -i took ${SECONDS}s"

check "/usr/bin/tollgate runs" /usr/bin/tollgate --version
check "the system user tollgate exists, without a login shell" \
    test "$(getent passwd tollgate | cut -d: -f7)" = /usr/sbin/nologin
check "tollgate is a system user" test "$(id -u tollgate)" -lt 1000
check "/var/lib/tollgate belongs to tollgate, mode 750" \
    test "$(stat -c '%U:%G %a' /var/lib/tollgate)" = "tollgate:tollgate 750"
check "/etc/tollgate/tollgate.env is root's, mode 600" \
    test "$(stat -c '%U:%G %a' /etc/tollgate/tollgate.env)" = "root:root 600"
check "the env file is the example" cmp -s /etc/tollgate/tollgate.env systemd/tollgate.env.example
check "the shipped config is conf/tollgate.yaml" cmp -s /etc/tollgate/tollgate.yaml conf/tollgate.yaml

# --test on the shipped config, as the service user, with the variables of
# the shipped environment file set to stand-in values (8+ characters).
env_args=()
while IFS= read -r line; do
    case "$line" in '#'* | '') continue ;; esac
    name=${line%%=*}
    env_args+=("$name=package-test-$name")
done </etc/tollgate/tollgate.env
check "the env file names variables" test "${#env_args[@]}" -gt 0
check "tollgate --test passes on /etc/tollgate/tollgate.yaml as user tollgate" \
    setpriv --reuid=tollgate --regid=tollgate --init-groups \
    env -i "${env_args[@]}" /usr/bin/tollgate --config /etc/tollgate/tollgate.yaml --test
check "tollgate --test fails without the keys" \
    bash -c '! setpriv --reuid=tollgate --regid=tollgate --init-groups env -i /usr/bin/tollgate --config /etc/tollgate/tollgate.yaml --test 2>/dev/null'

check "systemd-analyze verify accepts the installed unit" \
    systemd-analyze verify /usr/lib/systemd/system/tollgate.service
check "the unit runs /usr/bin/tollgate" \
    grep -qx 'ExecStart=/usr/bin/tollgate --config /etc/tollgate/tollgate.yaml' /usr/lib/systemd/system/tollgate.service
check "the unit runs as user tollgate" grep -qx 'User=tollgate' /usr/lib/systemd/system/tollgate.service
check "the service is not enabled" \
    bash -c '! ls /etc/systemd/system/*.wants/tollgate.service 2>/dev/null | grep -q .'
running() {
    local p
    for p in /proc/[0-9]*; do
        [[ "$(readlink "$p/exe" 2>/dev/null)" == /usr/bin/tollgate ]] && return 0
    done
    return 1
}
check "no tollgate was started" bash -c "$(declare -f running); ! running"

# Reinstall (dpkg runs the upgrade path of the scripts): the edited config,
# the keys and the state are kept; still nothing is started or enabled.
echo "# edited by the admin" >>/etc/tollgate/tollgate.yaml
echo "TEAM_A_KEY=admin-secret-value" >>/etc/tollgate/tollgate.env
echo '{}' >/var/lib/tollgate/budgets.json
DEBIAN_FRONTEND=noninteractive dpkg -i --force-confold "$DEB"
check "reinstall keeps the edited conffile" grep -q '^# edited by the admin' /etc/tollgate/tollgate.yaml
check "reinstall keeps the keys" grep -q '^TEAM_A_KEY=admin-secret-value' /etc/tollgate/tollgate.env
check "reinstall keeps the state" test -e /var/lib/tollgate/budgets.json
check "reinstall enables nothing" bash -c '! ls /etc/systemd/system/*.wants/tollgate.service 2>/dev/null | grep -q .'

# ---------------------------------------------------------------------------
dpkg -r "$PKG"
check "remove deletes the binary" test ! -e /usr/bin/tollgate
check "remove deletes the unit" test ! -e /usr/lib/systemd/system/tollgate.service
check "remove keeps the edited conffile" grep -q '^# edited by the admin' /etc/tollgate/tollgate.yaml
check "remove keeps the keys" test -e /etc/tollgate/tollgate.env
check "remove keeps the state" test -e /var/lib/tollgate/budgets.json
check "dpkg lists the package as removed, config kept" \
    test "$(dpkg-query -W -f='${Status}' "$PKG")" = "deinstall ok config-files"

dpkg -P "$PKG"
check "purge deletes the conffile" test ! -e /etc/tollgate/tollgate.yaml
check "purge deletes the keys" test ! -e /etc/tollgate/tollgate.env
check "purge deletes /etc/tollgate" test ! -e /etc/tollgate
check "purge deletes the state" test ! -e /var/lib/tollgate
check "dpkg forgets the package" bash -c "! dpkg-query -W $PKG >/dev/null 2>&1"

echo "$passed passed, $failed failed"
((failed == 0))
