"""Synthetic films and "trained-looking" untrained models, for the project's tests and benchmarks (in the
spirit of ``numpy.testing``): checks of inference and explanations need inputs with chest-film statistics
and models whose outputs depend on the film, without shipping data or training for minutes.

Nothing in the application imports this module.
"""

from __future__ import annotations

import numpy as np


def chest_like(h: int = 320, w: int = 288, seed: int = 0) -> np.ndarray:
    """A uint8 film with chest-radiograph structure (dark lungs, bright mediastinum and ribs, noise), so
    tests see realistic input statistics rather than white noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = h * 0.5, w * 0.5
    img = 200 - 120 * (np.exp(-(((xx - cx * 0.6) / (w * 0.16)) ** 2 + ((yy - cy) / (h * 0.3)) ** 2))
                       + np.exp(-(((xx - cx * 1.4) / (w * 0.16)) ** 2 + ((yy - cy) / (h * 0.3)) ** 2)))
    img += 25 * np.sin(yy / (h / 14.0) + rng.uniform(0, 6.28)) * (np.abs(xx - cx) > w * 0.1)
    img += rng.normal(0, 8, size=(h, w))
    return np.clip(img, 0, 255).astype(np.uint8)


def spread_outputs(model, x, logit_scale: float = 3.0, seed: int = 0, restat_bn: bool = True):
    """Make an untrained network behave like a trained one on the batch ``x`` (model inputs).

    A deep random network's pooled features barely depend on its input (activations collapse), so its
    probabilities are the same for every film and no fast/exact difference or explanation would show.
    With ``restat_bn`` the batch-norm statistics are re-estimated on ``x`` (activations normalised, as after
    training; leave it off to keep a pretrained backbone), then the last linear layer is set so the logits
    spread with standard deviation ``logit_scale`` across ``x``: confident, input-dependent predictions.
    Returns the model, in eval mode."""
    import torch
    from torch import nn

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if restat_bn and bns:
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the batch
        model.train()
        with torch.no_grad():
            model(x)
        for bn in bns:
            bn.momentum = 0.1
    model.eval()
    with torch.no_grad():
        lin = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        seen = []  # the last linear layer's input (multi-layer heads: not the pooled features)
        hook = lin.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach()))
        model(x)
        hook.remove()
        f = seen[-1]
        mu = f.mean(0)
        # random directions in feature space, scaled as a whole (not per feature: dividing by each
        # feature's spread would give near-constant features huge weights, which no trained head has)
        w = torch.randn(lin.out_features, lin.in_features, generator=torch.Generator().manual_seed(seed))
        spread = ((f - mu) @ w.T).std(0) + 1e-6
        lin.weight.copy_(w * (logit_scale / spread)[:, None])
        lin.bias.copy_(-(lin.weight @ mu))
    return model
