"""Hyperparameter spaces of the aggregators and loss weightings (``HParam``: default + sampler).

Defaults are those of the run scripts behind Table 2 (the code's argument defaults where the
scripts pass nothing); search ranges are stated where a paper or script gives one:

- DWA: ``T = 2`` (MTAN paper and ``--dwa-temp``); no search.
- UW: Adam learning rate 0.025 for the log-variances (``--method-params-lr``); no search.
- CAGrad: ``c = 0.4`` (CAGrad's ``run.sh`` for NYU-v2 and Cityscapes; the Cityscapes script
  also runs 0.6); searched over {0.2, 0.4, 0.6, 0.8} around those.
- Nash-MTL: 20 CCCP iterations, weights re-solved every step (``--nashmtl-optim-niter``,
  ``--update-weights-every``); no search.
- MoCo: LibMTL's defaults (``beta`` 0.5, ``beta_sigma`` 0.5, ``gamma`` 0.1, ``gamma_sigma`` 0.5,
  ``rho`` 0); no search.
- FAMO: logits' Adam learning rate 0.025; weight decay ``gamma`` 0.001 (NYU-v2 ``run.sh``, also
  CelebA and QM9) or 0.01 (Cityscapes ``run.sh``), searched over {1e-4, 1e-3, 1e-2}, a decade
  either side of the NYU-v2 value.
- SI, RLW, PCGrad, GradDrop, IMTL-G: no hyperparameters.
"""

from __future__ import annotations

from collections.abc import Callable

from sage_bench.hparams import HParam, choice, const


def no_hparams(dataset: str | None = None) -> dict[str, HParam]:
    return {}


def dwa_space(dataset: str | None = None) -> dict[str, HParam]:
    return {"temperature": HParam(2.0, const(2.0), "DWA's softmax temperature T")}


def uw_space(dataset: str | None = None) -> dict[str, HParam]:
    return {"lr": HParam(0.025, const(0.025), "Adam learning rate of the log-variances")}


def cagrad_space(dataset: str | None = None) -> dict[str, HParam]:
    return {
        "c": HParam(0.4, choice([0.2, 0.4, 0.6, 0.8]), "CAGrad's radius around the mean gradient")
    }


def nashmtl_space(dataset: str | None = None) -> dict[str, HParam]:
    return {
        "optim_niter": HParam(20, const(20), "CCCP iterations per weight update"),
        "update_weights_every": HParam(1, const(1), "re-solve the weights every this many steps"),
    }


def moco_space(dataset: str | None = None) -> dict[str, HParam]:
    return {
        "beta": HParam(0.5, const(0.5), "step size of the tracking variables"),
        "beta_sigma": HParam(0.5, const(0.5), "decay exponent of beta"),
        "gamma": HParam(0.1, const(0.1), "step size of the task weights"),
        "gamma_sigma": HParam(0.5, const(0.5), "decay exponent of gamma"),
        "rho": HParam(0.0, const(0.0), "l2 regularisation of the weights' update"),
    }


def famo_space(dataset: str | None = None) -> dict[str, HParam]:
    gamma = 0.01 if dataset == "Cityscapes" else 0.001
    return {
        "gamma": HParam(gamma, choice([1e-4, 1e-3, 1e-2]), "weight decay of FAMO's logits"),
        "lr": HParam(0.025, const(0.025), "Adam learning rate of FAMO's logits"),
    }


#: Each method's space as a function of the data set name (``"NYUv2"``, ``"Cityscapes"``, ...).
METHOD_SPACES: dict[str, Callable[[str | None], dict[str, HParam]]] = {
    "si": no_hparams,
    "rlw": no_hparams,
    "dwa": dwa_space,
    "uw": uw_space,
    "pcgrad": no_hparams,
    "graddrop": no_hparams,
    "imtl": no_hparams,
    "cagrad": cagrad_space,
    "nashmtl": nashmtl_space,
    "moco": moco_space,
    "famo": famo_space,
}
