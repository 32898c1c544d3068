"""Scores from logits, and the calibration fitted when a model is trained (the finetune stage stores the
temperature with the model), apart from the test-time statistics of pipeline/evaluation/statistics.py, so that
changing those re-runs no training."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def fit_temperature(logits: np.ndarray, targets: np.ndarray, multi_label: bool) -> float:
    """Temperature scaling (Guo et al., 2017): the T > 0 that minimises the validation negative log-likelihood
    of softmax(logits / T) (sigmoid for label sets). One parameter, so the predicted labels do not change,
    only how confident the scores are. Neither sklearn nor transformers has it; LBFGS on log T, 50 steps."""
    import torch

    x = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(targets, dtype=torch.float64 if multi_label else torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=50)

    def nll() -> torch.Tensor:
        optimizer.zero_grad()
        scaled = x / log_t.exp()
        if multi_label:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(scaled, y)
        else:
            loss = torch.nn.functional.cross_entropy(scaled, y)
        loss.backward()
        return loss

    optimizer.step(nll)
    temperature = float(log_t.detach().exp())
    return temperature if np.isfinite(temperature) and temperature > 0 else 1.0
