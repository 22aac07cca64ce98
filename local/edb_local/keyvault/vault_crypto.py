"""Key material and the cryptographic operations the stand-in serves (pure, no I/O).

Algorithms and formats follow Key Vault: RSA keys encrypt/decrypt and wrap/unwrap with RSA-OAEP
(SHA-1), RSA-OAEP-256 and RSA1_5; sign/verify take a *digest* (RS*/PS* on RSA keys, ES* on EC
keys, raw r||s signatures as JWS uses). JWKs are real RFC 7517 keys, base64url without padding.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from edb_local.keyvault.errors import bad_parameter

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

RSA_SIZES = (2048, 3072, 4096)
CURVES: dict[str, ec.EllipticCurve] = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}
RSA_OPS = ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"]
EC_OPS = ["sign", "verify"]
ALL_OPS = frozenset(RSA_OPS)

_HASHES: dict[str, hashes.HashAlgorithm] = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}
_EC_ALG_CURVE = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64u_decode(text: object, what: str = "value") -> bytes:
    if not isinstance(text, str) or len(text) > 64 * 1024:
        raise bad_parameter(f"{what} must be a base64url string")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError as exc:
        raise bad_parameter(f"{what} is not valid base64url") from exc


def _int_bytes(value: int, length: int | None = None) -> bytes:
    return value.to_bytes(length or (value.bit_length() + 7) // 8, "big")


@dataclass(frozen=True)
class KeySpec:
    """What ``POST /keys/{name}/create`` asked for, validated."""

    kty: str  # as reported: RSA, RSA-HSM, EC, EC-HSM
    size: int | None
    curve: str | None
    public_exponent: int

    @property
    def family(self) -> str:
        return "RSA" if self.kty.startswith("RSA") else "EC"


def parse_key_spec(body: dict[str, object]) -> KeySpec:
    kty = body.get("kty")
    if kty in ("oct", "oct-HSM"):
        raise bad_parameter("Symmetric keys are only supported by Managed HSM.")
    if kty not in ("RSA", "RSA-HSM", "EC", "EC-HSM"):
        raise bad_parameter("Property kty has invalid value: expected RSA, RSA-HSM, EC or EC-HSM")
    if str(kty).startswith("RSA"):
        size = body.get("key_size") or 2048
        if size not in RSA_SIZES:
            raise bad_parameter("The key size is not supported: RSA keys are 2048, 3072 or 4096 bits")
        exponent = body.get("public_exponent") or 65537
        if exponent not in (3, 65537):
            raise bad_parameter("The public exponent is not supported")
        return KeySpec(str(kty), int(size), None, int(exponent))
    curve = body.get("crv") or "P-256"
    if curve not in CURVES:
        raise bad_parameter("The curve is not supported: P-256, P-384 or P-521")
    return KeySpec(str(kty), None, str(curve), 0)


def default_ops(spec: KeySpec) -> list[str]:
    return list(RSA_OPS if spec.family == "RSA" else EC_OPS)


def parse_key_ops(value: object, spec: KeySpec) -> list[str]:
    if value is None:
        return default_ops(spec)
    allowed = set(RSA_OPS if spec.family == "RSA" else EC_OPS)
    if not isinstance(value, list) or not all(isinstance(op, str) and op in allowed for op in value):
        raise bad_parameter(f"key_ops must be a list drawn from {sorted(allowed)}")
    return list(dict.fromkeys(value))


def generate(spec: KeySpec) -> PrivateKey:
    if spec.family == "RSA":
        assert spec.size is not None
        return rsa.generate_private_key(public_exponent=spec.public_exponent, key_size=spec.size)
    assert spec.curve is not None
    return ec.generate_private_key(CURVES[spec.curve])


def private_der(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_private_der(der: bytes) -> PrivateKey:
    key = serialization.load_der_private_key(der, password=None)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise bad_parameter("unsupported stored key type")
    return key


def public_jwk(key: PrivateKey, kty: str) -> dict[str, str]:
    """The public half as Key Vault returns it (``kid`` and ``key_ops`` are added by the caller)."""
    if isinstance(key, rsa.RSAPrivateKey):
        numbers = key.public_key().public_numbers()
        return {"kty": kty, "n": b64u(_int_bytes(numbers.n)), "e": b64u(_int_bytes(numbers.e))}
    pub = key.public_key().public_numbers()
    curve = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[key.curve.name]
    size = (key.curve.key_size + 7) // 8
    return {"kty": kty, "crv": curve, "x": b64u(_int_bytes(pub.x, size)), "y": b64u(_int_bytes(pub.y, size))}


def _oaep(alg: str) -> padding.AsymmetricPadding:
    if alg == "RSA-OAEP":
        return padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)  # noqa: S303
    if alg == "RSA-OAEP-256":
        return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    if alg == "RSA1_5":
        return padding.PKCS1v15()
    raise bad_parameter(f"Algorithm {alg} is not supported for this key")


def encrypt(key: PrivateKey, alg: str, plaintext: bytes) -> bytes:
    if not isinstance(key, rsa.RSAPrivateKey):
        raise bad_parameter("Encryption requires an RSA key")
    try:
        return key.public_key().encrypt(plaintext, _oaep(alg))
    except ValueError as exc:
        raise bad_parameter("The plaintext is too long for this key and algorithm") from exc


def decrypt(key: PrivateKey, alg: str, ciphertext: bytes) -> bytes:
    if not isinstance(key, rsa.RSAPrivateKey):
        raise bad_parameter("Decryption requires an RSA key")
    pad = _oaep(alg)
    if len(ciphertext) != key.key_size // 8:
        raise bad_parameter("The ciphertext length does not match the key size")
    try:
        return key.decrypt(ciphertext, pad)
    except ValueError as exc:
        raise bad_parameter("The parameter value could not be decrypted with this key") from exc


def _digest_for(alg: str, digest: bytes) -> hashes.HashAlgorithm:
    hash_alg = _HASHES.get(alg[2:])
    if alg[:2] not in ("RS", "PS", "ES") or hash_alg is None:
        raise bad_parameter(f"Algorithm {alg} is not supported")
    if len(digest) != hash_alg.digest_size:
        raise bad_parameter(f"Invalid digest length for {alg}: {len(digest)} bytes")
    return hash_alg


def _rsa_padding(alg: str, hash_alg: hashes.HashAlgorithm) -> padding.AsymmetricPadding:
    if alg.startswith("PS"):
        return padding.PSS(mgf=padding.MGF1(hash_alg), salt_length=hash_alg.digest_size)
    return padding.PKCS1v15()


def _check_ec_alg(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey, alg: str) -> int:
    want = _EC_ALG_CURVE.get(alg)
    have = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[key.curve.name]
    if want != have:
        raise bad_parameter(f"Algorithm {alg} does not match the key's curve {have}")
    return (key.curve.key_size + 7) // 8


def sign(key: PrivateKey, alg: str, digest: bytes) -> bytes:
    hash_alg = _digest_for(alg, digest)
    prehashed = utils.Prehashed(hash_alg)
    if isinstance(key, rsa.RSAPrivateKey):
        if alg.startswith("ES"):
            raise bad_parameter(f"Algorithm {alg} requires an EC key")
        return key.sign(digest, _rsa_padding(alg, hash_alg), prehashed)
    if not alg.startswith("ES"):
        raise bad_parameter(f"Algorithm {alg} requires an RSA key")
    size = _check_ec_alg(key, alg)
    r, s = utils.decode_dss_signature(key.sign(digest, ec.ECDSA(prehashed)))
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def verify(key: PrivateKey, alg: str, digest: bytes, signature: bytes) -> bool:
    hash_alg = _digest_for(alg, digest)
    prehashed = utils.Prehashed(hash_alg)
    try:
        if isinstance(key, rsa.RSAPrivateKey):
            if alg.startswith("ES"):
                raise bad_parameter(f"Algorithm {alg} requires an EC key")
            key.public_key().verify(signature, digest, _rsa_padding(alg, hash_alg), prehashed)
            return True
        if not alg.startswith("ES"):
            raise bad_parameter(f"Algorithm {alg} requires an RSA key")
        size = _check_ec_alg(key, alg)
        if len(signature) != 2 * size:
            return False
        r, s = int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big")
        key.public_key().verify(utils.encode_dss_signature(r, s), digest, ec.ECDSA(prehashed))
        return True
    except InvalidSignature:
        return False
