"""`latentserve bench analogies`: M2's analogies (Kingma et al. 2014, figure 1b) through the gateway, as
docs/images/m2_analogies.png for the README: each row one test digit (first column; the first of each
class in the test split), its style z from Encode (q(z|x,y) with y the classifier's guess), then that z
drawn with classes 0 to 9 by Generate.
"""
from pathlib import Path

import numpy as np

from benchmarks.gateway import gateway_process
from latentserve.client import Client
from latentserve.datasets import load_mnist
from latentserve.grid import save_grid

OUT = Path("docs/images/m2_analogies.png")
CLASSES = 10


def main(repository_root: Path) -> None:
    test = load_mnist().test
    digits = np.stack([test.images[np.flatnonzero(test.labels == label)[0]].reshape(28, 28) for label in range(CLASSES)])
    with gateway_process(repository_root) as (target, _), Client(target, timeout=60) as client:
        styles = client.encode(digits, model="m2")
        drawn = client.generate_from(np.repeat(styles.values, CLASSES, axis=0), model="m2", labels=list(range(CLASSES)) * len(digits))
    rows = np.concatenate([digits[:, None], drawn.images.reshape(len(digits), CLASSES, 28, 28)], axis=1)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_grid(rows.reshape(-1, 1, 28, 28), OUT, columns=CLASSES + 1)
    print(f"{OUT}: m2 v{drawn.model.version}, {len(digits)} test digits' styles drawn with every class")
