"""The key release service: evidence + policy checks, then Key Vault unwrapKey, then the DEK wrapped
to the TEE's one-time key. Plain async handlers (:mod:`key_release_service.service`) served by Azure
Functions (``cloud/key_release/function_app.py``) and by a local aiohttp host
(:mod:`key_release_service.host`, ``python -m key_release_service serve``). See docs/key-release.md.
"""
