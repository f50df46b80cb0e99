"""What things cost: training-step, sampling, detector, metric and memory benchmarks."""
