"""The module's message endpoints (routes in deployment.template.json name these)."""

INPUTS: tuple[str, ...] = ()
OUTPUT_FRAMES = "frames"
OUTPUTS: tuple[str, ...] = (OUTPUT_FRAMES,)
METHODS: tuple[str, ...] = ()
