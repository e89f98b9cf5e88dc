"""A job's folder name is the hash of its identity: existing jobs must keep their folders.

The hashes below were computed before any key was added to the configuration; a new key at the
value that reproduces the old behaviour must leave them unchanged. Never edit a pinned hash: a
change here renames every existing job folder, so finished jobs would run again.

One default changed what jobs compute: ``perturbation=auto`` lets algorithms that take gradients
at perturbed weights (SAM, SAGE, ...) run in bf16 on CUDA where a measurement says that is
faithful. Their jobs at the defaults are new jobs; the old ones are ``perturbation=difference``,
which the pins of those algorithms name.
"""

from __future__ import annotations

import pytest

from sage_bench.config import load_job

PINNED = {
    "RotatedDigits ERM, defaults": (
        ["dataset=RotatedDigits", "algorithm=ERM", "test_envs=[0]"],
        "209214d758ea975b6fccb01c27b5fe70",
    ),
    "ColoredDigits SAGE, hyperparameter overrides": (
        [
            "dataset=ColoredDigits", "algorithm=SAGE", "test_envs=[2]", "trial_seed=1", "hparams_seed=3",
            "hparams.rho=0.01", "hparams.gamma=0.001", "steps=300", "perturbation=difference",
        ],
        "b1bb4214486fa7d2a43211e0a9c66e17",
    ),
    "PACS ERM, the paper's setting": (
        # the preset's computation changed once (12 images per domain, float32 without TF32,
        # training domains evaluated without augmentation): this pin is of that preset
        ["experiment=paper_domainbed", "dataset=PACS", "algorithm=ERM", "test_envs=[0]", "trial_seed=0"],
        "5004b2faaaa4a592fec136c9203cbc2e",
    ),
    "DomainNet SAM, two test environments": (
        ["dataset=DomainNet", "algorithm=SAM", "test_envs=[1,2]", "trial_seed=2", "perturbation=difference"],
        "108b49425f3bd8886ff82291fde725f5",
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(PINNED))
def test_existing_jobs_keep_their_folder(name):
    overrides, expected = PINNED[name]
    assert load_job(overrides).job_id == expected


IMAGES = PINNED["DomainNet SAM, two test environments"]  # an image data set at DomainBed's defaults


@pytest.mark.parametrize("mode", ["auto", "off", "require"])
def test_the_evaluation_cache_is_never_part_of_the_identity(mode):
    overrides, expected = IMAGES
    assert load_job([*overrides, f"dataset.eval_cache={mode}"]).job_id == expected


@pytest.mark.parametrize(
    "key, legacy, other",
    [("dataset.eval_augment", "true", "false"), ("eval_splits", "all", "selection")],
)
def test_new_keys_enter_the_identity_only_away_from_the_old_behaviour(key, legacy, other):
    overrides, expected = IMAGES
    assert load_job([*overrides, f"{key}={legacy}"]).job_id == expected
    changed = load_job([*overrides, f"{key}={other}"])
    assert changed.job_id != expected


PERTURBED = ["ColoredDigits SAGE, hyperparameter overrides", "DomainNet SAM, two test environments"]


@pytest.mark.parametrize("name", PERTURBED)
def test_perturbation_enters_the_identity_where_it_changes_the_computation(name):
    overrides, expected = PINNED[name]
    old = [o for o in overrides if o != "perturbation=difference"]
    # auto in float32 is the float32 difference: the old job
    assert load_job([*old, "perturbation=auto", "precision.train=fp32"]).job_id == expected
    ids = {
        load_job(old).job_id,  # the default, auto: may run in bf16 on CUDA
        load_job([*old, "perturbation=linearized"]).job_id,
        load_job([*old, "perturbation.tolerance=0.05"]).job_id,
        load_job([*old, "perturbation=linearized", "precision.train=bf16"]).job_id,
    }
    assert len(ids) == 4 and expected not in ids
    # the tolerance only matters to auto
    assert load_job([*overrides, "perturbation.tolerance=0.05"]).job_id == expected
    assert load_job([*old, "perturbation=linearized", "perturbation.tolerance=0.05"]).job_id == load_job(
        [*old, "perturbation=linearized"]
    ).job_id


@pytest.mark.parametrize("name", [n for n in PINNED if n not in PERTURBED])
@pytest.mark.parametrize("method", ["auto", "difference", "linearized"])
def test_perturbation_is_no_part_of_other_algorithms_jobs(name, method):
    overrides, expected = PINNED[name]
    assert load_job([*overrides, f"perturbation={method}"]).job_id == expected


@pytest.mark.parametrize("algorithm", ["SAGE-LS", "SAMO-MGDA", "LS"])
def test_multi_task_jobs_keep_their_identity_under_auto(algorithm):
    base = ["dataset=DigitScenes", f"algorithm={algorithm}"]
    difference = load_job([*base, "perturbation=difference"]).job_id
    assert load_job(base).job_id == difference  # multi-task auto trains in float32: the difference
    linearized = load_job([*base, "perturbation=linearized"]).job_id
    assert (linearized == difference) is (algorithm == "LS")
