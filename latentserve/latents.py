"""Latents by counter: sample i of a seed is a pure function of (seed, i), however a job is split."""
import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijective hash of 64-bit integers (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _uniform(bits: np.ndarray) -> np.ndarray:
    """Hashed integers -> floats in (0, 1]."""
    return 1.0 - (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _streams(seed: int, start: int, count: int) -> np.ndarray:
    """One 64-bit stream key per sample start..start+count-1 of `seed`."""
    return _mix(_mix(np.uint64(seed) + _GOLDEN) ^ (np.arange(start, start + count, dtype=np.uint64) * _GOLDEN))


def sample_latents(seed: int, start: int, count: int, dim: int, truncation: float | None = None) -> np.ndarray:
    """Standard-normal latents of samples start..start+count-1 of `seed`.

    Value j of sample i is a pure function of (seed, i, j): a counter-based generator (SplitMix64 hashes,
    Box-Muller), so a sample does not depend on how a job is split into requests or chunks, nor on the
    numpy version. With `truncation` t (BigGAN's truncation trick), values outside [-t, t] are drawn
    again from the next counters of the same (seed, i, j) until they fall inside.
    """
    with np.errstate(over="ignore"):
        stream = _streams(seed, start, count)
        element = np.arange(dim, dtype=np.uint64)

        def draw(streams: np.ndarray, elements: np.ndarray, attempt: int) -> np.ndarray:
            counter = (elements * np.uint64(1 << 20) + np.uint64(attempt)) * np.uint64(2)
            u1 = _uniform(_mix(streams + counter * _GOLDEN))
            u2 = _uniform(_mix(streams + (counter + np.uint64(1)) * _GOLDEN))
            return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)

        latents = draw(stream[:, None], element[None, :], 0)
        if truncation is not None:
            attempt = 0
            while (outside := np.nonzero(np.abs(latents) > truncation))[0].size:
                attempt += 1
                rows, columns = outside
                latents[rows, columns] = draw(stream[rows], element[columns], attempt)
    return latents.astype(np.float32)


def sample_uniforms(seed: int, start: int, count: int, dim: int, draw: int) -> np.ndarray:
    """Uniforms in (0, 1] of samples start..start+count-1 of `seed`, the `draw`-th set of `dim` of them
    (draw 0, 1, 2, ...: e.g. the steps of a Gibbs chain); value j a pure function of (seed, i, draw, j),
    drawn from streams apart from sample_latents' ones."""
    with np.errstate(over="ignore"):
        streams = _mix(_streams(seed, start, count) ^ _mix(np.uint64(draw) * _GOLDEN + np.uint64(1)))
        return _uniform(_mix(streams[:, None] + np.arange(dim, dtype=np.uint64) * _GOLDEN)).astype(np.float32)
