"""``edb fleet``: many simulated edge devices on one machine against the local stack (issue 12)."""
