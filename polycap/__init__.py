"""polycap: multilingual ClipCap-style image captioning with language packs as plugins."""

__version__ = "0.1.0"
