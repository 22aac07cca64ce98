"""The module's message endpoints and direct methods (routes in deployment.template.json name these)."""

INPUT_FRAMES = "frames"  # inputs to serve (JSON, .npy or .npz)
INPUT_PACKAGES = "packages"  # installer notifications: a new version may be ready
INPUTS: tuple[str, ...] = (INPUT_FRAMES, INPUT_PACKAGES)
OUTPUT_RESULTS = "results"
OUTPUT_EVENTS = "events"  # model loaded / failed -> telemetry_reporter
OUTPUT_RESULTS_UPSTREAM = "resultsUpstream"  # a sampled copy of the results (twin results.upstreamFraction)
OUTPUTS: tuple[str, ...] = (OUTPUT_RESULTS, OUTPUT_EVENTS, OUTPUT_RESULTS_UPSTREAM)
METHODS: tuple[str, ...] = ("status", "reload")
