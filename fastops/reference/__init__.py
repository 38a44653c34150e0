"""Plain-PyTorch references: independent transcriptions of the original projects' conventions.

Used by `impl="reference"`, by the tests as the expected results, and by the benchmarks as anchors where the
original project has no library function to call.
"""
