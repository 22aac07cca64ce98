"""The module's message endpoints and direct methods (routes in deployment.template.json name these)."""

INPUT_EVENTS = "events"
INPUT_RESULTS = "results"
INPUTS: tuple[str, ...] = (INPUT_EVENTS, INPUT_RESULTS)
OUTPUT_TELEMETRY = "telemetry"  # metrics windows -> $upstream
OUTPUT_ALERTS = "alerts"  # alerts -> $upstream, at once, messageType=alert
OUTPUTS: tuple[str, ...] = (OUTPUT_TELEMETRY, OUTPUT_ALERTS)
METHODS: tuple[str, ...] = ("status", "flush")
