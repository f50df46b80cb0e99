"""The GPU battery (`make gpu-check`): its sections, its report, and the wheels it needs."""
