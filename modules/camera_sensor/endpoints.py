"""The module's message endpoints: none. Its images go to the inference runner over the Open
Inference Protocol (HTTP on the module network), not through edgeHub, whose messages stop at
256 KB; its counts go to its reported properties."""

INPUTS: tuple[str, ...] = ()
OUTPUTS: tuple[str, ...] = ()
METHODS: tuple[str, ...] = ()
