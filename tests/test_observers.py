"""The entropy (KL) observer's threshold search on distributions whose right answer is known.

Each distribution is fed in several batches, so torch's histogram is re-binned as its range grows,
as in calibration. The first version of the observer failed the ReLU and the outlier cases (it
clipped ReLU outputs at a quarter of their maximum, and the short side of an asymmetric range
to reach the outliers of the long one).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import pytest
import torch

from fdq.calibration.observers import EntropyObserver, activation_observer


def kl_range(values: np.ndarray, batches: int = 8) -> Tuple[float, float]:
    """The (min, max) EntropyObserver picks for ``values`` (shuffled, fed in ``batches``)."""
    observer = activation_observer("entropy")(dtype=torch.quint8, qscheme=torch.per_tensor_affine,
                                              quant_min=0, quant_max=255)
    assert isinstance(observer, EntropyObserver)
    for batch in np.array_split(np.random.default_rng(1).permutation(values), batches):
        observer(torch.from_numpy(batch.astype(np.float32)))
    lo, hi = observer._non_linear_param_search()
    return float(lo), float(hi)


def test_gaussian_with_far_outliers_clips_the_outliers_and_keeps_the_bulk() -> None:
    rng = np.random.default_rng(0)
    bulk = rng.normal(size=200_000)
    lo, hi = kl_range(np.concatenate([bulk, rng.uniform(20.0, 30.0, 20)]))
    assert hi < 8.0                       # the 0.01 % of outliers at 20-30 sigma are clipped ...
    assert hi > 3.5 and lo < -3.5         # ... the bulk is not, on either side
    assert lo >= bulk.min() - 0.05        # the short side is never stretched


def test_asymmetric_range_loses_its_long_tail_first() -> None:
    """Like the signed head outputs: a short negative side and a sparse long positive tail."""
    rng = np.random.default_rng(2)
    values = np.concatenate([rng.normal(size=150_000), rng.exponential(0.5, 1_500) + 3.0, rng.uniform(15, 20, 15)])
    lo, hi = kl_range(values)
    assert lo == pytest.approx(values.min(), abs=0.05)   # nothing of the short side is clipped
    assert 4.0 < hi < 15.0


def test_relu_output_with_many_zeros_keeps_its_tail() -> None:
    """Half the values are exact zeros, as after a ReLU: 0 is exact on every grid, so they must not
    pull the range in (the first version clipped at a quarter of the maximum)."""
    rng = np.random.default_rng(3)
    values = np.maximum(rng.laplace(size=200_000), 0.0)
    lo, hi = kl_range(values)
    assert lo == 0.0
    assert np.quantile(values, 0.999) < hi <= values.max() + 1e-6 and hi > values.max() / 2


def test_uniform_distribution_is_not_clipped() -> None:
    values = np.random.default_rng(4).uniform(-1.0, 3.0, 200_000)
    lo, hi = kl_range(values)
    assert lo == pytest.approx(values.min(), abs=0.01)
    assert hi == pytest.approx(values.max(), abs=0.02)


def test_exact_zeros_are_counted_over_batches() -> None:
    observer = EntropyObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine, quant_min=0, quant_max=255)
    observer(torch.tensor([0.0, 1.0, 0.0, 2.0]))
    observer(torch.tensor([0.0, 5.0]))
    assert int(observer.zeros) == 3
    scale, zero_point = observer.calculate_qparams()
    assert int(zero_point) == 0 and float(scale) > 0
