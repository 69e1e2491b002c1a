"""The push runtime: PushConsumer and what it is made of (docs/architecture.md)."""
