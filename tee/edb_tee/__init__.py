"""The TEE-simulated region: a separate process (``edb tee serve``) that alone holds the device's
private keys, unwrapped content keys and plaintext models, reached over a Unix socket through the
GlobalPlatform-shaped protocol of :mod:`edb.tee`.

Layout: :mod:`.provisioning` (factory: HUK, attestation key, manufacturer CA), :mod:`.storage`
(sealed objects + replay-protected store), :mod:`.identity` (keys and evidence), :mod:`.install`
(install transactions), :mod:`.models` (ONNX Runtime from memory), :mod:`.server` (socket, peer
credentials, dispatch), :mod:`.tas` (trusted-app command adapters), :mod:`.hardening`,
:mod:`.measurement`, :mod:`.cli`.
"""

TEE_IMPL = "edb-tee-sim"
