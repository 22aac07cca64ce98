"""The Enclave Device Blueprint package library.

Used by both sides: the cloud build pipeline (build, sign, wrap) and the device (verify, key release
client, TEE client). Nothing in here performs network I/O unless its module name says so.
"""

__version__ = "0.1.0"
