"""Metric implementations behind ``polycap.eval.runner`` (one module per family).

``reference``: BLEU, chrF (sacrebleu), ROUGE-L, CIDEr-D, METEOR, SPICE (pycocoevalcap);
``wer``: word error rate; ``clipscore``: CLIPScore / RefCLIPScore; ``diversity``: distinct-n
and novelty (used by ``polycap compare``).
"""
