"""Module images: the build plan (pure), the builder (Docker Engine API) and ``edb images``."""
