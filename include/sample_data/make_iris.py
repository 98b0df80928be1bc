"""Generate ``iris.csv``: a deterministic, Iris-like dataset for the walking skeleton.

The real Iris data cannot be downloaded here, so this draws 50 rows per class from normal
distributions with the real per-class means and standard deviations (Fisher, 1936), seeded, and
rounded to one decimal like the original. The three classes are as separable as in the original
(setosa trivially, versicolor/virginica mostly by petal size), which is what the tabular
classifier recipe needs to show learning. Standard library only, so it runs anywhere:

    python include/sample_data/make_iris.py > include/sample_data/iris.csv
"""

from __future__ import annotations

import random
import sys

COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width", "species"]
# (mean, stdev) for sepal_length, sepal_width, petal_length, petal_width
CLASSES = {
    "setosa": [(5.006, 0.352), (3.428, 0.379), (1.462, 0.174), (0.246, 0.105)],
    "versicolor": [(5.936, 0.516), (2.770, 0.314), (4.260, 0.470), (1.326, 0.198)],
    "virginica": [(6.588, 0.636), (2.974, 0.322), (5.552, 0.552), (2.026, 0.275)],
}
ROWS_PER_CLASS = 50
SEED = 42


def rows(seed: int = SEED) -> list[list[str]]:
    rng = random.Random(seed)
    out: list[list[str]] = []
    for species, stats in CLASSES.items():
        for _ in range(ROWS_PER_CLASS):
            values = [max(0.1, round(rng.gauss(mu, sigma), 1)) for mu, sigma in stats]
            out.append([f"{v:.1f}" for v in values] + [species])
    return out


def main() -> None:
    sys.stdout.write(",".join(COLUMNS) + "\n")
    for row in rows():
        sys.stdout.write(",".join(row) + "\n")


if __name__ == "__main__":
    main()
