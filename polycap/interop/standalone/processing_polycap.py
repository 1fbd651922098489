"""The processor of a polycap export: images in, captions out.

Remote code of a ``polycap export --to hf`` folder; it must not import polycap.
``processor(images=...)`` gives the model's ``pixel_values`` (the export's image processor);
``batch_decode(ids)`` gives captions: the tokenizer's text with the language's spacing rule
(``caption_text`` in ``processor_config.json``: Unicode form, lower-casing, spaces removed
between CJK characters, runs of spaces folded) applied as polycap applies it.
"""

from __future__ import annotations

from typing import Any

from transformers import ProcessorMixin

from .steps_polycap import clean_caption


class PolycapProcessor(ProcessorMixin):
    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        caption_text: Any = None,
        **kwargs: Any,
    ) -> None:
        self.caption_text = caption_text or {}
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(self, images: Any = None, text: Any = None, **kwargs: Any) -> Any:
        """``images`` -> ``pixel_values`` (``return_tensors="pt"`` for the model)."""
        if images is None:
            raise ValueError("a polycap processor needs images=")
        return self.image_processor(images, return_tensors=kwargs.get("return_tensors"))

    def clean(self, text: str) -> str:
        """One decoded caption as polycap writes it."""
        return clean_caption(text, self.caption_text)

    def batch_decode(self, ids: Any, skip_special_tokens: bool = True, **kwargs: Any) -> list[str]:
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=skip_special_tokens, **kwargs)
        return [self.clean(text) for text in texts]

    def decode(self, ids: Any, skip_special_tokens: bool = True, **kwargs: Any) -> str:
        return self.clean(
            self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens, **kwargs)
        )
