"""X.509 helpers: certificate profiles, chain verification against pinned roots, and our OIDs."""
