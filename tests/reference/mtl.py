"""Literal transcriptions of the MTAN lineage's solver, loss and metric code, for tests only.

Sources (pinned): ``AvivNavon/nash-mtl`` cce1840 ``methods/min_norm_solvers.py`` and
``methods/weight_methods.py`` (``LinearScalarization``, ``MGDA``); ``OptMN-Lab/fairgrad``
2b8cba1 and ``OptMN-Lab/SAMO`` 3b686c9 ``methods/weight_methods.py`` (``FairGrad.fairgrad``);
``experiments/{nyuv2,cityscapes}/utils.py`` (``ConfMatrix``, ``depth_error``, ``normal_error``,
``delta_fn``) and the trainers' ``calc_loss``. Each is restated as written (names, loops and
operation order kept), not rewritten; where a value had to be adapted for a float64 test it
says so. The gradient "vectors" the solvers take are lists of flattened tensors, as there.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import least_squares

# --------------------------------------------------------------------------------------------
# MinNormSolver (Sener & Koltun, as vendored by nash-mtl / FAMO / fairgrad / SAMO)
# --------------------------------------------------------------------------------------------


class MinNormSolver:
    MAX_ITER = 250
    STOP_CRIT = 1e-5

    @staticmethod
    def _min_norm_element_from2(v1v1, v1v2, v2v2):
        if v1v2 >= v1v1:
            gamma = 0.999
            cost = v1v1
            return gamma, cost
        if v1v2 >= v2v2:
            gamma = 0.001
            cost = v2v2
            return gamma, cost
        gamma = -1.0 * ((v1v2 - v2v2) / (v1v1 + v2v2 - 2 * v1v2))
        cost = v2v2 + gamma * (v1v2 - v2v2)
        return gamma, cost

    @staticmethod
    def _min_norm_2d(vecs, dps):
        dmin = 1e8
        for i in range(len(vecs)):
            for j in range(i + 1, len(vecs)):
                if (i, j) not in dps:
                    dps[(i, j)] = 0.0
                    for k in range(len(vecs[i])):
                        dps[(i, j)] += torch.dot(vecs[i][k], vecs[j][k]).item()
                    dps[(j, i)] = dps[(i, j)]
                if (i, i) not in dps:
                    dps[(i, i)] = 0.0
                    for k in range(len(vecs[i])):
                        dps[(i, i)] += torch.dot(vecs[i][k], vecs[i][k]).item()
                if (j, j) not in dps:
                    dps[(j, j)] = 0.0
                    for k in range(len(vecs[i])):
                        dps[(j, j)] += torch.dot(vecs[j][k], vecs[j][k]).item()
                c, d = MinNormSolver._min_norm_element_from2(dps[(i, i)], dps[(i, j)], dps[(j, j)])
                if d < dmin:
                    dmin = d
                    sol = [(i, j), c, d]
        return sol, dps

    @staticmethod
    def _projection2simplex(y):
        m = len(y)
        sorted_y = np.flip(np.sort(y), axis=0)
        tmpsum = 0.0
        tmax_f = (np.sum(y) - 1.0) / m
        for i in range(m - 1):
            tmpsum += sorted_y[i]
            tmax = (tmpsum - 1) / (i + 1.0)
            if tmax > sorted_y[i + 1]:
                tmax_f = tmax
                break
        return np.maximum(y - tmax_f, np.zeros(y.shape))

    @staticmethod
    def _next_point(cur_val, grad, n):
        proj_grad = grad - (np.sum(grad) / n)
        tm1 = -1.0 * cur_val[proj_grad < 0] / proj_grad[proj_grad < 0]
        tm2 = (1.0 - cur_val[proj_grad > 0]) / (proj_grad[proj_grad > 0])

        t = 1
        if len(tm1[tm1 > 1e-7]) > 0:
            t = np.min(tm1[tm1 > 1e-7])
        if len(tm2[tm2 > 1e-7]) > 0:
            t = min(t, np.min(tm2[tm2 > 1e-7]))

        next_point = proj_grad * t + cur_val
        next_point = MinNormSolver._projection2simplex(next_point)
        return next_point

    @staticmethod
    def find_min_norm_element(vecs):
        dps = {}
        init_sol, dps = MinNormSolver._min_norm_2d(vecs, dps)

        n = len(vecs)
        sol_vec = np.zeros(n)
        sol_vec[init_sol[0][0]] = init_sol[1]
        sol_vec[init_sol[0][1]] = 1 - init_sol[1]

        if n < 3:
            return sol_vec, init_sol[2]

        iter_count = 0

        grad_mat = np.zeros((n, n))
        for i in range(n):
            for j in range(n):
                grad_mat[i, j] = dps[(i, j)]

        while iter_count < MinNormSolver.MAX_ITER:  # iter_count is never incremented there
            grad_dir = -1.0 * np.dot(grad_mat, sol_vec)
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
            if np.sum(np.abs(change)) < MinNormSolver.STOP_CRIT:
                return sol_vec, nd
            sol_vec = new_sol_vec


# --------------------------------------------------------------------------------------------
# Weight methods, reduced to what they leave in .grad: (shared gradient, head coefficients).
# ``task_grads[k]`` is the list of task k's gradients of the shared parameters.
# --------------------------------------------------------------------------------------------


def linear_scalarization(task_grads):
    """``loss = torch.sum(losses * ones)`` then ``loss.backward()``: shared gets the sum."""
    n_tasks = len(task_grads)
    shared = [sum(task_grads[k][j] for k in range(n_tasks)) for j in range(len(task_grads[0]))]
    return shared, [1.0] * n_tasks


def mgda(task_grads):
    """nash-mtl ``MGDA(params="shared", normalization="none")``: ``sol = find_min_norm_element``
    of the flattened per-tensor gradients, ``sol * n_tasks``, weighted loss ``sum losses[i] sol[i]``
    (so the shared gradient is ``sum sol[i] g_i`` and head i's coefficient ``sol[i]``)."""
    n_tasks = len(task_grads)
    grads = {i: [torch.flatten(g) for g in task_grads[i]] for i in range(n_tasks)}
    gn = {t: 1.0 for t in grads}  # gradient_normalizers(..., "none")
    for t in range(n_tasks):
        for gr_i in range(len(grads[t])):
            grads[t][gr_i] = grads[t][gr_i] / gn[t]
    sol, min_norm = MinNormSolver.find_min_norm_element([grads[t] for t in range(len(grads))])
    sol = sol * n_tasks
    shared = [sum(sol[i] * task_grads[i][j] for i in range(n_tasks)) for j in range(len(task_grads[0]))]
    return shared, list(sol)


def fairgrad(task_grads, alpha=1.0, residual="fairgrad"):
    """``FairGrad.get_weighted_loss``: ``grad2vec`` into a ``P x K`` matrix, ``fairgrad()``,
    ``overwrite_grad`` (times ``n_tasks``); heads keep their ``losses[i].backward()`` gradient.
    ``residual="fairgrad"``: OptMN-Lab/fairgrad's ``objfn``; ``"samo"``: OptMN-Lab/SAMO's.
    The authors' ``torch.Tensor(w_cpu)`` casts ``w`` to float32 (their training dtype); here it
    takes the gradients' dtype so a float64 test compares the rule, not that cast."""
    n_tasks = len(task_grads)
    grad_dims = [g.numel() for g in task_grads[0]]
    grads = torch.zeros(sum(grad_dims), n_tasks, dtype=task_grads[0][0].dtype)
    for i in range(n_tasks):
        cnt = 0
        for grad in task_grads[i]:
            beg = 0 if cnt == 0 else sum(grad_dims[:cnt])
            en = sum(grad_dims[: cnt + 1])
            grads[beg:en, i].copy_(grad.data.view(-1))
            cnt += 1

    GG = grads.t().mm(grads).cpu()
    w_cpu = fairgrad_w(GG.data.cpu().numpy(), alpha, residual)
    ww = torch.tensor(w_cpu, dtype=grads.dtype)
    g = (grads * ww.view(1, -1)).sum(1)

    newgrad = g * n_tasks
    shared, cnt = [], 0
    for like in task_grads[0]:
        beg = 0 if cnt == 0 else sum(grad_dims[:cnt])
        en = sum(grad_dims[: cnt + 1])
        shared.append(newgrad[beg:en].contiguous().view(like.size()))
        cnt += 1
    return shared, [1.0] * n_tasks


def fairgrad_w(A, alpha=1.0, residual="fairgrad"):
    """The ``least_squares`` call of ``FairGrad.fairgrad`` on the Gram matrix ``A``."""
    n_tasks = A.shape[0]
    x_start = np.ones(n_tasks) / n_tasks

    def objfn(x):
        if residual == "fairgrad":
            return np.dot(A, x) - np.power(1 / x, 1 / alpha)
        return np.power(np.dot(A, x), alpha) - 1 / x

    res = least_squares(objfn, x_start, bounds=(0, np.inf))
    return res.x


# --------------------------------------------------------------------------------------------
# Losses and metrics (experiments/nyuv2/utils.py and the trainers' calc_loss)
# --------------------------------------------------------------------------------------------


def calc_loss(x_pred, x_output, task_type):
    device = x_pred.device
    binary_mask = (torch.sum(x_output, dim=1) != 0).float().unsqueeze(1).to(device)
    if task_type == "semantic":
        loss = F.nll_loss(x_pred, x_output, ignore_index=-1)
    if task_type == "depth":
        loss = torch.sum(torch.abs(x_pred - x_output) * binary_mask) / torch.nonzero(
            binary_mask, as_tuple=False
        ).size(0)
    if task_type == "normal":
        loss = 1 - torch.sum((x_pred * x_output) * binary_mask) / torch.nonzero(
            binary_mask, as_tuple=False
        ).size(0)
    return loss


class ConfMatrix:
    def __init__(self, num_classes):
        self.num_classes = num_classes
        self.mat = None

    def update(self, pred, target):
        n = self.num_classes
        if self.mat is None:
            self.mat = torch.zeros((n, n), dtype=torch.int64, device=pred.device)
        with torch.no_grad():
            k = (target >= 0) & (target < n)
            inds = n * target[k].to(torch.int64) + pred[k]
            self.mat += torch.bincount(inds, minlength=n**2).reshape(n, n)

    def get_metrics(self):
        h = self.mat.float()
        acc = torch.diag(h).sum() / h.sum()
        iu = torch.diag(h) / (h.sum(1) + h.sum(0) - torch.diag(h))
        return torch.mean(iu).cpu().numpy(), acc.cpu().numpy()


def depth_error(x_pred, x_output):
    device = x_pred.device
    binary_mask = (torch.sum(x_output, dim=1) != 0).unsqueeze(1).to(device)
    x_pred_true = x_pred.masked_select(binary_mask)
    x_output_true = x_output.masked_select(binary_mask)
    abs_err = torch.abs(x_pred_true - x_output_true)
    rel_err = torch.abs(x_pred_true - x_output_true) / x_output_true
    return (torch.sum(abs_err) / torch.nonzero(binary_mask, as_tuple=False).size(0)).item(), (
        torch.sum(rel_err) / torch.nonzero(binary_mask, as_tuple=False).size(0)
    ).item()


def normal_error(x_pred, x_output):
    binary_mask = torch.sum(x_output, dim=1) != 0
    error = (
        torch.acos(torch.clamp(torch.sum(x_pred * x_output, 1).masked_select(binary_mask), -1, 1))
        .detach()
        .cpu()
        .numpy()
    )
    error = np.degrees(error)
    return (
        np.mean(error),
        np.median(error),
        np.mean(error < 11.25),
        np.mean(error < 22.5),
        np.mean(error < 30),
    )


NYU_BASE = np.array([0.3830, 0.6376, 0.6754, 0.2780, 25.01, 19.21, 0.3014, 0.5720, 0.6915])
NYU_SIGN = np.array([1, 1, 0, 0, 0, 0, 1, 1, 1])
CITY_BASE = np.array([0.7401, 0.9316, 0.0125, 27.77])
CITY_SIGN = np.array([1, 1, 0, 0])


def delta_fn(a, base=NYU_BASE, sign=NYU_SIGN):
    KK = np.ones(len(base)) * -1
    return (KK**sign * (a - base) / base).mean() * 100.0


def evaluate_epoch(batches, num_classes):
    """The test loop of ``experiments/nyuv2/trainer.py``: ``avg_cost[12:]`` for batches of
    ``(pred_seg, pred_depth, pred_normal, label, depth, normal)``; returns the 12 test columns
    (loss, mIoU, acc | loss, abs, rel | loss, mean, median, <11.25, <22.5, <30)."""
    test_batch = len(batches)
    avg_cost = np.zeros(24, dtype=np.float32)
    cost = np.zeros(24, dtype=np.float32)
    conf_mat = ConfMatrix(num_classes)
    for pred0, pred1, pred2, label, depth, normal in batches:
        test_loss = torch.stack(
            (
                calc_loss(pred0, label, "semantic"),
                calc_loss(pred1, depth, "depth"),
                calc_loss(pred2, normal, "normal"),
            )
        )
        conf_mat.update(pred0.argmax(1).flatten(), label.flatten())
        cost[12] = test_loss[0].item()
        cost[15] = test_loss[1].item()
        cost[16], cost[17] = depth_error(pred1, depth)
        cost[18] = test_loss[2].item()
        cost[19], cost[20], cost[21], cost[22], cost[23] = normal_error(pred2, normal)
        avg_cost[12:] += cost[12:] / test_batch
    avg_cost[13:15] = conf_mat.get_metrics()
    return avg_cost[12:]


# --------------------------------------------------------------------------------------------
# Data (experiments/nyuv2/data.py: RandomScaleCrop and NYUv2.__getitem__)
# --------------------------------------------------------------------------------------------


class RandomScaleCrop:
    def __init__(self, scale=(1.0, 1.2, 1.5)):
        self.scale = scale

    def __call__(self, img, label, depth, normal):
        import random

        height, width = img.shape[-2:]
        sc = self.scale[random.randint(0, len(self.scale) - 1)]
        h, w = int(height / sc), int(width / sc)
        i = random.randint(0, height - h)
        j = random.randint(0, width - w)
        img_ = F.interpolate(
            img[None, :, i : i + h, j : j + w], size=(height, width), mode="bilinear", align_corners=True
        ).squeeze(0)
        label_ = (
            F.interpolate(label[None, None, i : i + h, j : j + w], size=(height, width), mode="nearest")
            .squeeze(0)
            .squeeze(0)
        )
        depth_ = F.interpolate(depth[None, :, i : i + h, j : j + w], size=(height, width), mode="nearest").squeeze(0)
        normal_ = F.interpolate(
            normal[None, :, i : i + h, j : j + w], size=(height, width), mode="bilinear", align_corners=True
        ).squeeze(0)
        return img_, label_, depth_ / sc, normal_


def nyuv2_getitem(data_path, index, augmentation):
    """``NYUv2.__getitem__`` (``data_path`` is ``root + "/train"`` or ``"/val"``)."""
    image = torch.from_numpy(np.moveaxis(np.load(data_path + f"/image/{index:d}.npy"), -1, 0))
    semantic = torch.from_numpy(np.load(data_path + f"/label/{index:d}.npy"))
    depth = torch.from_numpy(np.moveaxis(np.load(data_path + f"/depth/{index:d}.npy"), -1, 0))
    normal = torch.from_numpy(np.moveaxis(np.load(data_path + f"/normal/{index:d}.npy"), -1, 0))
    if augmentation:
        image, semantic, depth, normal = RandomScaleCrop()(image, semantic, depth, normal)
        if torch.rand(1) < 0.5:
            image = torch.flip(image, dims=[2])
            semantic = torch.flip(semantic, dims=[1])
            depth = torch.flip(depth, dims=[2])
            normal = torch.flip(normal, dims=[2])
            normal[0, :, :] = -normal[0, :, :]
    return image.float(), semantic.float(), depth.float(), normal.float()
