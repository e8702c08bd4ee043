#!/bin/sh
# Idempotent Vault / OpenBao set-up for byok-worker. POSIX sh; needs the `bao` or `vault` CLI.
#
#   VAULT_ADDR=https://vault.example:8200 VAULT_TOKEN=<an operator token> deploy/vault/setup.sh
#
# Safe to run again at any time: it only creates what is missing and rewrites the policies and roles to
# what this file says. It does, in order:
#   1. transit secrets engine at $BYOK_TRANSIT_MOUNT (default byok-transit: a mount of BYOK's own, so the
#      admin policy, which covers every key of its mount, can touch no one else's keys), if not enabled yet,
#   2. policies byok-worker (decrypt only) and byok-admin (create/seal/rotate/rewrap, never decrypt)
#      from worker.hcl and admin.hcl beside this script, their "byok-transit/" paths written for
#      $BYOK_TRANSIT_MOUNT,
#   3. AppRole auth at $BYOK_APPROLE_MOUNT, role byok-worker -> policy byok-worker,
#   4. Kubernetes auth at $BYOK_K8S_MOUNT, role byok-worker bound to service account byok-worker in
#      namespace byok; the auth method's config (API server address) only when KUBERNETES_HOST is set,
#   5. prints the AppRole role_id on stdout (progress goes to stderr). A secret_id is created only when
#      BYOK_SECRET_ID_FILE names a file: written there with mode 0600, kept on later runs while Vault
#      still accepts it. This script never writes a secret anywhere else.
#
# Environment (all optional except the address and token):
#   VAULT_ADDR / VAULT_TOKEN (or BAO_ADDR / BAO_TOKEN)  server and an operator token
#   VAULT_BIN                      CLI to use (default: bao, else vault, from PATH)
#   BYOK_TRANSIT_MOUNT=byok-transit  BYOK_VAULT_TRANSIT_MOUNT of the workers and `byok keys`; never a mount
#                                  shared with other keys (letters, digits, '_' and '-' only)
#   BYOK_APPROLE_MOUNT=approle     BYOK_VAULT_APPROLE_MOUNT of the workers
#   BYOK_K8S_MOUNT=kubernetes      BYOK_VAULT_K8S_MOUNT of the workers
#   BYOK_K8S_NAMESPACE=byok  BYOK_K8S_SERVICE_ACCOUNT=byok-worker  BYOK_K8S_AUDIENCE=vault
#   KUBERNETES_HOST, KUBERNETES_CA_CERT_FILE, TOKEN_REVIEWER_JWT_FILE   Kubernetes auth config
#   BYOK_TOKEN_TTL=1h  BYOK_TOKEN_MAX_TTL=4h   worker tokens (both auth methods)
#   BYOK_APPROLE_SECRET_ID_TTL     e.g. 720h (default: Vault's, no expiry); BYOK_APPROLE_TOKEN_BOUND_CIDRS
#   BYOK_ROLE_ID_FILE              also write the role_id there
#   BYOK_SECRET_ID_FILE            create a secret_id and write it there (0600)
#   BYOK_APPROLE_FILES_OWNER       chown the two files (e.g. 10001:10001 for the byok image's user)
#   SETUP_WAIT_S=60                how long to wait for the server to answer unsealed
set -eu

log() { printf 'vault-setup: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)

if [ -z "${VAULT_BIN:-}" ]; then
  if command -v bao >/dev/null 2>&1; then VAULT_BIN=bao
  elif command -v vault >/dev/null 2>&1; then VAULT_BIN=vault
  else die "neither bao nor vault is on PATH (or set VAULT_BIN)"
  fi
fi

# The vault CLI reads VAULT_*; bao reads BAO_* (and VAULT_*): accept either, export both.
VAULT_ADDR=${VAULT_ADDR:-${BAO_ADDR:-}}
VAULT_TOKEN=${VAULT_TOKEN:-${BAO_TOKEN:-}}
[ -n "$VAULT_ADDR" ] || die "set VAULT_ADDR"
[ -n "$VAULT_TOKEN" ] || die "set VAULT_TOKEN (an operator token allowed to mount, write policies and roles)"
BAO_ADDR=$VAULT_ADDR
BAO_TOKEN=$VAULT_TOKEN
export VAULT_ADDR VAULT_TOKEN BAO_ADDR BAO_TOKEN
if [ -n "${VAULT_CACERT:-}" ]; then BAO_CACERT=$VAULT_CACERT; export BAO_CACERT; fi
if [ -n "${VAULT_NAMESPACE:-}" ]; then BAO_NAMESPACE=$VAULT_NAMESPACE; export BAO_NAMESPACE; fi

transit=${BYOK_TRANSIT_MOUNT:-byok-transit}
case $transit in
  '' | *[!A-Za-z0-9_-]*) die "BYOK_TRANSIT_MOUNT may hold only letters, digits, '_' and '-'" ;;
  *) ;;
esac
approle=${BYOK_APPROLE_MOUNT:-approle}
k8s=${BYOK_K8S_MOUNT:-kubernetes}
role=byok-worker
worker_policy=byok-worker
admin_policy=byok-admin
token_ttl=${BYOK_TOKEN_TTL:-1h}
token_max_ttl=${BYOK_TOKEN_MAX_TTL:-4h}

v() { "$VAULT_BIN" "$@"; }

for f in worker.hcl admin.hcl; do
  [ -s "$here/$f" ] || die "$here/$f is missing"
done

# 0. The server answers, initialised and unsealed (exit 0; 2 means sealed, 1 unreachable).
waited=0
until v status >/dev/null 2>&1; do
  [ "$waited" -lt "${SETUP_WAIT_S:-60}" ] || die "$VAULT_ADDR does not answer unsealed after ${waited}s"
  sleep 1
  waited=$((waited + 1))
done

# mounted LISTING PATH: is PATH/ in the JSON listing (`secrets list` or `auth list`, read once)?
mounted() { printf '%s\n' "$1" | grep -q "\"$2/\":"; }
secrets_list=$(v secrets list -format=json)
auth_list=$(v auth list -format=json)

# 1. Transit.
if mounted "$secrets_list" "$transit"; then
  log "transit already enabled at $transit/"
else
  v secrets enable -path="$transit" transit >/dev/null
  log "enabled transit at $transit/"
fi

# 2. Policies (rewritten every run: the files are the source of truth), for the mount of step 1.
for_mount() { sed "s|^path \"byok-transit/|path \"$transit/|" "$here/$1"; }
for_mount worker.hcl | v policy write "$worker_policy" - >/dev/null
for_mount admin.hcl | v policy write "$admin_policy" - >/dev/null
log "wrote policies $worker_policy and $admin_policy for $transit/"

# 3. AppRole.
if mounted "$auth_list" "$approle"; then
  log "approle already enabled at $approle/"
else
  v auth enable -path="$approle" approle >/dev/null
  log "enabled approle at $approle/"
fi
# token_no_default_policy: the worker's token carries byok-worker alone (worker.hcl grants the two
# token paths it needs from "default").
set -- token_policies="$worker_policy" token_no_default_policy=true token_ttl="$token_ttl" \
  token_max_ttl="$token_max_ttl" token_type=service bind_secret_id=true
if [ -n "${BYOK_APPROLE_SECRET_ID_TTL:-}" ]; then set -- "$@" secret_id_ttl="$BYOK_APPROLE_SECRET_ID_TTL"; fi
if [ -n "${BYOK_APPROLE_TOKEN_BOUND_CIDRS:-}" ]; then set -- "$@" token_bound_cidrs="$BYOK_APPROLE_TOKEN_BOUND_CIDRS"; fi
v write "auth/$approle/role/$role" "$@" >/dev/null
log "wrote approle role $role"

# 4. Kubernetes auth.
if mounted "$auth_list" "$k8s"; then
  log "kubernetes auth already enabled at $k8s/"
else
  v auth enable -path="$k8s" kubernetes >/dev/null
  log "enabled kubernetes auth at $k8s/"
fi
if [ -n "${KUBERNETES_HOST:-}" ]; then
  set -- kubernetes_host="$KUBERNETES_HOST"
  if [ -n "${KUBERNETES_CA_CERT_FILE:-}" ]; then set -- "$@" kubernetes_ca_cert=@"$KUBERNETES_CA_CERT_FILE"; fi
  if [ -n "${TOKEN_REVIEWER_JWT_FILE:-}" ]; then set -- "$@" token_reviewer_jwt=@"$TOKEN_REVIEWER_JWT_FILE"; fi
  v write "auth/$k8s/config" "$@" >/dev/null
  log "configured kubernetes auth for $KUBERNETES_HOST"
else
  log "KUBERNETES_HOST not set: kubernetes auth config left as it is"
fi
v write "auth/$k8s/role/$role" \
  bound_service_account_names="${BYOK_K8S_SERVICE_ACCOUNT:-byok-worker}" \
  bound_service_account_namespaces="${BYOK_K8S_NAMESPACE:-byok}" \
  audience="${BYOK_K8S_AUDIENCE:-vault}" \
  token_policies="$worker_policy" token_no_default_policy=true \
  token_ttl="$token_ttl" token_max_ttl="$token_max_ttl" >/dev/null
log "wrote kubernetes role $role"

# Owner-only files, replaced atomically.
write_private() {
  umask 077
  printf '%s' "$2" >"$1.tmp"
  if [ -n "${BYOK_APPROLE_FILES_OWNER:-}" ]; then chown "$BYOK_APPROLE_FILES_OWNER" "$1.tmp"; fi
  chmod 600 "$1.tmp"
  mv -f "$1.tmp" "$1"
}

# 5. role_id on stdout; secret_id only into the file asked for.
role_id=$(v read -field=role_id "auth/$approle/role/$role/role-id")
[ -n "$role_id" ] || die "could not read the role_id of $role"
if [ -n "${BYOK_ROLE_ID_FILE:-}" ]; then write_private "$BYOK_ROLE_ID_FILE" "$role_id"; fi

if [ -n "${BYOK_SECRET_ID_FILE:-}" ]; then
  if [ -s "$BYOK_SECRET_ID_FILE" ] && tr -d '\n' <"$BYOK_SECRET_ID_FILE" \
      | v write -format=json "auth/$approle/role/$role/secret-id/lookup" secret_id=- 2>/dev/null \
      | grep -q '"secret_id_accessor"'; then
    log "the secret_id in $BYOK_SECRET_ID_FILE is still valid: kept"
  else
    secret_id=$(v write -f -field=secret_id "auth/$approle/role/$role/secret-id")
    [ -n "$secret_id" ] || die "could not create a secret_id"
    write_private "$BYOK_SECRET_ID_FILE" "$secret_id"
    unset secret_id
    log "wrote a new secret_id to $BYOK_SECRET_ID_FILE (mode 0600)"
  fi
fi

printf '%s\n' "$role_id"
