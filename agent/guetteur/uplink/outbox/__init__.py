"""The durable outbox: store-and-forward of everything the gateway sends the centre."""
