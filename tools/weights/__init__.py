"""Weights in and out of grpose: released checkpoints imported, trained methods exported."""
