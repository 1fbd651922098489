"""The one caption path: the CLI, the Python API, the server, compare and eval all call it."""
