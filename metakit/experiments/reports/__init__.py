"""What runs report: evaluation tables, figures, reproductions, benchmarks."""
