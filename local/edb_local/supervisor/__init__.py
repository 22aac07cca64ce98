"""The supervisor behind ``edb local up | down | status``: the stack's components as one table."""
