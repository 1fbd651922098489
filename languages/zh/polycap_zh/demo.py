"""Chinese words for the synthetic demo: 一个红色的圆形, 两个绿色的正方形, ...

Counts take the measure word 个 (两个, not 二个); colour terms are the single characters
红 绿 蓝 黄 and shape terms 圆 正方 三角 (三角 does not occur in 三个). One template ends in
full-width punctuation (，。), as Chinese is written.
"""

from __future__ import annotations

import random

from polycap.language import DemoLexicon

_COLOURS = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色"}
_SHAPES = {"circle": "圆形", "square": "正方形", "triangle": "三角形"}
_NUMBERS = {1: "一", 2: "两", 3: "三", 4: "四", 5: "五", 6: "六"}
_TEMPLATES = (
    "{number}个{colour}的{shape}",
    "{number}个{colour}{shape}",
    "图中有{number}个{colour}的{shape}",
    "深色背景上有{number}个{colour}的{shape}",
    "一张图片，上面有{number}个{colour}的{shape}。",
)


def describe(colour: str, shape: str, count: int, rng: random.Random) -> str:
    """One Chinese caption, e.g. 深色背景上有两个红色的圆形."""
    template = rng.choice(_TEMPLATES)
    number = _NUMBERS.get(count, str(count))
    return template.format(number=number, colour=_COLOURS[colour], shape=_SHAPES[shape])


CHINESE_DEMO = DemoLexicon(
    describe=describe,
    colour_terms={"red": "红", "green": "绿", "blue": "蓝", "yellow": "黄"},
    shape_terms={"circle": "圆", "square": "正方", "triangle": "三角"},
)
