"""AMQP 1.0 on the hub's address:5671: the Event Hub-compatible endpoint (the built-in `events`
endpoint: CBS, `$management`, partition receivers) and the service side of cloud-to-device
messages (`/messages/devicebound`). See docs/iothub-standin.md."""
