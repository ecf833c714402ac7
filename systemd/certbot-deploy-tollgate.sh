#!/bin/sh
# certbot deploy hook for Tollgate: install the renewed certificate and key
# where the service can read them, then reload it (SIGHUP). New TLS
# handshakes use the new certificate; open connections keep theirs. A bad
# pair fails the reload, the running certificate stays, and the reason is in
# `journalctl -u tollgate` and tollgate_config_reloads_total{result="failed"}.
#
# One-time setup (the service's dynamic user cannot read /etc/letsencrypt):
#   groupadd --system tollgate-tls
#   install -d -m 0750 -g tollgate-tls /etc/tollgate/tls
#   add SupplementaryGroups=tollgate-tls to the [Service] section of the unit
#   install -m 0755 systemd/certbot-deploy-tollgate.sh \
#       /etc/letsencrypt/renewal-hooks/deploy/tollgate.sh
# and in tollgate.yaml:
#   tls: { cert: /etc/tollgate/tls/fullchain.pem, key: /etc/tollgate/tls/privkey.pem }
set -eu

dir=${TOLLGATE_TLS_DIR:-/etc/tollgate/tls}
group=${TOLLGATE_TLS_GROUP:-tollgate-tls}
: "${RENEWED_LINEAGE:?this script is run by certbot as a deploy hook}"

# Copy next to the target, then rename: a reload never reads half a file.
install -m 0640 -g "$group" "$RENEWED_LINEAGE/fullchain.pem" "$dir/.fullchain.pem.new"
install -m 0640 -g "$group" "$RENEWED_LINEAGE/privkey.pem" "$dir/.privkey.pem.new"
mv -f "$dir/.fullchain.pem.new" "$dir/fullchain.pem"
mv -f "$dir/.privkey.pem.new" "$dir/privkey.pem"

systemctl reload tollgate
