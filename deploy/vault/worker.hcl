# byok-worker: the worker's Vault identity (AppRole, Kubernetes or a token). It may only DECRYPT with
# workspace keys, plus look up and renew its own token. No encrypt, rewrap, key read or list.
#
# Written for BYOK's own transit mount "byok-transit/" (BYOK_VAULT_TRANSIT_MOUNT) and keys prefixed "byok-ws-"
# (BYOK_VAULT_KEY_PREFIX). setup.sh writes it for the mount in BYOK_TRANSIT_MOUNT by replacing that prefix
# of every path; change the key prefix by hand.
# Give the identity this policy alone (AppRole/Kubernetes role: token_no_default_policy=true), so nothing
# else comes with it; the two token paths below are what the worker needs from the default policy.

path "byok-transit/decrypt/byok-ws-*" {
  capabilities = ["update"]
}

path "auth/token/renew-self" {
  capabilities = ["update"]
}

path "auth/token/lookup-self" {
  capabilities = ["read"]
}
