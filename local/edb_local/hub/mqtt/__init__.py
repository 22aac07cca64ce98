"""MQTT 3.1.1 over TLS: the strict codec and the per-connection protocol."""
