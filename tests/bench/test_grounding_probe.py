"""The image pipeline end to end: a fresh tiny VLM learns to answer from its image
(bench/grounding_probe.py). A break anywhere between the pixels and the answer token
(processor, patch order, merger, image-token placement, M-RoPE, the fused loss) leaves
the grounding gap at 0. Slow: 120 CPU training steps (gap ~0.5 there; 0.000 when the model ignores its images)."""

import pytest

from ftib.bench.grounding_probe import probe_records, run_probe


def test_probe_answers_depend_only_on_the_circle_colour():
    import random

    recs = probe_records(40, random.Random(0))
    for messages, (img,), rid in recs:
        colours = {c for _, c in img.getcolors(64 * 64)}
        red = any(c[0] > 200 and c[1] < 80 for c in colours)
        assert (messages[1]["content"][0]["text"] == "是。") == red == rid.endswith("red")


@pytest.mark.slow
def test_a_fresh_tiny_vlm_learns_to_look():
    points = run_probe("tiny-qwen3-vl", steps=120, every=120)
    assert points[-1].gap > 0.3, points
