"""Reference transcriptions of the authors' multi-task weight methods, for tests only.

Each class re-states, operation by operation, one method of the authors' code:

- nash-mtl (AvivNavon/nash-mtl cce1840, ``methods/weight_methods.py``): ``PCGrad``,
  ``IMTLG``, ``CAGrad``, ``NashMTL``, ``ScaleInvariantLinearScalarization``, ``RLW``,
  ``DynamicWeightAverage``, ``Uncertainty``;
- FAMO (Cranial-XIX/FAMO 0a6ad06, same file): ``GradDrop``, ``FAMO`` and the ``max_norm`` clips
  its copies of ``PCGrad`` / ``CAGrad`` / ``GradDrop`` add;
- LibMTL (4336804, ``LibMTL/weighting/MoCo.py`` with ``abstract_weighting.py``): ``MoCo``.

They work as the originals do: on a list of shared parameters and a tensor of task losses,
writing ``.grad`` (``backward``) or returning the weighted loss (``get_weighted_loss``). Nothing
here imports ``sage_bench``.
"""

from __future__ import annotations

import copy
import random

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize

# --------------------------------------------------------------------------------------------
# Gradient manipulation (nash-mtl / FAMO)
# --------------------------------------------------------------------------------------------


class PCGrad:
    def __init__(self, n_tasks, max_norm=0.0):
        self.n_tasks = n_tasks
        self.max_norm = max_norm  # FAMO's copy: 1.0

    def backward(self, losses, shared_parameters, task_specific_parameters=None):
        shared_grads = []
        for loss in losses:
            shared_grads.append(torch.autograd.grad(loss, shared_parameters, retain_graph=True))
        non_conflict = self._project_conflicting(shared_grads)
        for p, g in zip(shared_parameters, non_conflict, strict=True):
            p.grad = g
        if task_specific_parameters is not None:
            task_grads = torch.autograd.grad(losses.sum(), task_specific_parameters)
            for p, g in zip(task_specific_parameters, task_grads, strict=True):
                p.grad = g
        if self.max_norm > 0:
            torch.nn.utils.clip_grad_norm_(shared_parameters, self.max_norm)

    def _project_conflicting(self, grads):
        pc_grad = copy.deepcopy(grads)
        for g_i in pc_grad:
            random.shuffle(grads)
            for g_j in grads:
                g_i_g_j = sum(
                    torch.dot(torch.flatten(grad_i), torch.flatten(grad_j))
                    for grad_i, grad_j in zip(g_i, g_j, strict=True)
                )
                if g_i_g_j < 0:
                    g_j_norm_square = torch.norm(torch.cat([torch.flatten(g) for g in g_j])) ** 2
                    for grad_i, grad_j in zip(g_i, g_j, strict=True):
                        grad_i -= g_i_g_j * grad_j / g_j_norm_square
        return [sum(g) for g in zip(*pc_grad, strict=True)]  # reduction "sum"


class _GradVecMethod:
    """The grad2vec / overwrite_grad scaffolding of CAGrad and GradDrop."""

    def __init__(self, n_tasks, max_norm=0.0):
        self.n_tasks = n_tasks
        self.max_norm = max_norm

    def _collect(self, losses, shared_parameters):
        grad_dims = [p.data.numel() for p in shared_parameters]
        grads = torch.Tensor(sum(grad_dims), self.n_tasks)  # float32, as there
        for i in range(self.n_tasks):
            losses[i].backward(retain_graph=True)
            grads[:, i].fill_(0.0)
            cnt = 0
            for param in shared_parameters:
                if param.grad is not None:
                    beg = 0 if cnt == 0 else sum(grad_dims[:cnt])
                    en = sum(grad_dims[: cnt + 1])
                    grads[beg:en, i].copy_(param.grad.data.detach().clone().view(-1))
                cnt += 1
            for p in shared_parameters:
                p.grad = None
        return grads, grad_dims

    def _overwrite(self, shared_parameters, newgrad, grad_dims):
        newgrad = newgrad * self.n_tasks  # to match the sum loss
        cnt = 0
        for param in shared_parameters:
            beg = 0 if cnt == 0 else sum(grad_dims[:cnt])
            en = sum(grad_dims[: cnt + 1])
            param.grad = newgrad[beg:en].contiguous().view(param.data.size()).data.clone()
            cnt += 1

    def backward(self, losses, shared_parameters):
        grads, grad_dims = self._collect(losses, shared_parameters)
        self._overwrite(shared_parameters, self.combine(grads), grad_dims)
        if self.max_norm > 0:
            torch.nn.utils.clip_grad_norm_(shared_parameters, self.max_norm)


class CAGrad(_GradVecMethod):
    def __init__(self, n_tasks, c=0.4, max_norm=0.0):
        super().__init__(n_tasks, max_norm)
        self.c = c

    def combine(self, grads):
        alpha, rescale = self.c, 1
        GG = grads.t().mm(grads).cpu()
        g0_norm = (GG.mean() + 1e-8).sqrt()
        x_start = np.ones(self.n_tasks) / self.n_tasks
        bnds = tuple((0, 1) for x in x_start)
        cons = {"type": "eq", "fun": lambda x: 1 - sum(x)}
        A = GG.numpy()
        b = x_start.copy()
        c = (alpha * g0_norm + 1e-8).item()

        def objfn(x):
            return (
                x.reshape(1, self.n_tasks).dot(A).dot(b.reshape(self.n_tasks, 1))
                + c
                * np.sqrt(x.reshape(1, self.n_tasks).dot(A).dot(x.reshape(self.n_tasks, 1)) + 1e-8)
            ).sum()

        res = minimize(objfn, x_start, bounds=bnds, constraints=cons)
        self.w_cpu = res.x
        ww = torch.Tensor(res.x).to(grads.device)
        gw = (grads * ww.view(1, -1)).sum(1)
        gw_norm = gw.norm()
        lmbda = c / (gw_norm + 1e-8)
        g = grads.mean(1) + lmbda * gw
        assert rescale == 1
        return g / (1 + alpha**2)


class GradDrop(_GradVecMethod):
    def combine(self, grads):
        P = 0.5 * (1.0 + grads.sum(1) / (grads.abs().sum(1) + 1e-8))
        U = torch.rand_like(grads[:, 0])
        M = P.gt(U).view(-1, 1) * grads.gt(0) + P.lt(U).view(-1, 1) * grads.lt(0)
        return (grads * M.float()).mean(1)


class IMTLG:
    def __init__(self, n_tasks):
        self.n_tasks = n_tasks

    def get_weighted_loss(self, losses, shared_parameters):
        grads, norm_grads = {}, {}
        for i, loss in enumerate(losses):
            g = list(torch.autograd.grad(loss, shared_parameters, retain_graph=True))
            grad = torch.cat([torch.flatten(gr) for gr in g])
            norm_term = torch.norm(grad)
            grads[i] = grad
            norm_grads[i] = grad / norm_term
        G = torch.stack(tuple(grads.values()))
        D = G[0,] - G[1:,]
        U = torch.stack(tuple(norm_grads.values()))
        U = U[0,] - U[1:,]
        first_element = torch.matmul(G[0,], U.t())
        try:
            second_element = torch.inverse(torch.matmul(D, U.t()))
        except Exception:
            second_element = torch.inverse(
                torch.eye(self.n_tasks - 1) * 1e-8 + torch.matmul(D, U.t())
            )
        alpha_ = torch.matmul(first_element, second_element)
        alpha = torch.cat((torch.tensor(1 - alpha_.sum()).unsqueeze(-1), alpha_))
        return torch.sum(losses * alpha), alpha


# --------------------------------------------------------------------------------------------
# Nash-MTL (nash-mtl), with cvxpy/ECOS
# --------------------------------------------------------------------------------------------


class NashMTL:
    def __init__(self, n_tasks, optim_niter=20, update_weights_every=1, max_norm=1.0):
        import cvxpy as cp

        self.cp = cp
        self.n_tasks = n_tasks
        self.optim_niter = optim_niter
        self.update_weights_every = update_weights_every
        self.max_norm = max_norm
        self.prvs_alpha_param = None
        self.normalization_factor = np.ones((1,))
        self.init_gtg = np.eye(self.n_tasks)
        self.step = 0.0
        self.prvs_alpha = np.ones(self.n_tasks, dtype=np.float32)

    def _stop_criteria(self, gtg, alpha_t):
        return (
            (self.alpha_param.value is None)
            or (np.linalg.norm(gtg @ alpha_t - 1 / (alpha_t + 1e-10)) < 1e-3)
            or (np.linalg.norm(self.alpha_param.value - self.prvs_alpha_param.value) < 1e-6)
        )

    def solve_optimization(self, gtg):
        cp = self.cp
        self.G_param.value = gtg
        self.normalization_factor_param.value = self.normalization_factor
        alpha_t = self.prvs_alpha
        for _ in range(self.optim_niter):
            self.alpha_param.value = alpha_t
            self.prvs_alpha_param.value = alpha_t
            try:
                self.prob.solve(solver=cp.ECOS, warm_start=True, max_iters=100)
            except Exception:
                self.alpha_param.value = self.prvs_alpha_param.value
            if self._stop_criteria(gtg, alpha_t):
                break
            alpha_t = self.alpha_param.value
        if alpha_t is not None:
            self.prvs_alpha = alpha_t
        return self.prvs_alpha

    def _calc_phi_alpha_linearization(self):
        G_prvs_alpha = self.G_param @ self.prvs_alpha_param
        prvs_phi_tag = 1 / self.prvs_alpha_param + (1 / G_prvs_alpha) @ self.G_param
        return prvs_phi_tag @ (self.alpha_param - self.prvs_alpha_param)

    def _init_optim_problem(self):
        cp = self.cp
        self.alpha_param = cp.Variable(shape=(self.n_tasks,), nonneg=True)
        self.prvs_alpha_param = cp.Parameter(shape=(self.n_tasks,), value=self.prvs_alpha)
        self.G_param = cp.Parameter(shape=(self.n_tasks, self.n_tasks), value=self.init_gtg)
        self.normalization_factor_param = cp.Parameter(shape=(1,), value=np.array([1.0]))
        self.phi_alpha = self._calc_phi_alpha_linearization()
        G_alpha = self.G_param @ self.alpha_param
        constraint = []
        for i in range(self.n_tasks):
            constraint.append(
                -cp.log(self.alpha_param[i] * self.normalization_factor_param) - cp.log(G_alpha[i])
                <= 0
            )
        obj = cp.Minimize(cp.sum(G_alpha) + self.phi_alpha / self.normalization_factor_param)
        self.prob = cp.Problem(obj, constraint)

    def get_weighted_loss(self, losses, shared_parameters):
        if self.step == 0:
            self._init_optim_problem()
        if (self.step % self.update_weights_every) == 0:
            self.step += 1
            grads = {}
            for i, loss in enumerate(losses):
                g = list(torch.autograd.grad(loss, shared_parameters, retain_graph=True))
                grads[i] = torch.cat([torch.flatten(gr) for gr in g])
            G = torch.stack(tuple(grads.values()))
            GTG = torch.mm(G, G.t())
            self.normalization_factor = torch.norm(GTG).detach().cpu().numpy().reshape((1,))
            GTG = GTG / self.normalization_factor.item()
            alpha = self.solve_optimization(GTG.cpu().detach().numpy())
            alpha = torch.from_numpy(alpha)
        else:
            self.step += 1
            alpha = self.prvs_alpha
        weighted_loss = sum([losses[i] * alpha[i] for i in range(len(alpha))])
        return weighted_loss, alpha

    def backward(self, losses, shared_parameters):
        loss, alpha = self.get_weighted_loss(losses, shared_parameters)
        loss.backward()
        if self.max_norm > 0:
            torch.nn.utils.clip_grad_norm_(shared_parameters, self.max_norm)
        return loss, alpha


# --------------------------------------------------------------------------------------------
# MoCo (LibMTL)
# --------------------------------------------------------------------------------------------


class MoCo:
    """LibMTL's MoCo with ``_compute_grad(mode='backward')`` and ``_reset_grad``."""

    def __init__(
        self, task_num, share_params, beta=0.5, beta_sigma=0.5, gamma=0.1, gamma_sigma=0.5, rho=0.0
    ):
        self.task_num = task_num
        self.share_params = share_params
        self.kw = dict(
            MoCo_beta=beta, MoCo_beta_sigma=beta_sigma, MoCo_gamma=gamma,
            MoCo_gamma_sigma=gamma_sigma, MoCo_rho=rho,
        )  # fmt: skip
        self.grad_index = [p.data.numel() for p in share_params]
        self.grad_dim = sum(self.grad_index)
        self.step = 0
        self.y = torch.zeros(self.task_num, self.grad_dim)
        self.lambd = torch.ones([self.task_num]) / self.task_num

    def _grad2vec(self):
        grad = torch.zeros(self.grad_dim)
        count = 0
        for param in self.share_params:
            if param.grad is not None:
                beg = 0 if count == 0 else sum(self.grad_index[:count])
                end = sum(self.grad_index[: (count + 1)])
                grad[beg:end] = param.grad.data.view(-1)
            count += 1
        return grad

    def _compute_grad(self, losses):
        grads = torch.zeros(self.task_num, self.grad_dim)
        for tn in range(self.task_num):
            if (tn + 1) != self.task_num:
                losses[tn].backward(retain_graph=True)
            else:
                losses[tn].backward()
            grads[tn] = self._grad2vec()
            for p in self.share_params:  # zero_grad_share_params
                if p.grad is not None:
                    p.grad.zero_()
        return grads

    def _reset_grad(self, new_grads):
        count = 0
        for param in self.share_params:
            if param.grad is not None:
                beg = 0 if count == 0 else sum(self.grad_index[:count])
                end = sum(self.grad_index[: (count + 1)])
                param.grad.data = (
                    new_grads[beg:end].contiguous().view(param.data.size()).data.clone()
                )
            count += 1

    def backward(self, losses):
        kwargs = self.kw
        self.step += 1
        beta, beta_sigma = kwargs["MoCo_beta"], kwargs["MoCo_beta_sigma"]
        gamma, gamma_sigma = kwargs["MoCo_gamma"], kwargs["MoCo_gamma_sigma"]
        rho = kwargs["MoCo_rho"]
        grads = self._compute_grad(losses)
        with torch.no_grad():
            for tn in range(self.task_num):
                grads[tn] = grads[tn] / (grads[tn].norm() + 1e-8) * losses[tn]
        self.y = self.y - (beta / self.step**beta_sigma) * (self.y - grads)
        self.lambd = F.softmax(
            self.lambd
            - (gamma / self.step**gamma_sigma)
            * (self.y @ self.y.t() + rho * torch.eye(self.task_num))
            @ self.lambd,
            -1,
        )
        new_grads = self.y.t() @ self.lambd
        self._reset_grad(new_grads)
        return self.lambd.detach().cpu().numpy()


# --------------------------------------------------------------------------------------------
# Loss weighting (nash-mtl / FAMO)
# --------------------------------------------------------------------------------------------


class ScaleInvariantLinearScalarization:
    def __init__(self, n_tasks):
        self.task_weights = torch.ones((n_tasks,))

    def get_weighted_loss(self, losses):
        return torch.sum(torch.log(losses) * self.task_weights)


class RLW:
    def __init__(self, n_tasks):
        self.n_tasks = n_tasks

    def get_weighted_loss(self, losses):
        weight = F.softmax(torch.randn(self.n_tasks), dim=-1)
        return torch.sum(losses * weight), weight


class DynamicWeightAverage:
    def __init__(self, n_tasks, iteration_window=25, temp=2.0):
        self.n_tasks = n_tasks
        self.iteration_window = iteration_window
        self.temp = temp
        self.running_iterations = 0
        self.costs = np.ones((iteration_window * 2, n_tasks), dtype=np.float32)
        self.weights = np.ones(n_tasks, dtype=np.float32)

    def get_weighted_loss(self, losses):
        cost = losses.detach().cpu().numpy()
        self.costs[:-1, :] = self.costs[1:, :]
        self.costs[-1, :] = cost
        if self.running_iterations > self.iteration_window:
            ws = self.costs[self.iteration_window :, :].mean(0) / self.costs[
                : self.iteration_window, :
            ].mean(0)
            self.weights = (self.n_tasks * np.exp(ws / self.temp)) / (np.exp(ws / self.temp)).sum()
        task_weights = torch.from_numpy(self.weights.astype(np.float32))
        loss = (task_weights * losses).mean()
        self.running_iterations += 1
        return loss, task_weights


class Uncertainty:
    def __init__(self, n_tasks):
        self.logsigma = torch.tensor([0.0] * n_tasks, requires_grad=True)

    def get_weighted_loss(self, losses):
        return sum(
            0.5 * (torch.exp(-logs) * loss + logs)
            for loss, logs in zip(losses, self.logsigma, strict=True)
        )

    def parameters(self):
        return [self.logsigma]


class FAMO:
    def __init__(self, n_tasks, gamma=1e-5, w_lr=0.025):
        self.min_losses = torch.zeros(n_tasks)
        self.w = torch.tensor([0.0] * n_tasks, requires_grad=True)
        self.w_opt = torch.optim.Adam([self.w], lr=w_lr, weight_decay=gamma)

    def get_weighted_loss(self, losses):
        self.prev_loss = losses
        z = F.softmax(self.w, -1)
        D = losses - self.min_losses + 1e-8
        c = (z / D).sum().detach()
        loss = (D.log() * z / c).sum()
        return loss, z

    def update(self, curr_loss):
        delta = (self.prev_loss - self.min_losses + 1e-8).log() - (
            curr_loss - self.min_losses + 1e-8
        ).log()
        with torch.enable_grad():
            d = torch.autograd.grad(F.softmax(self.w, -1), self.w, grad_outputs=delta.detach())[0]
        self.w_opt.zero_grad()
        self.w.grad = d
        self.w_opt.step()
