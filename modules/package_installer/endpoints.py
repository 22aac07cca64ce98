"""The module's message endpoints and direct methods (routes in deployment.template.json name these)."""

INPUTS: tuple[str, ...] = ()
OUTPUT_EVENTS = "events"  # every state transition, install and failure -> telemetry_reporter
OUTPUT_NOTIFICATIONS = "notifications"  # installed/removed packages -> inference_runner
OUTPUTS: tuple[str, ...] = (OUTPUT_EVENTS, OUTPUT_NOTIFICATIONS)
METHODS: tuple[str, ...] = ("status", "retry", "uninstall")
