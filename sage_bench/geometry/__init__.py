"""Torch-only geometry shared by the algorithms and the analyses: polar factors, per-domain
gradients and their agreement, perturbations, and agreement-scaled noise."""

from sage_bench.geometry.domain_grads import (
    DOMAIN_GRAD_METHODS,
    DomainGradients,
    domain_gradients,
    grads_of_losses,
    mean_pairwise_cosine,
)
from sage_bench.geometry.flat import flatten, unflatten
from sage_bench.geometry.noise import add_gaussian_noise_, noise_scale
from sage_bench.geometry.perturb import (
    asam_perturbation,
    global_norm,
    perturbed,
    sam_perturbation,
    spectral_perturbation,
)
from sage_bench.geometry.polar import POLAR_METHODS, orthogonality_error, polar_factor

__all__ = [
    "DOMAIN_GRAD_METHODS",
    "POLAR_METHODS",
    "DomainGradients",
    "add_gaussian_noise_",
    "asam_perturbation",
    "domain_gradients",
    "flatten",
    "grads_of_losses",
    "global_norm",
    "mean_pairwise_cosine",
    "noise_scale",
    "orthogonality_error",
    "perturbed",
    "polar_factor",
    "sam_perturbation",
    "spectral_perturbation",
    "unflatten",
]
