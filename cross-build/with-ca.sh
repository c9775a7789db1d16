#!/bin/sh
# with-ca.sh COMMAND...: run COMMAND (pip, packaging/build.sh) inside a container build trusting
# the extra CA certificates passed as the build secret `extra_ca` (a TLS-intercepting proxy's):
#
#   docker buildx build --secret id=extra_ca,src=/usr/local/share/ca-certificates/proxy.crt ...
#   podman build --secret id=extra_ca,src=... ...      (cross-build/build.sh passes it for you)
#
# The secret is mounted only for the RUN that uses it; the bundle made from it lives in a
# temporary file removed before the step ends, so neither the image layers nor the artifact
# hold it. Without the secret, COMMAND runs with the image's own trust store.
set -eu
secret=${AGENTD_CA_SECRET:-/run/secrets/extra_ca}
bundle=
if [ -s "$secret" ]; then
  bundle=$(mktemp /tmp/agentd-ca.XXXXXX)
  trap 'rm -f "$bundle"' EXIT
  cat /etc/ssl/certs/ca-certificates.crt "$secret" >"$bundle" 2>/dev/null || cat "$secret" >"$bundle"
  export PIP_CERT="$bundle" SSL_CERT_FILE="$bundle" REQUESTS_CA_BUNDLE="$bundle"
  echo "with-ca.sh: trusting $(grep -c 'BEGIN CERTIFICATE' "$secret") extra CA certificate(s) from the build secret" >&2
fi
rc=0
"$@" || rc=$?
if [ "$rc" != 0 ]; then
  echo "with-ca.sh: '$*' failed (exit $rc)." >&2
  if [ -z "$bundle" ]; then
    echo "with-ca.sh: behind a TLS-intercepting proxy (pip: 'CERTIFICATE_VERIFY_FAILED'), pass its CA:" \
      "--secret id=extra_ca,src=/path/to/proxy-ca.crt (docs/deployment.md)" >&2
  fi
fi
exit "$rc"
