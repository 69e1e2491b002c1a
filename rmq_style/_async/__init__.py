"""The asyncio front: hand-written; rmq_style/_sync is generated from it by scripts/unasync.py."""
