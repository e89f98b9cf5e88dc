"""Literal transcriptions of one training step of Table 2's other rows, for tests only.

Sources (pinned):

- the trainers ``experiments/nyuv2/trainer.py`` of AvivNavon/nash-mtl cce1840 and of
  Cranial-XIX/FAMO 0a6ad06 (the same loop; FAMO's adds the no-grad forward and
  ``weight_method.method.update(new_losses)`` after the step), around the weight methods of
  ``tests/reference_mtl_solvers``;
- LibMTL 4336804's ``Trainer.train`` step for a weighting (``zero_grad``, forward, losses,
  ``model.backward(losses)``, ``step``) around ``reference_mtl_solvers.MoCo``;
- ``nyuv2/train.py`` and ``nyuv2/mtl.py`` of VietHoang1512/FS-MTL 1371ec5 (F-MTL), with its
  ``bypass_bn.py`` (the same functions as SAMO's, imported from ``reference_mtl_steps``).

The model is the lineage's ``SegNetMtan`` (``tests/reference_mtan``). Adaptations, each forced:

- ``torch.autograd.grad(loss, shared_parameters)`` (nash-mtl's PCGrad, IMTL-G, Nash-MTL) raises
  on MTAN, where a task's loss does not reach the other tasks' attention modules:
  ``unused_as_zeros()`` makes it ``allow_unused=True`` with a missing gradient as zeros.
- FS-MTL's loops skip a parameter whose ``.grad`` is ``None`` (torch >= 2's ``zero_grad()``),
  which misaligns its per-task lists on MTAN; such a gradient is zeros here, as torch < 2's
  ``zero_grad()`` left it.
- FS-MTL's ``MinNormSolver`` allocates with ``.cuda()``; here on the default device.
- ``torch.Tensor(...)`` / ``torch.zeros(...)`` follow the default dtype; the tests run these steps
  with float64 as the default dtype.
"""

from __future__ import annotations

import copy
import random
from contextlib import contextmanager

import numpy as np
import torch
from scipy.optimize import minimize

from tests.reference.mtl import calc_loss
from tests.reference.mtl_steps import disable_running_stats, enable_running_stats

TASK_TYPES = ["semantic", "depth", "normal"]


def _losses(pred, targets):
    return torch.stack([calc_loss(pred[i], targets[i], TASK_TYPES[i]) for i in range(len(targets))])


@contextmanager
def unused_as_zeros():
    """``torch.autograd.grad`` with ``allow_unused=True`` and zeros for unused inputs."""
    original = torch.autograd.grad

    def grad(outputs, inputs, *args, **kwargs):
        inputs = list(inputs)
        kwargs["allow_unused"] = True
        out = original(outputs, inputs, *args, **kwargs)
        return tuple(torch.zeros_like(i) if g is None else g for i, g in zip(inputs, out, strict=True))

    torch.autograd.grad = grad
    try:
        yield
    finally:
        torch.autograd.grad = original


# --------------------------------------------------------------------------------------------
# nash-mtl / FAMO trainer, LibMTL trainer
# --------------------------------------------------------------------------------------------


def lineage_step(model, optimizer, x, targets, weight_method_backward, famo=None):
    """One iteration of the trainers' inner loop. ``weight_method_backward(losses, shared,
    task_specific)`` is ``weight_method.backward(...)``; ``famo`` the FAMO object, if any."""
    model.train()
    optimizer.zero_grad()
    train_pred, features = model(x, return_representation=True)
    losses = _losses(train_pred, targets)
    weight_method_backward(losses, list(model.shared_parameters()), list(model.task_specific_parameters()))
    optimizer.step()
    if famo is not None:
        with torch.no_grad():
            train_pred = model(x, return_representation=False)
            new_losses = _losses(train_pred, targets)
            famo.update(new_losses.detach())
    return losses.detach()


def weighted_loss_backward(get_weighted_loss):
    """``WeightMethod.backward``: ``loss, _ = get_weighted_loss(...)``; ``loss.backward()``."""

    def backward(losses, shared, task_specific):
        out = get_weighted_loss(losses)
        loss = out[0] if isinstance(out, tuple) else out
        loss.backward()

    return backward


def libmtl_step(model, optimizer, x, targets, moco):
    model.train()
    optimizer.zero_grad()
    train_pred = model(x)
    losses = _losses(train_pred, targets)
    moco.backward(losses)
    optimizer.step()


# --------------------------------------------------------------------------------------------
# FS-MTL (F-MTL): nyuv2/mtl.py
# --------------------------------------------------------------------------------------------


class MinNormSolver:
    MAX_ITER = 20
    STOP_CRIT = 1e-5

    @staticmethod
    def _min_norm_element_from2(v1v1, v1v2, v2v2):
        if v1v2 >= v1v1:
            return 0.999, v1v1
        if v1v2 >= v2v2:
            return 0.001, v2v2
        gamma = -1.0 * ((v1v2 - v2v2) / (v1v1 + v2v2 - 2 * v1v2))
        cost = v2v2 + gamma * (v1v2 - v2v2)
        return gamma, cost

    @staticmethod
    def _min_norm_2d(vecs, dps):
        dmin = 1e8
        for i in range(len(vecs)):
            for j in range(i + 1, len(vecs)):
                if (i, j) not in dps:
                    dps[(i, j)] = 0
                    for k in range(len(vecs[i])):
                        dps[(i, j)] += torch.mul(vecs[i][k], vecs[j][k]).sum().item()
                        dps[(j, i)] = dps[(i, j)]
                if (i, i) not in dps:
                    dps[(i, i)] = 0
                    for k in range(len(vecs[i])):
                        dps[(i, i)] += torch.mul(vecs[i][k], vecs[i][k]).sum().item()
                if (j, j) not in dps:
                    dps[(j, j)] = 0
                    for k in range(len(vecs[j])):
                        dps[(j, j)] += torch.mul(vecs[j][k], vecs[j][k]).sum().item()
                c, d = MinNormSolver._min_norm_element_from2(dps[(i, i)], dps[(i, j)], dps[(j, j)])
                if d < dmin:
                    dmin = d
                    sol = [(i, j), c, d]
        return sol, dps

    @staticmethod
    def _projection2simplex(y):
        m = len(y)
        sorted_y = torch.flip(torch.sort(y)[0], dims=[0])
        tmpsum = 0.0
        tmax_f = (y.sum() - 1.0) / m
        for i in range(m - 1):
            tmpsum += sorted_y[i]
            tmax = (tmpsum - 1) / (i + 1.0)
            if tmax > sorted_y[i + 1]:
                tmax_f = tmax
                break
        return torch.max(y - tmax_f, torch.zeros(y.shape))  # adapted: no .cuda()

    @staticmethod
    def _next_point(cur_val, grad, n):
        proj_grad = grad - (torch.sum(grad) / n)
        tm1 = -1.0 * cur_val[proj_grad < 0] / proj_grad[proj_grad < 0]
        tm2 = (1.0 - cur_val[proj_grad > 0]) / (proj_grad[proj_grad > 0])
        t = 1
        if len(tm1[tm1 > 1e-7]) > 0:
            t = (tm1[tm1 > 1e-7]).min()
        if len(tm2[tm2 > 1e-7]) > 0:
            t = min(t, (tm2[tm2 > 1e-7]).min())
        next_point = proj_grad * t + cur_val
        return MinNormSolver._projection2simplex(next_point)

    @staticmethod
    def find_min_norm_element(vecs):
        dps = {}
        init_sol, dps = MinNormSolver._min_norm_2d(vecs, dps)
        n = len(vecs)
        sol_vec = torch.zeros(n)  # adapted: no .cuda()
        sol_vec[init_sol[0][0]] = init_sol[1]
        sol_vec[init_sol[0][1]] = 1 - init_sol[1]
        if n < 3:
            return sol_vec, init_sol[2]
        iter_count = 0
        grad_mat = torch.zeros((n, n))  # adapted: no .cuda()
        for i in range(n):
            for j in range(n):
                grad_mat[i, j] = dps[(i, j)]
        while iter_count < MinNormSolver.MAX_ITER:
            grad_dir = -1.0 * torch.mm(grad_mat, sol_vec.view(-1, 1)).view(-1)
            new_point = MinNormSolver._next_point(sol_vec, grad_dir, n)
            v1v1 = 0.0
            v1v2 = 0.0
            v2v2 = 0.0
            for i in range(n):
                for j in range(n):
                    v1v1 += sol_vec[i] * sol_vec[j] * dps[(i, j)]
                    v1v2 += sol_vec[i] * new_point[j] * dps[(i, j)]
                    v2v2 += new_point[i] * new_point[j] * dps[(i, j)]
            nc, nd = MinNormSolver._min_norm_element_from2(v1v1, v1v2, v2v2)
            new_sol_vec = nc * sol_vec + (1 - nc) * new_point
            change = new_sol_vec - sol_vec
            if change.pow(2).sum() < MinNormSolver.STOP_CRIT:
                return sol_vec, nd
            sol_vec = new_sol_vec
        return sol_vec, nd


def PCGrad(grads, reduction="sum"):
    pc_grad = copy.deepcopy(grads)
    for g_i in pc_grad:
        random.shuffle(grads)
        for g_j in grads:
            g_i_g_j = sum(torch.dot(torch.flatten(grad_i), torch.flatten(grad_j)) for grad_i, grad_j in zip(g_i, g_j, strict=True))
            if g_i_g_j < 0:
                g_j_norm_square = torch.norm(torch.cat([torch.flatten(g) for g in g_j])) ** 2
                for grad_i, grad_j in zip(g_i, g_j, strict=True):
                    grad_i -= g_i_g_j * grad_j / g_j_norm_square
    merged_grad = [sum(g) for g in zip(*pc_grad, strict=True)]
    if reduction == "mean":
        merged_grad = [g / len(grads) for g in merged_grad]
    return merged_grad


def CAGrad(grads, alpha=0.5, rescale=1):
    n_tasks = len(grads)
    grads = grads.t()
    GG = grads.t().mm(grads).cpu()
    g0_norm = (GG.mean() + 1e-8).sqrt()
    x_start = np.ones(n_tasks) / n_tasks
    bnds = tuple((0, 1) for x in x_start)
    cons = {"type": "eq", "fun": lambda x: 1 - sum(x)}
    A = GG.numpy()
    b = x_start.copy()
    c = (alpha * g0_norm + 1e-8).item()

    def objfn(x):
        return (
            x.reshape(1, n_tasks).dot(A).dot(b.reshape(n_tasks, 1))
            + c * np.sqrt(x.reshape(1, n_tasks).dot(A).dot(x.reshape(n_tasks, 1)) + 1e-8)
        ).sum()

    res = minimize(objfn, x_start, bounds=bnds, constraints=cons)
    w_cpu = res.x
    ww = torch.Tensor(w_cpu).to(grads.device)
    gw = (grads * ww.view(1, -1)).sum(1)
    gw_norm = gw.norm()
    lmbda = c / (gw_norm + 1e-8)
    g = grads.mean(1) + lmbda * gw
    if rescale == 0:
        return g
    elif rescale == 1:
        return g / (1 + alpha**2)
    return g / (1 + alpha)


def IMTL(grads_list):
    grads = {}
    norm_grads = {}
    for i, grad in enumerate(grads_list):
        norm_term = torch.norm(grad)
        grads[i] = grad
        norm_grads[i] = grad / norm_term
    G = torch.stack(tuple(v for v in grads.values()))
    D = G[0,] - G[1:,]
    U = torch.stack(tuple(v for v in norm_grads.values()))
    U = U[0,] - U[1:,]
    first_element = torch.matmul(G[0,], U.t())
    try:
        second_element = torch.inverse(torch.matmul(D, U.t()))
    except Exception:
        second_element = torch.inverse(torch.eye(len(grads_list) - 1, device=norm_term.device) * 1e-8 + torch.matmul(D, U.t()))
    alpha_ = torch.matmul(first_element, second_element)
    alpha = torch.cat((torch.tensor(1 - alpha_.sum(), device=norm_term.device).unsqueeze(-1), alpha_))
    return sum([alpha[i] * grads[i] for i in range(len(grads_list))])


# --------------------------------------------------------------------------------------------
# FS-MTL (F-MTL): one iteration of nyuv2/train.py's loop (city2scape/train.py: normalize=False)
# --------------------------------------------------------------------------------------------


def _shared_named(model):
    return [(name, param) for name, param in model.segnet.named_parameters() if not name.startswith("pred_task")]


def fsmtl_step(model, optimizer, x, targets, method, rho, adaptive, c=0.4, normalize=True):
    TASKS = list(range(len(targets)))
    N_TASKS = len(TASKS)
    model.train()
    optimizer.zero_grad()
    enable_running_stats(model)
    train_pred, features = model(x, return_representation=True)
    losses = _losses(train_pred, targets)

    ##### SAM, stage 1 #####
    epsilon_weights = {"rep": dict()}
    old_weights = {"rep": []}
    shared_g = dict()
    for task in TASKS:
        model.zero_grad()
        losses[task].backward(retain_graph=True)
        shared_norms = []
        epsilon_weights["rep"][task] = []
        task_norms = []
        old_weights[task] = []
        epsilon_weights[task] = []
        shared_g[task] = []
        for name, param in model.segnet.named_parameters():
            if name.startswith("pred_task"):
                if name.startswith(f"pred_task{task + 1}"):
                    ew = torch.zeros_like(param).data.clone()
                    if param.grad is not None:
                        task_norms.append(((torch.abs(param) if adaptive else 1.0) * param.grad).norm(p=2).data.clone())
                        old_weights[task].append(param.data.clone())
                        ew = ((torch.pow(param, 2) if adaptive else 1.0) * param.grad).data.clone()
                    epsilon_weights[task].append(ew)
            else:
                if param.grad is None:  # adapted: torch < 2 left zeros
                    param.grad = torch.zeros_like(param)
                ew = torch.zeros_like(param).data.clone()
                if param.grad is not None:
                    shared_norms.append(((torch.abs(param) if adaptive else 1.0) * param.grad).norm(p=2).data.clone())
                    shared_g[task].append(param.grad.data.clone())
                    ew = ((torch.pow(param, 2) if adaptive else 1.0) * param.grad).data.clone()
                epsilon_weights["rep"][task].append(ew)
                if task == 0:
                    old_weights["rep"].append(param.data.clone())
        task_norm = torch.norm(torch.stack(task_norms), p=2)
        task_scale = (rho / (task_norm + 1e-12)).item()
        epsilon_weights[task] = [epsilon_weight * task_scale for epsilon_weight in epsilon_weights[task]]
        shared_norm = torch.norm(torch.stack(shared_norms), p=2)
        shared_scale = (rho / (shared_norm + 1e-12)).item()
        epsilon_weights["rep"][task] = [epsilon_weight * shared_scale for epsilon_weight in epsilon_weights["rep"][task]]

    ##### SAM, stage 2 #####
    disable_running_stats(model)
    SAM_gradient = dict()
    model.zero_grad()
    for task in TASKS:
        shared_idx = 0
        classifier_idx = 0
        for name, param in model.segnet.named_parameters():
            if name.startswith("pred_task"):
                if name.startswith(f"pred_task{task + 1}"):
                    param.data = (old_weights[task][classifier_idx] + epsilon_weights[task][classifier_idx]).data.clone()
                    classifier_idx += 1
            else:
                if param.grad is not None:
                    param.grad.zero_()
                param.data = (old_weights["rep"][shared_idx] + epsilon_weights["rep"][task][shared_idx]).data.clone()
                shared_idx += 1
        train_pred, _ = model(x, return_representation=True)
        calc_loss(train_pred[task], targets[task], TASK_TYPES[task]).backward()
        SAM_gradient[task] = []
        classifier_idx = 0
        for name, param in model.segnet.named_parameters():
            if name.startswith("pred_task"):
                if name.startswith(f"pred_task{task + 1}"):
                    param.data = old_weights[task][classifier_idx].data.clone()
                    classifier_idx += 1
                continue
            if param.grad is not None:
                SAM_gradient[task].append(param.grad.data.clone())
                param.grad.zero_()
            else:
                SAM_gradient[task].append(torch.zeros_like(param).data.clone())

    shared = _shared_named(model)
    if method == "a-mgda":
        with torch.no_grad():
            sol, _ = MinNormSolver.find_min_norm_element([SAM_gradient[task] for task in TASKS])
        for shared_idx, (_name, param) in enumerate(shared):
            param.grad = sum([sol[task] * SAM_gradient[task][shared_idx] for task in TASKS]) * N_TASKS
            param.data = old_weights["rep"][shared_idx].data.clone()
    elif method == "mgda":
        shared_h, shared_h_norm, shared_g_norm = {}, {}, {}
        for task in TASKS:
            shared_h[task], shared_h_norm[task], shared_g_norm[task] = [], [], []
            for shared_idx in range(len(shared)):
                shared_h[task].append(SAM_gradient[task][shared_idx] - shared_g[task][shared_idx])
                shared_h_norm[task].append(shared_h[task][shared_idx].norm(p=2).data.clone())
                shared_g_norm[task].append(shared_g[task][shared_idx].norm(p=2).data.clone())
            if normalize:  # the Cityscapes trainer comments these four lines out
                shared_h_norm[task] = torch.norm(torch.stack(shared_h_norm[task]), p=2)
                shared_g_norm[task] = torch.norm(torch.stack(shared_g_norm[task]), p=2)
                shared_h[task] = [grad / shared_h_norm[task] for grad in shared_h[task]]
                shared_g[task] = [grad / shared_g_norm[task] for grad in shared_g[task]]
        with torch.no_grad():
            sol_h, _ = MinNormSolver.find_min_norm_element([shared_h[task] for task in TASKS])
            sol_g, _ = MinNormSolver.find_min_norm_element([shared_g[task] for task in TASKS])
        for shared_idx, (_name, param) in enumerate(shared):
            param.grad = sum([(sol_h[task] * shared_h[task][shared_idx] + sol_g[task] * shared_g[task][shared_idx]) for task in TASKS]) * N_TASKS
            param.data = old_weights["rep"][shared_idx].data.clone()
    elif method == "pcgrad":
        shared_h = {task: [SAM_gradient[task][i] - shared_g[task][i] for i in range(len(shared))] for task in TASKS}
        with torch.no_grad():
            shared_g = PCGrad([shared_g[task] for task in TASKS])
            shared_h = PCGrad([shared_h[task] for task in TASKS])
        for shared_idx, (_name, param) in enumerate(shared):
            param.grad = shared_g[shared_idx] + shared_h[shared_idx]
            param.data = old_weights["rep"][shared_idx].data.clone()
    elif method == "a-pcgrad":
        with torch.no_grad():
            SAM_gradient = PCGrad([SAM_gradient[task] for task in TASKS])
        for shared_idx, (_name, param) in enumerate(shared):
            param.grad = SAM_gradient[shared_idx]
            param.data = old_weights["rep"][shared_idx].data.clone()
    elif method in ("cagrad", "imtl"):
        shared_h = dict()
        for task in TASKS:
            shared_h[task] = []
            for shared_idx in range(len(shared)):
                shared_g[task][shared_idx] = shared_g[task][shared_idx].flatten()
                SAM_gradient[task][shared_idx] = SAM_gradient[task][shared_idx].flatten()
                shared_h[task].append(SAM_gradient[task][shared_idx] - shared_g[task][shared_idx])
            shared_g[task] = torch.cat(shared_g[task])
            shared_h[task] = torch.cat(shared_h[task])
        with torch.no_grad():
            if method == "cagrad":
                shared_g = CAGrad(torch.stack([shared_g[task] for task in TASKS]), c)
                shared_h = CAGrad(torch.stack([shared_h[task] for task in TASKS]), c)
            else:
                shared_g = IMTL([shared_g[task] for task in TASKS])
                shared_h = IMTL([shared_h[task] for task in TASKS])
        total_length = 0
        for shared_idx, (_name, param) in enumerate(shared):
            length = param.data.numel()
            param.grad = (shared_g[total_length : total_length + length] + shared_h[total_length : total_length + length]).reshape(param.data.size())
            param.data = old_weights["rep"][shared_idx].data.clone()
            total_length += length
    elif method in ("a-cagrad", "a-imtl"):
        for task in TASKS:
            SAM_gradient[task] = torch.cat([grad.flatten() for grad in SAM_gradient[task]])
        with torch.no_grad():
            stacked = torch.stack([SAM_gradient[task] for task in TASKS])
            SAM_gradient = CAGrad(stacked, c) if method == "a-cagrad" else IMTL(stacked)
        total_length = 0
        for shared_idx, (_name, param) in enumerate(shared):
            length = param.data.numel()
            param.grad = (SAM_gradient[total_length : total_length + length]).reshape(param.data.size())
            param.data = old_weights["rep"][shared_idx].data.clone()
            total_length += length
    else:
        raise ValueError(method)
    optimizer.step()
    return losses.detach()
