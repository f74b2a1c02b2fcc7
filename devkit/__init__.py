"""What the tests, benchmarks, scripts and samples share and production never ships: synthetic
radiographs with known nodules. Not copied into any image."""
