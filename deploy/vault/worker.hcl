# byok-worker: the worker's Vault identity (AppRole, Kubernetes or a token). It may only DECRYPT with
# workspace keys, plus look up and renew its own token. No encrypt, rewrap, key read or list.
#
# Written for transit mounted at "transit/" and keys prefixed "byok-ws-" (BYOK_VAULT_TRANSIT_MOUNT,
# BYOK_VAULT_KEY_PREFIX): change both paths together if yours differ.
# Give the identity this policy alone (AppRole/Kubernetes role: token_no_default_policy=true), so nothing
# else comes with it; the two token paths below are what the worker needs from the default policy.

path "transit/decrypt/byok-ws-*" {
  capabilities = ["update"]
}

path "auth/token/renew-self" {
  capabilities = ["update"]
}

path "auth/token/lookup-self" {
  capabilities = ["read"]
}
