"""The ``edb`` command line."""
