"""Scripts around the grpose package, grouped by purpose (tools/README.md)."""
