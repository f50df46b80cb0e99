"""What things score: accuracy studies beyond `make demo` (RMPG, samplers, VAE ceiling)."""
