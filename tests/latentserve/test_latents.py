"""Latents and uniforms from (seed, index), and truncation (latentserve/latents.py)."""
import numpy as np

from latentserve.latents import sample_latents, sample_uniforms


def test_a_sample_depends_only_on_seed_and_index():
    whole = sample_latents(7, 0, 100, 16)
    assert np.array_equal(whole[40:70], sample_latents(7, 40, 30, 16))
    assert np.array_equal(whole[99:], sample_latents(7, 99, 1, 16))
    assert not np.array_equal(whole[:1], sample_latents(8, 0, 1, 16))
    assert not np.array_equal(whole[0], whole[1])


def test_latents_are_standard_normal():
    values = sample_latents(0, 0, 20_000, 8).ravel()
    assert abs(values.mean()) < 0.02 and abs(values.std() - 1) < 0.02
    assert abs((np.abs(values) > 2).mean() - 0.0455) < 0.005  # two-sided normal tail


def test_truncation_keeps_values_inside_and_redraws_only_those_outside():
    plain, truncated = sample_latents(3, 0, 500, 32), sample_latents(3, 0, 500, 32, truncation=0.5)
    assert np.abs(truncated).max() <= 0.5
    inside = np.abs(plain) <= 0.5
    assert np.array_equal(truncated[inside], plain[inside])
    assert np.array_equal(truncated[200:300], sample_latents(3, 200, 100, 32, truncation=0.5))


def test_uniforms_depend_only_on_seed_index_and_draw_and_are_uniform():
    whole = sample_uniforms(7, 0, 100, 16, draw=3)
    assert np.array_equal(whole[40:70], sample_uniforms(7, 40, 30, 16, draw=3))
    assert not np.array_equal(whole, sample_uniforms(7, 0, 100, 16, draw=4))
    assert not np.array_equal(whole, sample_uniforms(8, 0, 100, 16, draw=3))
    values = sample_uniforms(0, 0, 20_000, 8, draw=0).ravel()
    assert values.min() > 0 and values.max() <= 1
    assert abs(values.mean() - 0.5) < 0.01 and abs((values < 0.1).mean() - 0.1) < 0.01
    # apart from the latents of the same samples
    latents = sample_latents(0, 0, 20_000, 8).ravel()
    assert abs(np.corrcoef(values, latents)[0, 1]) < 0.03
