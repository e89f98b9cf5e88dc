"""Literal transcriptions of one training step of each multi-task row, for tests only.

Sources (pinned): the trainers ``experiments/nyuv2/trainer.py`` of ``AvivNavon/nash-mtl`` cce1840
(STL, LS, MGDA) and ``OptMN-Lab/fairgrad`` 2b8cba1 (FairGrad), ``experiments/{nyuv2,cityscapes}/
trainer_samo.py``, ``experiments/nyuv2/utils.py`` (``GradEstimator``), ``experiments/utils.py``
(``enable/disable_running_stats``) and ``methods/weight_methods.py`` (``*WithSAMO``) of
``OptMN-Lab/SAMO`` 3b686c9. The model is the lineage's ``SegNetMtan`` (``tests/reference_mtan``):
``model(x, return_representation=True)`` gives ``([seg, depth, normal], features)``.

Adaptations, each forced and stated where it happens:

- nash-mtl's ``MGDA`` calls ``torch.autograd.grad(loss, shared_parameters)``, which raises on
  MTAN (a task's loss does not reach the other tasks' attention); it is called with
  ``allow_unused=True`` and a missing gradient taken as zeros.
- SAMO's stage II calls ``model.zero_grad()``; under torch >= 2 that sets gradients to ``None``
  and ``grad2vec`` then skips those parameters and misaligns the task vectors. The trainer was
  written for torch 1.x, where ``zero_grad()`` zeroed in place: ``set_to_none=False`` here.
- ``torch.Tensor(...)`` allocations follow the default dtype; the tests run these steps with
  float64 as the default dtype, so they stay float64 as the model.
"""

from __future__ import annotations

from collections import defaultdict
from copy import deepcopy

import numpy as np
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from tests.reference.mtl import MinNormSolver, calc_loss, fairgrad_w

TASK_TYPES = ["semantic", "depth", "normal"]


def _losses(pred, targets):
    return torch.stack([calc_loss(pred[i], targets[i], TASK_TYPES[i]) for i in range(len(targets))])


# --------------------------------------------------------------------------------------------
# STL, LS, MGDA (nash-mtl), FairGrad (fairgrad)
# --------------------------------------------------------------------------------------------


def stl_step(model, optimizer, x, targets, main_task):
    model.train()
    optimizer.zero_grad()
    train_pred, features = model(x, return_representation=True)
    losses = _losses(train_pred, targets)
    loss = losses[main_task]
    loss.backward()
    optimizer.step()


def ls_step(model, optimizer, x, targets):
    model.train()
    optimizer.zero_grad()
    train_pred, features = model(x, return_representation=True)
    losses = _losses(train_pred, targets)
    loss = torch.sum(losses * torch.ones((len(targets),)))
    loss.backward()
    optimizer.step()


def mgda_step(model, optimizer, x, targets):
    model.train()
    optimizer.zero_grad()
    train_pred, features = model(x, return_representation=True)
    losses = _losses(train_pred, targets)
    n_tasks = len(targets)
    params = list(model.shared_parameters())
    grads = {}
    for i, loss in enumerate(losses):
        g = list(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))  # adapted
        g = [torch.zeros_like(p) if gi is None else gi for p, gi in zip(params, g, strict=True)]  # adapted
        grads[i] = [torch.flatten(grad) for grad in g]
    gn = {t: 1.0 for t in grads}
    for t in range(n_tasks):
        for gr_i in range(len(grads[t])):
            grads[t][gr_i] = grads[t][gr_i] / gn[t]
    sol, min_norm = MinNormSolver.find_min_norm_element([grads[t] for t in range(len(grads))])
    sol = sol * n_tasks
    weighted_loss = sum([losses[i] * sol[i] for i in range(len(sol))])
    weighted_loss.backward()
    optimizer.step()
    return sol


def fairgrad_step(model, optimizer, x, targets, alpha, max_norm=1.0):
    model.train()
    optimizer.zero_grad()
    train_pred, features = model(x, return_representation=True)
    losses = _losses(train_pred, targets)
    n_tasks = len(targets)
    shared_parameters = list(model.shared_parameters())

    grad_dims = []
    for param in shared_parameters:
        grad_dims.append(param.data.numel())
    grads = torch.Tensor(sum(grad_dims), n_tasks)
    for i in range(n_tasks):
        if i < n_tasks - 1:
            losses[i].backward(retain_graph=True)
        else:
            losses[i].backward()
        grads[:, i].fill_(0.0)
        cnt = 0
        for param in shared_parameters:
            grad = param.grad
            if grad is not None:
                grad_cur = grad.data.detach().clone()
                beg = 0 if cnt == 0 else sum(grad_dims[:cnt])
                en = sum(grad_dims[: cnt + 1])
                grads[beg:en, i].copy_(grad_cur.data.view(-1))
            cnt += 1
        for p in shared_parameters:
            p.grad = None

    GG = grads.t().mm(grads).cpu()
    w_cpu = fairgrad_w(GG.data.cpu().numpy(), alpha, "fairgrad")
    ww = torch.Tensor(w_cpu)
    g = (grads * ww.view(1, -1)).sum(1)

    newgrad = g * n_tasks
    cnt = 0
    for param in shared_parameters:
        beg = 0 if cnt == 0 else sum(grad_dims[:cnt])
        en = sum(grad_dims[: cnt + 1])
        this_grad = newgrad[beg:en].contiguous().view(param.data.size())
        param.grad = this_grad.data.clone()
        cnt += 1
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_(shared_parameters, max_norm)
    optimizer.step()


# --------------------------------------------------------------------------------------------
# SAMO
# --------------------------------------------------------------------------------------------


def disable_running_stats(model):
    def _disable(module):
        if isinstance(module, _BatchNorm):
            module.backup_momentum = module.momentum
            module.momentum = 0

    model.apply(_disable)


def enable_running_stats(model):
    def _enable(module):
        if isinstance(module, _BatchNorm) and hasattr(module, "backup_momentum"):
            module.momentum = module.backup_momentum

    model.apply(_enable)


class GradEstimator:
    def __init__(self, model, eps=1e-2):
        self.model = deepcopy(model)
        self.eps = eps

    def perturb_parameters(self, random_seed, scaling_factor=1):
        torch.manual_seed(random_seed)
        for n, p in self.model.named_parameters():
            if "pred" in n:
                continue
            z = torch.normal(mean=0, std=1.0, size=p.data.size(), device=p.data.device, dtype=p.data.dtype)
            p.data = p.data + scaling_factor * z * self.eps

    def forward(self, inputs, targets, task):
        random_seed = np.random.randint(1000000000)
        with torch.no_grad():
            self.perturb_parameters(random_seed, scaling_factor=1)
            self.model.eval()
            train_pred, _ = self.model(inputs, return_representation=True)
            loss1 = calc_loss(train_pred[task], targets, TASK_TYPES[task])
            self.perturb_parameters(random_seed, scaling_factor=-2)
            self.model.eval()
            train_pred, _ = self.model(inputs, return_representation=True)
            loss2 = calc_loss(train_pred[task], targets, TASK_TYPES[task])
        projected_grad = (loss1 - loss2) / (2 * self.eps)
        model_dtype = next(self.model.parameters()).dtype
        projected_grad = projected_grad.to(model_dtype)
        self.perturb_parameters(random_seed, scaling_factor=1)
        torch.manual_seed(random_seed)
        zeroth_grad = {}
        for n, p in self.model.named_parameters():
            if "pred" in n:
                continue
            temp_grad = projected_grad * torch.normal(
                mean=0, std=1.0, size=p.data.size(), device=p.data.device, dtype=p.data.dtype
            )
            zeroth_grad[n] = temp_grad
        return zeroth_grad


def _grad2vec(shared_grads, grads, grad_dims, task):
    grads[:, task].fill_(0.0)
    cnt = 0
    for _name, grad in shared_grads[task].items():
        grad_cur = grad.data.detach().clone()
        beg = 0 if cnt == 0 else sum(grad_dims[:cnt])
        en = sum(grad_dims[: cnt + 1])
        grads[beg:en, task].copy_(grad_cur.data.view(-1))
        cnt += 1


def _overwrite_grad(shared_parameters, newgrad, grad_dims, n_tasks):
    newgrad = newgrad * n_tasks
    cnt = 0
    for param in shared_parameters:
        beg = 0 if cnt == 0 else sum(grad_dims[:cnt])
        en = sum(grad_dims[: cnt + 1])
        this_grad = newgrad[beg:en].contiguous().view(param.data.size())
        param.grad = this_grad.data.clone()
        cnt += 1


def with_samo_backward(method, shared_grads, shared_parameters, n_tasks, alpha=2.0, max_norm=1.0):
    """``LinearScalarizationWithSAMO`` / ``MGDAWithSAMO`` / ``FairGradWithSAMO`` ``.backward``."""
    if method == "mgda":
        grads = {}
        for i in range(n_tasks):
            grads[i] = [torch.flatten(grad) for grad in shared_grads[i].values()]
        sol, min_norm = MinNormSolver.find_min_norm_element([grads[t] for t in range(len(grads))])
        sol = sol * n_tasks
    grad_dims = []
    for param in shared_parameters:
        grad_dims.append(param.data.numel())
    grads = torch.Tensor(sum(grad_dims), n_tasks)
    for i in range(n_tasks):
        _grad2vec(shared_grads, grads, grad_dims, i)
        for p in shared_parameters:
            p.grad = None
    if method == "ls":
        g = grads.sum(dim=1)
    elif method == "mgda":
        sol = torch.tensor(sol, dtype=grads.dtype, device=grads.device)
        g = (grads * sol).sum(dim=1)
    else:
        GG = grads.t().mm(grads).cpu()
        w_cpu = fairgrad_w(GG.data.cpu().numpy(), alpha, "samo")
        ww = torch.Tensor(w_cpu).to(grads.device)
        g = (grads * ww.view(1, -1)).sum(1)
    _overwrite_grad(shared_parameters, g, grad_dims, n_tasks)
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_(shared_parameters, max_norm)


def samo_step(model, optimizer, x, targets, method, rho, beta, zo_eps, cityscapes=False, alpha=2.0):
    """One iteration of ``trainer_samo.py``'s loop (NYUv2's; ``cityscapes=True``: Cityscapes',
    which has no ``optimizer.zero_grad()`` and mixes the zeroth-order gradient layer-wise)."""
    n_tasks = len(targets)
    model.train()
    if not cityscapes:
        optimizer.zero_grad()

    enable_running_stats(model)
    train_pred, features = model(x, return_representation=True)
    losses = _losses(train_pred, targets)
    losses.mean().backward()

    zeroth_grads = {}
    for task in range(n_tasks):
        zeroth_grads[task] = GradEstimator(model, eps=zo_eps).forward(x, targets[task], task)

    # SAM, Stage I
    shared_params = dict()
    for n, p in model.named_parameters():
        if "pred" not in n:
            shared_params[n] = p.data.clone()
    task_params = defaultdict(dict)
    shared_epsilon_params = defaultdict(dict)
    task_epsilon_params = defaultdict(dict)
    for task in range(n_tasks):
        task_norms = dict()
        for n, p in model.named_parameters():
            if f"pred_task{task + 1}" in n:
                task_ep = torch.zeros_like(p).data.clone()
                if p.grad is not None:
                    task_params[task][n] = p.data.clone()
                    task_norms[n] = (1.0 * p.grad).norm(p=2).data.clone()
                    task_ep = (1.0 * p.grad).data.clone()
                task_epsilon_params[task][n] = task_ep
        task_norm = torch.norm(torch.stack(list(task_norms.values())), p=2)
        task_scale = (rho / (task_norm + 1e-12)).item()
        task_epsilon_params[task] = {n: ep * task_scale for n, ep in task_epsilon_params[task].items()}

        shared_norms = dict()
        for n, p in model.named_parameters():
            if "pred" in n:
                continue
            shared_ep = torch.zeros_like(p).data
            if p.grad is not None:
                if cityscapes:
                    n1 = p.grad.norm(p=2).item()
                    n2 = zeroth_grads[task][n].norm(p=2).item()
                    g = (1 - beta) * p.grad.data.clone() + beta * n1 * (zeroth_grads[task][n] / n2)
                else:
                    g = (1 - beta) * p.grad.data.clone() + beta * zeroth_grads[task][n]
                shared_norms[n] = (1.0 * g).norm(p=2).data.clone()
                shared_ep = (1.0 * g).data.clone()
            shared_epsilon_params[task][n] = shared_ep
        shared_norm = torch.norm(torch.stack(list(shared_norms.values())), p=2)
        shared_scale = (rho / (shared_norm + 1e-12)).item()
        shared_epsilon_params[task] = {n: ep * shared_scale for n, ep in shared_epsilon_params[task].items()}

    # SAM, Stage II
    disable_running_stats(model)
    shared_sam_grad = defaultdict(dict)
    model.zero_grad(set_to_none=False)  # adapted: torch 1.x's zero_grad()
    for task in range(n_tasks):
        for n, p in model.named_parameters():
            if "pred" in n:
                if f"pred_task{task + 1}" in n:
                    p.data = (task_params[task][n] + task_epsilon_params[task][n]).data.clone()
            else:
                if p.grad is not None:
                    p.grad.zero_()
                p.data = (shared_params[n] + shared_epsilon_params[task][n]).data.clone()
        train_pred, _ = model(x, return_representation=True)
        calc_loss(train_pred[task], targets[task], TASK_TYPES[task]).backward()
        for n, p in model.named_parameters():
            if "pred" in n:
                if f"pred_task{task + 1}" in n:
                    p.data = task_params[task][n].data.clone()
                continue
            if p.grad is not None:
                shared_sam_grad[task][n] = p.grad.data.clone()
                p.grad.zero_()

    for n, p in model.named_parameters():
        if "pred" not in n:
            p.data = shared_params[n]

    with_samo_backward(method, shared_sam_grad, list(model.shared_parameters()), n_tasks, alpha=alpha)
    optimizer.step()


# --------------------------------------------------------------------------------------------
# SAGE-X / SAGE-SAMO-X: no authors' code exists. A plain restatement of the design documented in
# sage_bench/algorithms/sage_mtl.py (Algorithm 1 with tasks as domains, on SAMO's trainer),
# written parameter by parameter from the paper's formulas and the SAMO pieces above.
# --------------------------------------------------------------------------------------------


def _spectral(weight, grad, rho):
    """Algorithm 1 lines 14-21 for one tensor, with the exact polar factor (SVD): the tests run
    SAGE with ``polar="svd"`` so that they compare the multi-task wiring; the Newton-Schulz
    variants are tested on their own (tests/test_geometry.py)."""
    from tests.reference.updates import polar_svd

    if grad.dim() >= 2:
        G = grad.reshape(grad.shape[0], -1)
        Q = polar_svd(G)
        return (rho * torch.linalg.vector_norm(weight.detach()) * Q).reshape(grad.shape)
    norm = torch.linalg.vector_norm(grad)
    return rho * grad / norm if norm > 0 else torch.zeros_like(grad)


def sage_mtl_step(model, optimizer, x, targets, method, rho, gamma, generator, ascent="mean", beta=0.5, zo_eps=0.01, alpha=2.0):
    """One SAGE-X (``ascent="mean"``) or SAGE-SAMO-X (``ascent="samo"``) step with the default
    switches: S over the shared parameters, SAMO's descent, noise after the clip on every
    parameter. ``generator`` draws the noise, one ``randn`` per parameter in model order."""
    from tests.reference.updates import gradient_agreement

    n_tasks = len(targets)
    model.train()
    optimizer.zero_grad()
    named = list(model.named_parameters())
    shared_names = [n for n, _ in named if "pred" not in n]

    train_pred, features = model(x, return_representation=True)
    losses = _losses(train_pred, targets)
    task_grads = []
    for t in range(n_tasks):
        g = torch.autograd.grad(losses[t], [p for _, p in named], retain_graph=t < n_tasks - 1, allow_unused=True)
        task_grads.append({n: torch.zeros_like(p) if gi is None else gi for (n, p), gi in zip(named, g, strict=True)})
    S = gradient_agreement([[task_grads[t][n] for n in shared_names] for t in range(n_tasks)])
    noise_beta = gamma * (1.0 - S)
    mean = {n: sum(task_grads[t][n] for t in range(n_tasks)) / n_tasks for n, _ in named}

    params = dict(named)
    head_eps = {n: _spectral(p, mean[n], rho) for n, p in named if "pred" in n}
    if ascent == "mean":
        directions = [{n: mean[n] for n in shared_names}]
    else:
        directions = []
        for task in range(n_tasks):
            zhat = GradEstimator(model, eps=zo_eps).forward(x, targets[task], task)
            directions.append({n: (1 - beta) * mean[n].clone() + beta * zhat[n] for n in shared_names})
    shared_eps = [{n: _spectral(params[n], d[n], rho) for n in shared_names} for d in directions]

    disable_running_stats(model)
    saved = {n: p.data.clone() for n, p in named}
    sam_grads = defaultdict(dict)
    head_grads = {}
    if ascent == "mean":
        with torch.no_grad():
            for n, p in named:
                p.add_(head_eps[n] if "pred" in n else shared_eps[0][n])
        pred, _ = model(x, return_representation=True)
        adv = _losses(pred, targets)
        for t in range(n_tasks):
            g = torch.autograd.grad(adv[t], [p for _, p in named], retain_graph=t < n_tasks - 1, allow_unused=True)
            for (n, p), gi in zip(named, g, strict=True):
                gi = torch.zeros_like(p) if gi is None else gi
                if "pred" not in n:
                    sam_grads[t][n] = gi
                elif f"pred_task{t + 1}" in n:
                    head_grads[n] = gi
        with torch.no_grad():
            for n, p in named:
                p.copy_(saved[n])
    else:
        for t in range(n_tasks):
            with torch.no_grad():
                for n, p in named:
                    if "pred" not in n:
                        p.add_(shared_eps[t][n])
                    elif f"pred_task{t + 1}" in n:
                        p.add_(head_eps[n])
            pred, _ = model(x, return_representation=True)
            loss = calc_loss(pred[t], targets[t], TASK_TYPES[t])
            g = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
            for (n, p), gi in zip(named, g, strict=True):
                gi = torch.zeros_like(p) if gi is None else gi
                if "pred" not in n:
                    sam_grads[t][n] = gi
                elif f"pred_task{t + 1}" in n:
                    head_grads[n] = gi
            with torch.no_grad():
                for n, p in named:
                    p.copy_(saved[n])
    enable_running_stats(model)

    for n, p in named:
        if "pred" in n:
            p.grad = head_grads[n].clone()
    with_samo_backward(method, sam_grads, list(model.shared_parameters()), n_tasks, alpha=alpha)
    for _, p in named:
        p.grad = p.grad + noise_beta * torch.randn(p.shape, generator=generator, dtype=p.dtype)
    optimizer.step()
    return S
