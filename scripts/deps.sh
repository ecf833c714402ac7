#!/bin/sh
# Installs the Debian packages Tollgate needs, as root or through sudo, and
# only those that are missing (nothing to do: no root, no sudo needed).
#
#   sh scripts/deps.sh           to build: cmake (Pingora's zlib-ng), and a C
#                                toolchain if there is no `cc`
#   sh scripts/deps.sh --tests   also what `bash tests/run.sh` uses:
#                                redis-server, prometheus (and promtool),
#                                curl, postgresql (the key store tests),
#                                chromium (the capture report page test),
#                                python3-venv, nodejs and npm (the Node SDK
#                                tests) when `node` or `npm` is missing
#   sh scripts/deps.sh --ci      also what .ci/run uses: nginx and wrk (the
#                                load bench), systemd (systemd-analyze)
#
# Services these packages ship (redis, prometheus, postgresql, nginx) are
# not started: the tests start their own on loopback ports. A root shell on
# a fresh machine (a container, a CI runner) has no sudo and may have no
# package lists yet: both are handled.
set -eu

level=build
case "${1:-}" in
"") ;;
--tests) level=tests ;;
--ci) level=ci ;;
*)
    echo "usage: sh scripts/deps.sh [--tests | --ci]" >&2
    exit 2
    ;;
esac

want="cmake"
command -v cc >/dev/null 2>&1 || want="$want build-essential"
if [ "$level" != build ]; then
    want="$want redis-server prometheus curl postgresql chromium"
    # Debian's python3 needs python3-venv for `python3 -m venv`; another
    # python3 (pyenv, a venv) may have it built in.
    python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || want="$want python3 python3-venv"
    # The Node SDK tests: Debian's nodejs and npm, unless a node and npm are
    # already installed (NodeSource's nodejs ships its own npm, and Debian's
    # npm package conflicts with it).
    command -v node >/dev/null 2>&1 || want="$want nodejs"
    command -v npm >/dev/null 2>&1 || want="$want npm"
fi
# CI builds the SDK venv with Debian's own python3 (.ci/run sets PYTHON),
# whatever else the image puts first on PATH.
[ "$level" = ci ] && want="$want nginx wrk systemd python3 python3-venv"

missing=""
for p in $want; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || missing="$missing $p"
done
if [ -z "$missing" ]; then
    echo "deps: all present ($want)"
    exit 0
fi

if [ "$(id -u)" = 0 ]; then
    as_root=""
elif command -v sudo >/dev/null 2>&1; then
    as_root="sudo"
else
    echo "deps: missing:$missing; run this as root or install sudo" >&2
    exit 1
fi

echo "deps: installing:$missing"
# Keep the packages' scripts from starting their services, unless the
# machine already has a policy (a container usually does): it stays as it is.
# (POLICY_RC_D moves it, for tests/ops_package.rs only.)
policy=${POLICY_RC_D:-/usr/sbin/policy-rc.d}
made_policy=0
if [ ! -e "$policy" ]; then
    $as_root sh -c 'printf "#!/bin/sh\nexit 101\n" >"$1" && chmod 755 "$1"' sh "$policy"
    made_policy=1
fi
status=0
# A fresh container has no package lists, an old machine stale ones.
$as_root env DEBIAN_FRONTEND=noninteractive apt-get update || status=$?
if [ "$status" = 0 ]; then
    # shellcheck disable=SC2086 # one word per package
    $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing ||
        status=$?
fi
if [ "$made_policy" = 1 ]; then
    $as_root rm -f "$policy"
fi
exit "$status"
