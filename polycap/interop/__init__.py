"""Models in and out: ClipCap import, ONNX export and runtime, Hugging Face export, the Hub."""
