"""Online estimate of the output length per tier.

Admission projects each request to its expected output length, so a stale constant distorts every
decision (a third-party port saw one off by 3.6x). The estimate is the mean of the last ``window``
completed requests of the tier, starting from a prior until enough have been seen.
"""

from __future__ import annotations

from collections import deque


class OutputLengthEstimator:
    def __init__(
        self, n_tiers: int, prior: float = 256.0, window: int = 512, min_samples: int = 16
    ) -> None:
        if prior <= 0 or window < 1 or min_samples < 1:
            raise ValueError(
                "output-length estimator needs prior > 0, window >= 1, min_samples >= 1"
            )
        self.prior = prior
        self.min_samples = min_samples
        self._window = [deque[int](maxlen=window) for _ in range(n_tiers)]
        self._sum = [0] * n_tiers

    def observe(self, tier: int, output_tokens: int) -> None:
        w = self._window[tier]
        if len(w) == w.maxlen:
            self._sum[tier] -= w[0]
        w.append(output_tokens)
        self._sum[tier] += output_tokens

    def expected(self, tier: int, max_tokens: int | None = None) -> float:
        """The tier's mean output, capped by the request's own ``max_tokens`` when it has one."""
        w = self._window[tier]
        if len(w) < self.min_samples:
            # blend the prior with what has been seen so far
            mean = (self.prior * (self.min_samples - len(w)) + self._sum[tier]) / self.min_samples
        else:
            mean = self._sum[tier] / len(w)
        return mean if max_tokens is None else min(mean, float(max_tokens))
