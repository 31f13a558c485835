"""What the tests and benchmarks use to check the project: random tiny models written to disk
(`tiny_models`) and the import-layer checker (`layers`). Nothing in the library imports it."""
