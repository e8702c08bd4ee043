# byok-worker: the admin identity behind `byok keys` (BYOK_VAULT_TOKEN). It may create workspace keys,
# seal (encrypt), rotate, rewrap, raise min_decryption_version and read key status. It may NEVER decrypt,
# export, back up, restore, import, trim or delete a key, nor make one exportable or deletable.
#
# Written for BYOK's own transit mount "byok-transit/" (BYOK_VAULT_TRANSIT_MOUNT) and keys prefixed "byok-ws-"
# (BYOK_VAULT_KEY_PREFIX). setup.sh writes it for the mount in BYOK_TRANSIT_MOUNT by replacing that prefix
# of every path; change the key prefix by hand. Nothing here names any other mount, so this identity can
# neither create nor read keys elsewhere (the shared "transit/" included).
#
# Why "byok-transit/keys/+" and not "byok-transit/keys/byok-ws-*": a glob also matches every path *below* the key
# (…/trim, …/import, …/soft-delete, …/config with any parameter), and Vault ranks a longer glob above
# "byok-transit/keys/+/<op>", so the per-operation rules below would never apply. "+" is one path segment,
# so each operation is granted on its own path and everything else stays denied. The price: the rules
# on byok-transit/keys/… apply to every key in this mount, which is why BYOK has a transit mount of its own
# (the encrypt and rewrap rules are still limited to byok-ws-* keys, and nothing here decrypts any key).

# List the keys of the mount.
path "byok-transit/keys" {
  capabilities = ["list"]
}

# Create a workspace key and read its status. Only one kind of key can be created: aes256-gcm96,
# DERIVED (the endpoint binding is the derivation context; transit ignores a context on a key that is
# not derived), not exportable, no plaintext backup. "derived" is required, so leaving it out (which
# would create a non-derived key) is denied. Vault checks required_parameters on reads too, so
# `byok keys status` sends derived=true on its reads; transit ignores it there.
# (POST on an existing key changes nothing; DELETE needs "delete", which is not granted.)
path "byok-transit/keys/+" {
  capabilities = ["read", "update"]
  required_parameters = ["derived"]
  allowed_parameters = {
    "derived"                = [true, "true"]
    "type"                   = ["aes256-gcm96"]
    "exportable"             = [false, "false"]
    "allow_plaintext_backup" = [false, "false"]
  }
}

# Rotate: a new key version. No parameters at all (denied_parameters "*" refuses any request body).
path "byok-transit/keys/+/rotate" {
  capabilities = ["update"]
  denied_parameters = {
    "*" = []
  }
}

# Retire old versions: min_decryption_version and NOTHING else on /config, so deletion_allowed,
# exportable, allow_plaintext_backup, min_encryption_version and auto_rotate_period stay out of reach.
# (A policy cannot say "only upwards"; `byok keys retire` never lowers it. Retired versions are only
# gone for good after a trim, which is denied here and left to an operator with a stronger identity.)
path "byok-transit/keys/+/config" {
  capabilities = ["update"]
  required_parameters = ["min_decryption_version"]
  allowed_parameters = {
    "min_decryption_version" = []
  }
}

# Seal: encrypt with a workspace key, always with a binding context. "update" only, not "create": an
# encrypt to a key that does not exist yet (transit's upsert, which would make a non-derived key) is
# denied; keys come from `byok keys create`.
path "byok-transit/encrypt/byok-ws-*" {
  capabilities = ["update"]
  required_parameters = ["plaintext", "context"]
  allowed_parameters = {
    "plaintext" = []
    "context"   = []
  }
}

# Rewrap to the latest version inside Vault (the plaintext never leaves it).
path "byok-transit/rewrap/byok-ws-*" {
  capabilities = ["update"]
  required_parameters = ["ciphertext", "context"]
  allowed_parameters = {
    "ciphertext" = []
    "context"    = []
  }
}

# Explicit denials. Everything not granted above is denied anyway; these document intent, and the one on
# "byok-transit/decrypt/byok-ws-*" has the same path as worker.hcl's grant, so an identity holding both
# policies still cannot decrypt (deny wins when two policies name the same path).
path "byok-transit/decrypt/byok-ws-*" {
  capabilities = ["deny"]
}
path "byok-transit/decrypt/*" {
  capabilities = ["deny"]
}
path "byok-transit/export/*" {
  capabilities = ["deny"]
}
path "byok-transit/byok-export/*" {
  capabilities = ["deny"]
}
path "byok-transit/backup/*" {
  capabilities = ["deny"]
}
path "byok-transit/restore*" {
  capabilities = ["deny"]
}
path "byok-transit/datakey/*" {
  capabilities = ["deny"]
}
path "byok-transit/keys/+/trim" {
  capabilities = ["deny"]
}
path "byok-transit/keys/+/import" {
  capabilities = ["deny"]
}
path "byok-transit/keys/+/import_version" {
  capabilities = ["deny"]
}
