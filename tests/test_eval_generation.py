"""`latentserve eval generation --checkpoints`: GAN runs side by side, as the GAN ablation's table."""
import pytest


@pytest.mark.slow  # trains two tiny GANs
def test_eval_generation_puts_gan_runs_side_by_side_with_their_options(tmp_path, small_mnist, monkeypatch, capsys):
    from benchmarks import generation_quality, runs
    from training.train import train

    monkeypatch.setattr(runs, "load_mnist", lambda: small_mnist)
    config = {"channels": 8, "latent_dim": 12, "refine_channels": 4, "categories": 10, "epochs": 1}
    plain = train("dcgan", tmp_path / "plain", small_mnist, config, threads=1)
    no_stddev = train("dcgan", tmp_path / "no_stddev", small_mnist, {**config, "minibatch_stddev": False}, threads=1)
    generation_quality.runs([plain, no_stddev])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {tmp_path}")]
    assert len(rows) == 2 and "minibatch_stddev=False" in rows[1] and "minibatch_stddev" not in rows[0]
    assert all(len(row.split("|")) == 11 for row in rows)  # every column filled
