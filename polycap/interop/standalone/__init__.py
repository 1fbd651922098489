"""Files that ``polycap export`` copies into an export, to run it without polycap.

Nothing here imports polycap: ``configuration_polycap``, ``modeling_polycap``,
``image_processing_polycap`` and ``processing_polycap`` are the Hugging Face remote code of a
``--to hf`` export (``AutoModel`` / ``AutoProcessor`` with ``trust_remote_code=True``);
``run_onnx`` captions images with a ``--to onnx`` export (numpy, onnxruntime, tokenizers,
Pillow); ``steps_polycap`` is open_clip's eval transform in Pillow and numpy, shared by
both; ``vllm_client`` sends a prefix to a vLLM server of the exported decoder.
"""
