"""benchmarks/end_to_end.py's verdicts and benchmarks/int8_agreement.py's rule, on made-up
measurements (no models, no timing)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks/ lives beside polycap/, not installed
    sys.path.insert(0, str(ROOT))
e2e = importlib.import_module("benchmarks.end_to_end")
agreement = importlib.import_module("benchmarks.int8_agreement")


def side(name: str, images: int, seconds: float) -> object:
    return e2e.Side(name, lambda paths, lengths: [], images, [seconds], [seconds * 1.9])


SIDES = [
    side("polycap, GPT-2 small, PyTorch", 256, 25.6),  # 10/s
    side("polycap, GPT-2 small, ONNX Runtime, int8 encoder", 256, 12.8),  # 20/s
    side("polycap, GPT-2 small, ONNX Runtime int8", 256, 6.4),  # 40/s
    side("polycap, GPT-2 medium size (24 x 1024), PyTorch", 256, 51.2),  # 5/s
    side("SmolVLM-256M", 4, 4.0),  # 1/s
    side("Florence-2-base", 4, 2.0),  # 2/s
]
COLD = {
    "polycap caption, one image": {"first_line_s": 6.0, "peak_rss_mb": 1900.0},
    "polycap caption -m ONNX-INT8-ENCODER-EXPORT, one image": {
        "first_line_s": 4.0,
        "peak_rss_mb": 1400.0,
    },
    "polycap caption -m ONNX-INT8-EXPORT, one image": {"first_line_s": 2.0, "peak_rss_mb": 900.0},
}


def test_int8_counts_only_where_its_captions_were_kept() -> None:
    found = {
        "images": 100,
        "runtimes": {
            "PyTorch": {"same": 100, "seconds": 1.0},
            "ONNX Runtime, int8 encoder": {"same": 99, "seconds": 1.0},
            "ONNX Runtime int8": {"same": 90, "seconds": 1.0},
        },
    }
    kept = agreement.kept(found)
    assert kept == ("ONNX Runtime, int8 encoder",)
    assert "int8 encoder 99/100 identical (99.0%): kept" in agreement.note(found)
    lines = "\n".join(e2e.goal_lines(SIDES, COLD, quick=False, kept=kept))
    assert "int8 encoder): 20.0: MISSED" in lines  # 40/s of full int8 is not counted
    assert ">= 10x SmolVLM-256M at equal tokens: 20.0x: met" in lines
    assert ">= 5x Florence-2-base at equal tokens: 10.0x: met" in lines
    assert "medium-sized decoder: 5.0: MISSED" in lines
    assert "(polycap caption -m ONNX-INT8-ENCODER-EXPORT, one image): 4.00 s: MISSED" in lines
    assert "1,400 MB: MISSED" in lines


def test_with_every_int8_kept_the_fastest_way_is_judged() -> None:
    kept = ("ONNX Runtime, int8 encoder", "ONNX Runtime int8")
    lines = "\n".join(e2e.goal_lines(SIDES, COLD, quick=False, kept=kept))
    assert "ONNX Runtime int8): 40.0: met" in lines
    assert "ONNX-INT8-EXPORT, one image): 2.00 s: met" in lines
    assert "900 MB: met" in lines
    quick = "\n".join(e2e.goal_lines(SIDES, COLD, quick=True, kept=kept))
    assert "met" not in quick.replace("not judged", "") and "not judged (--quick)" in quick


def test_cores_busy_is_cpu_over_wall_of_the_best_run() -> None:
    timed = e2e.Side("x", lambda paths, lengths: [], 4, [2.0, 1.0], [3.0, 1.8])
    assert e2e.busy(timed) == 1.8


def test_the_section_text_has_every_part(tmp_path: Path) -> None:
    from types import SimpleNamespace

    run_plan = e2e.Plan(256, 4, 64, 3, tmp_path, lengths=[12] * 255 + [36])
    profile = {"encode": 20.0, "caption": 10.0}
    limits = {
        "encoder_gflops_per_image": 8.7,
        "encoder_images_per_s": 20.0,
        "decoder_mb_per_step": 498.0,
        "decoder_steps": 100,
        "decoder_row_steps": 3000,
        "decoder_read_s": 2.5,
        "decoder_compute_s": 7.0,
        "decoder_captions_per_s": 36.0,
        "captions_per_s": 12.9,
    }
    machine = {"gflops": 200.0, "copy_gb_s": 20.0, "threads": 2}
    found = {
        "images": 240,
        "runtimes": {
            "PyTorch": {"same": 240, "seconds": 1.0},
            "ONNX Runtime, int8 encoder": {"same": 240, "seconds": 1.0},
            "ONNX Runtime int8": {"same": 24, "seconds": 1.0},
        },
    }
    options = SimpleNamespace(quick=False)
    text = e2e.markdown(SIDES, run_plan, (profile, limits, COLD, machine, found), options, 2)
    assert "| polycap, GPT-2 small, PyTorch | 256 | 10.00 | 10.0x | 5.0x | 0.190 | 1.90 |" in text
    assert "| polycap caption, one image | 6.00 s | n/a | 1,900 MB |" in text
    assert "encoding 20.00 s (67%), captioning the features 10.00 s (33%)" in text
    assert "8.7 GFLOPs per image" in text and "78% of the bound" in text
    assert "ONNX Runtime int8 24/240 identical (10.0%): NOT kept" in text
    assert text.count("- goal: ") == 6
