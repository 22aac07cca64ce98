"""A simulated sensor module for the demo: sends real inputs (scikit-learn's bundled digits images)."""
