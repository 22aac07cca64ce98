"""Attestation contracts shared by the TEE (which makes evidence and opens released keys) and the
key release service (which checks evidence and wraps keys to the TEE's one-time key).

- :mod:`edb.attestation.evidence`: the evidence statement (a compact JWS, ES256) and its claims.
- :mod:`edb.attestation.keywrap`: a DEK wrapped to the TEE's one-time P-256 key (a compact JWE,
  ECDH-ES+A256KW / A256GCM) and opened inside the TEE.
"""
