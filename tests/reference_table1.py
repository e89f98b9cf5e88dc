# ruff: noqa: B007, B905  (the sources' own loops and zips, kept as written)
"""Reference transcriptions of Table 1's other baselines, for tests.

Each class restates its source's algorithm line by line, with only what a test needs changed:
the modules are given (``featurizer``, ``classifier``) instead of built from ``input_shape``,
and every place where the source writes ``torch.optim.Adam(params, lr=..., weight_decay=...)``
calls a given ``make_optimizer(params, lr, weight_decay, **extra)`` instead, so the same rule
can be run with SGD. Nothing here is used by the package.

Sources:

- DomainBed, ``facebookresearch/DomainBed`` at b93c22a, ``domainbed/algorithms.py``: ``IRM``,
  ``VREx``, ``GroupDRO``, ``Mixup`` (with ``lib/misc.random_pairs_of_minibatches``),
  ``AbstractMMD`` (``MMD``, ``CORAL``), ``RSC``, ``Fish`` (with ``networks.WholeFish`` and
  ``lib/misc.ParamDict``), ``AbstractDANN`` (``DANN``, ``CDANN``, with ``networks.MLP``).
- IIB, ``Luodian/IIB`` at a7457e5: ``IIB`` in ``domainbed/algorithms.py``.
- GGA, ``aristotelisballas/GGA`` at 5450c2b: ``ERM_GGA`` and ``GGA_L`` in
  ``domainbed/algorithms/algorithms.py``; which update runs at which step from
  ``domainbed/trainer.py``.
- GAM, ``xxgege/GAM`` at 694133d: the ``GAM`` optimizer of ``gam/gam.py`` (with
  ``gam/util.py``'s running-stats switches), driven by a plain cross-entropy closure.
"""

from __future__ import annotations

import copy
import itertools
import operator
from collections import OrderedDict
from numbers import Number

import numpy as np
import torch
import torch.autograd as autograd
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm


def adam(params, lr, weight_decay, **extra):
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **extra)


class _ERM(nn.Module):
    """DomainBed's ``ERM.__init__`` with the modules given."""

    def __init__(self, featurizer, classifier, hparams, make_optimizer=adam):
        super().__init__()
        self.hparams = hparams
        self.make_optimizer = make_optimizer
        self.featurizer = featurizer
        self.classifier = classifier
        self.network = nn.Sequential(self.featurizer, self.classifier)
        self.optimizer = make_optimizer(
            self.network.parameters(), lr=self.hparams["lr"], weight_decay=self.hparams["weight_decay"]
        )

    def predict(self, x):
        return self.network(x)


# --------------------------------------------------------------------------------------------
# DomainBed


class IRM(_ERM):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("update_count", torch.tensor([0]))

    @staticmethod
    def _irm_penalty(logits, y):
        device = "cuda" if logits[0][0].is_cuda else "cpu"
        scale = torch.tensor(1.0).to(device).requires_grad_()
        loss_1 = F.cross_entropy(logits[::2] * scale, y[::2])
        loss_2 = F.cross_entropy(logits[1::2] * scale, y[1::2])
        grad_1 = autograd.grad(loss_1, [scale], create_graph=True)[0]
        grad_2 = autograd.grad(loss_2, [scale], create_graph=True)[0]
        result = torch.sum(grad_1 * grad_2)
        return result

    def update(self, minibatches):
        penalty_weight = (
            self.hparams["irm_lambda"] if self.update_count >= self.hparams["irm_penalty_anneal_iters"] else 1.0
        )
        nll = 0.0
        penalty = 0.0

        all_x = torch.cat([x for x, y in minibatches])
        all_logits = self.network(all_x)
        all_logits_idx = 0
        for i, (x, y) in enumerate(minibatches):
            logits = all_logits[all_logits_idx : all_logits_idx + x.shape[0]]
            all_logits_idx += x.shape[0]
            nll += F.cross_entropy(logits, y)
            penalty += self._irm_penalty(logits, y)
        nll /= len(minibatches)
        penalty /= len(minibatches)
        loss = nll + (penalty_weight * penalty)

        if self.update_count == self.hparams["irm_penalty_anneal_iters"]:
            # a fresh optimizer, as the source's fresh Adam
            self.optimizer = self.make_optimizer(
                self.network.parameters(), lr=self.hparams["lr"], weight_decay=self.hparams["weight_decay"]
            )

        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

        self.update_count += 1
        return {"loss": loss.item(), "nll": nll.item(), "penalty": penalty.item()}


class VREx(_ERM):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("update_count", torch.tensor([0]))

    def update(self, minibatches):
        if self.update_count >= self.hparams["vrex_penalty_anneal_iters"]:
            penalty_weight = self.hparams["vrex_lambda"]
        else:
            penalty_weight = 1.0

        nll = 0.0

        all_x = torch.cat([x for x, y in minibatches])
        all_logits = self.network(all_x)
        all_logits_idx = 0
        losses = torch.zeros(len(minibatches))
        for i, (x, y) in enumerate(minibatches):
            logits = all_logits[all_logits_idx : all_logits_idx + x.shape[0]]
            all_logits_idx += x.shape[0]
            nll = F.cross_entropy(logits, y)
            losses[i] = nll

        mean = losses.mean()
        penalty = ((losses - mean) ** 2).mean()
        loss = mean + penalty_weight * penalty

        if self.update_count == self.hparams["vrex_penalty_anneal_iters"]:
            self.optimizer = self.make_optimizer(
                self.network.parameters(), lr=self.hparams["lr"], weight_decay=self.hparams["weight_decay"]
            )

        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

        self.update_count += 1
        return {"loss": loss.item(), "nll": nll.item(), "penalty": penalty.item()}


class GroupDRO(_ERM):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("q", torch.Tensor())

    def update(self, minibatches):
        device = "cuda" if minibatches[0][0].is_cuda else "cpu"

        if not len(self.q):
            self.q = torch.ones(len(minibatches)).to(device)

        losses = torch.zeros(len(minibatches)).to(device)

        for m in range(len(minibatches)):
            x, y = minibatches[m]
            losses[m] = F.cross_entropy(self.predict(x), y)
            self.q[m] *= (self.hparams["groupdro_eta"] * losses[m].data).exp()

        self.q /= self.q.sum()

        loss = torch.dot(losses, self.q)

        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

        return {"loss": loss.item()}


def random_pairs_of_minibatches(minibatches):
    perm = torch.randperm(len(minibatches)).tolist()
    pairs = []

    for i in range(len(minibatches)):
        j = i + 1 if i < (len(minibatches) - 1) else 0

        xi, yi = minibatches[perm[i]][0], minibatches[perm[i]][1]
        xj, yj = minibatches[perm[j]][0], minibatches[perm[j]][1]

        min_n = min(len(xi), len(xj))

        pairs.append(((xi[:min_n], yi[:min_n]), (xj[:min_n], yj[:min_n])))

    return pairs


class Mixup(_ERM):
    def update(self, minibatches):
        objective = 0

        for (xi, yi), (xj, yj) in random_pairs_of_minibatches(minibatches):
            lam = np.random.beta(self.hparams["mixup_alpha"], self.hparams["mixup_alpha"])

            x = lam * xi + (1 - lam) * xj
            predictions = self.predict(x)

            objective += lam * F.cross_entropy(predictions, yi)
            objective += (1 - lam) * F.cross_entropy(predictions, yj)

        objective /= len(minibatches)

        self.optimizer.zero_grad()
        objective.backward()
        self.optimizer.step()

        return {"loss": objective.item()}


class AbstractMMD(_ERM):
    def __init__(self, featurizer, classifier, hparams, gaussian, make_optimizer=adam):
        super().__init__(featurizer, classifier, hparams, make_optimizer)
        self.kernel_type = "gaussian" if gaussian else "mean_cov"

    def my_cdist(self, x1, x2):
        x1_norm = x1.pow(2).sum(dim=-1, keepdim=True)
        x2_norm = x2.pow(2).sum(dim=-1, keepdim=True)
        res = torch.addmm(x2_norm.transpose(-2, -1), x1, x2.transpose(-2, -1), alpha=-2).add_(x1_norm)
        return res.clamp_min_(1e-30)

    def gaussian_kernel(self, x, y, gamma=[0.001, 0.01, 0.1, 1, 10, 100, 1000]):  # noqa: B006 (the source's)
        D = self.my_cdist(x, y)
        K = torch.zeros_like(D)

        for g in gamma:
            K.add_(torch.exp(D.mul(-g)))

        return K

    def mmd(self, x, y):
        if self.kernel_type == "gaussian":
            Kxx = self.gaussian_kernel(x, x).mean()
            Kyy = self.gaussian_kernel(y, y).mean()
            Kxy = self.gaussian_kernel(x, y).mean()
            return Kxx + Kyy - 2 * Kxy
        else:
            mean_x = x.mean(0, keepdim=True)
            mean_y = y.mean(0, keepdim=True)
            cent_x = x - mean_x
            cent_y = y - mean_y
            cova_x = (cent_x.t() @ cent_x) / (len(x) - 1)
            cova_y = (cent_y.t() @ cent_y) / (len(y) - 1)

            mean_diff = (mean_x - mean_y).pow(2).mean()
            cova_diff = (cova_x - cova_y).pow(2).mean()

            return mean_diff + cova_diff

    def update(self, minibatches):
        objective = 0
        penalty = 0
        nmb = len(minibatches)

        features = [self.featurizer(xi) for xi, _ in minibatches]
        classifs = [self.classifier(fi) for fi in features]
        targets = [yi for _, yi in minibatches]

        for i in range(nmb):
            objective += F.cross_entropy(classifs[i], targets[i])
            for j in range(i + 1, nmb):
                penalty += self.mmd(features[i], features[j])

        objective /= nmb
        if nmb > 1:
            penalty /= nmb * (nmb - 1) / 2

        self.optimizer.zero_grad()
        (objective + (self.hparams["mmd_gamma"] * penalty)).backward()
        self.optimizer.step()

        if torch.is_tensor(penalty):
            penalty = penalty.item()

        return {"loss": objective.item(), "penalty": penalty}


class RSC(_ERM):
    def __init__(self, featurizer, classifier, hparams, num_classes, make_optimizer=adam):
        super().__init__(featurizer, classifier, hparams, make_optimizer)
        self.drop_f = (1 - hparams["rsc_f_drop_factor"]) * 100
        self.drop_b = (1 - hparams["rsc_b_drop_factor"]) * 100
        self.num_classes = num_classes

    def update(self, minibatches):
        device = "cuda" if minibatches[0][0].is_cuda else "cpu"
        all_x = torch.cat([x for x, y in minibatches])
        all_y = torch.cat([y for _, y in minibatches])
        all_o = torch.nn.functional.one_hot(all_y, self.num_classes)
        all_f = self.featurizer(all_x)
        all_p = self.classifier(all_f)

        all_g = autograd.grad((all_p * all_o).sum(), all_f)[0]

        percentiles = np.percentile(all_g.cpu(), self.drop_f, axis=1)
        percentiles = torch.Tensor(percentiles)
        percentiles = percentiles.unsqueeze(1).repeat(1, all_g.size(1))
        mask_f = all_g.lt(percentiles.to(device)).float()

        all_f_muted = all_f * mask_f

        all_p_muted = self.classifier(all_f_muted)

        all_s = F.softmax(all_p, dim=1)
        all_s_muted = F.softmax(all_p_muted, dim=1)
        changes = (all_s * all_o).sum(1) - (all_s_muted * all_o).sum(1)
        percentile = np.percentile(changes.detach().cpu(), self.drop_b)
        mask_b = changes.lt(percentile).float().view(-1, 1)
        mask = torch.logical_or(mask_f, mask_b).float()

        all_p_muted_again = self.classifier(all_f * mask)

        loss = F.cross_entropy(all_p_muted_again, all_y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

        return {"loss": loss.item()}


class ParamDict(OrderedDict):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, *kwargs)

    def _prototype(self, other, op):
        if isinstance(other, Number):
            return ParamDict({k: op(v, other) for k, v in self.items()})
        elif isinstance(other, dict):
            return ParamDict({k: op(self[k], other[k]) for k in self})
        else:
            raise NotImplementedError

    def __add__(self, other):
        return self._prototype(other, operator.add)

    def __rmul__(self, other):
        return self._prototype(other, operator.mul)

    __mul__ = __rmul__

    def __neg__(self):
        return ParamDict({k: -v for k, v in self.items()})

    def __rsub__(self, other):
        return self.__add__(other.__neg__())

    __sub__ = __rsub__


class WholeFish(nn.Module):
    """``networks.WholeFish`` with the architecture given as ``make_network()``: built anew
    (drawing its initial weights) and loaded with ``weights``."""

    def __init__(self, make_network, weights=None):
        super().__init__()
        self.net = make_network()
        if weights is not None:
            self.load_state_dict(copy.deepcopy(weights))

    def reset_weights(self, weights):
        self.load_state_dict(copy.deepcopy(weights))

    def forward(self, x):
        return self.net(x)


class Fish(nn.Module):
    def __init__(self, make_network, weights, hparams, make_optimizer=adam):
        super().__init__()
        self.hparams = hparams
        self.make_network = make_network
        self.make_optimizer = make_optimizer
        self.network = WholeFish(make_network, weights)
        self.optimizer = make_optimizer(
            self.network.parameters(), lr=self.hparams["lr"], weight_decay=self.hparams["weight_decay"]
        )
        self.optimizer_inner_state = None

    def create_clone(self, device):
        self.network_inner = WholeFish(self.make_network, weights=self.network.state_dict()).to(device)
        self.optimizer_inner = self.make_optimizer(
            self.network_inner.parameters(), lr=self.hparams["lr"], weight_decay=self.hparams["weight_decay"]
        )
        if self.optimizer_inner_state is not None:
            self.optimizer_inner.load_state_dict(self.optimizer_inner_state)

    def fish(self, meta_weights, inner_weights, lr_meta):
        meta_weights = ParamDict(meta_weights)
        inner_weights = ParamDict(inner_weights)
        meta_weights += lr_meta * (inner_weights - meta_weights)
        return meta_weights

    def update(self, minibatches):
        self.create_clone(minibatches[0][0].device)

        for x, y in minibatches:
            loss = F.cross_entropy(self.network_inner(x), y)
            self.optimizer_inner.zero_grad()
            loss.backward()
            self.optimizer_inner.step()

        self.optimizer_inner_state = self.optimizer_inner.state_dict()
        meta_weights = self.fish(
            meta_weights=self.network.state_dict(),
            inner_weights=self.network_inner.state_dict(),
            lr_meta=self.hparams["meta_lr"],
        )
        self.network.reset_weights(meta_weights)

        return {"loss": loss.item()}


class MLP(nn.Module):
    def __init__(self, n_inputs, n_outputs, hparams):
        super().__init__()
        self.input = nn.Linear(n_inputs, hparams["mlp_width"])
        self.dropout = nn.Dropout(hparams["mlp_dropout"])
        self.hiddens = nn.ModuleList(
            [nn.Linear(hparams["mlp_width"], hparams["mlp_width"]) for _ in range(hparams["mlp_depth"] - 2)]
        )
        self.output = nn.Linear(hparams["mlp_width"], n_outputs)
        self.n_outputs = n_outputs
        self.activation = nn.Identity()

    def forward(self, x):
        x = self.input(x)
        x = self.dropout(x)
        x = F.relu(x)
        for hidden in self.hiddens:
            x = hidden(x)
            x = self.dropout(x)
            x = F.relu(x)
        x = self.output(x)
        x = self.activation(x)
        return x


class AbstractDANN(nn.Module):
    """``make_optimizer(params, lr, weight_decay, betas)`` stands for the source's
    ``Adam(params, lr, weight_decay, betas)``. ``discriminator`` and ``class_embeddings`` are
    given (their weights copied from the implementation under test)."""

    def __init__(self, featurizer, classifier, discriminator, class_embeddings, hparams, conditional,
                 class_balance, make_optimizer=adam):  # fmt: skip
        super().__init__()
        self.hparams = hparams
        self.register_buffer("update_count", torch.tensor([0]))
        self.conditional = conditional
        self.class_balance = class_balance

        self.featurizer = featurizer
        self.classifier = classifier
        self.discriminator = discriminator
        self.class_embeddings = class_embeddings

        self.disc_opt = make_optimizer(
            (list(self.discriminator.parameters()) + list(self.class_embeddings.parameters())),
            lr=self.hparams["lr_d"],
            weight_decay=self.hparams["weight_decay_d"],
            betas=(self.hparams["beta1"], 0.9),
        )

        self.gen_opt = make_optimizer(
            (list(self.featurizer.parameters()) + list(self.classifier.parameters())),
            lr=self.hparams["lr_g"],
            weight_decay=self.hparams["weight_decay_g"],
            betas=(self.hparams["beta1"], 0.9),
        )

    def update(self, minibatches):
        device = "cuda" if minibatches[0][0].is_cuda else "cpu"
        self.update_count += 1
        all_x = torch.cat([x for x, y in minibatches])
        all_y = torch.cat([y for x, y in minibatches])
        all_z = self.featurizer(all_x)
        if self.conditional:
            disc_input = all_z + self.class_embeddings(all_y)
        else:
            disc_input = all_z
        disc_out = self.discriminator(disc_input)
        disc_labels = torch.cat(
            [torch.full((x.shape[0],), i, dtype=torch.int64, device=device) for i, (x, y) in enumerate(minibatches)]
        )

        if self.class_balance:
            y_counts = F.one_hot(all_y).sum(dim=0)
            weights = 1.0 / (y_counts[all_y] * y_counts.shape[0]).float()
            disc_loss = F.cross_entropy(disc_out, disc_labels, reduction="none")
            disc_loss = (weights * disc_loss).sum()
        else:
            disc_loss = F.cross_entropy(disc_out, disc_labels)

        input_grad = autograd.grad(
            F.cross_entropy(disc_out, disc_labels, reduction="sum"), [disc_input], create_graph=True
        )[0]
        grad_penalty = (input_grad**2).sum(dim=1).mean(dim=0)
        disc_loss += self.hparams["grad_penalty"] * grad_penalty

        d_steps_per_g = self.hparams["d_steps_per_g_step"]
        if self.update_count.item() % (1 + d_steps_per_g) < d_steps_per_g:
            self.disc_opt.zero_grad()
            disc_loss.backward()
            self.disc_opt.step()
            return {"disc_loss": disc_loss.item()}
        else:
            all_preds = self.classifier(all_z)
            classifier_loss = F.cross_entropy(all_preds, all_y)
            gen_loss = classifier_loss + (self.hparams["lambda"] * -disc_loss)
            self.disc_opt.zero_grad()
            self.gen_opt.zero_grad()
            gen_loss.backward()
            self.gen_opt.step()
            return {"gen_loss": gen_loss.item()}


# --------------------------------------------------------------------------------------------
# IIB (Luodian/IIB)


class IIB(_ERM):
    """The modules of the VIB and the two classifiers are given (weights copied from the
    implementation under test); ``domain_indx`` is built from ``hparams['batch_size']`` and
    ``num_domains`` as in the source."""

    def __init__(self, featurizer, inv_classifier, encoder, fc3_mu, fc3_logvar, env_classifier, hparams,
                 num_domains, make_optimizer=adam):  # fmt: skip
        super().__init__(featurizer, nn.Linear(1, 1), hparams, make_optimizer)  # ERM's unused classifier
        self.encoder = encoder
        self.fc3_mu = fc3_mu
        self.fc3_logvar = fc3_logvar
        self.inv_classifier = inv_classifier
        self.env_classifier = env_classifier
        self.domain_indx = [torch.full((hparams["batch_size"], 1), indx) for indx in range(num_domains)]
        self.optimizer = make_optimizer(
            list(self.featurizer.parameters())
            + list(self.inv_classifier.parameters())
            + list(self.env_classifier.parameters())
            + list(self.encoder.parameters())
            + list(self.fc3_mu.parameters())
            + list(self.fc3_logvar.parameters()),
            lr=self.hparams["lr"],
            weight_decay=self.hparams["weight_decay"],
        )

    def encoder_fun(self, res_feat):
        latent_z = self.encoder(res_feat)
        mu = self.fc3_mu(latent_z)
        logvar = self.fc3_logvar(latent_z)
        return mu, logvar

    def reparameterize(self, mu, logvar):
        if self.training:
            std = torch.exp(logvar / 2)
            eps = torch.randn_like(std)
            return torch.add(torch.mul(std, eps), mu)
        else:
            return mu

    def update(self, minibatches):
        device = "cuda" if minibatches[0][0].is_cuda else "cpu"
        all_x = torch.cat([x for x, y in minibatches])
        all_y = torch.cat([y for x, y in minibatches])
        embeddings = torch.cat([curr_dom_embed for curr_dom_embed in self.domain_indx]).to(device)
        all_z = self.featurizer(all_x)
        mu, logvar = self.encoder_fun(all_z)
        all_z = self.reparameterize(mu, logvar)

        ib_loss = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        inv_loss = F.cross_entropy(self.inv_classifier(all_z), all_y)
        env_loss = F.cross_entropy(self.env_classifier(torch.cat([all_z, embeddings], 1)), all_y)

        total_loss = (
            inv_loss
            + env_loss
            + self.hparams["lambda_beta"] * ib_loss
            + self.hparams["lambda_inv_risks"] * (inv_loss - env_loss) ** 2
        )
        self.optimizer.zero_grad()
        total_loss.backward()
        self.optimizer.step()
        return {
            "loss_ib": ib_loss.item(),
            "loss_env": env_loss.item(),
            "loss_inv": inv_loss.item(),
            "loss_all": total_loss.item(),
        }

    def predict(self, x):
        z = self.featurizer(x)
        mu, logvar = self.encoder_fun(z)
        z = self.reparameterize(mu, logvar)
        y = self.inv_classifier(z)
        return y


# --------------------------------------------------------------------------------------------
# GGA (aristotelisballas/GGA)


class ERM_GGA(_ERM):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cos = nn.CosineSimilarity(dim=0)
        self.neighborhoodSize = self.hparams["neighborhoodSize"]
        self.P_T = 1.0
        self.best_params = None

    def perturb_weights(self, scale=0.0001):
        with torch.no_grad():
            for param in self.featurizer.parameters():
                if param.requires_grad:
                    noise = (torch.rand_like(param) * 2 - 1) * self.neighborhoodSize * self.P_T
                    param.data += noise

    def save_best_weights(self):
        self.best_params = [param.data.clone() for param in self.network.parameters()]

    def restore_best_weights(self):
        with torch.no_grad():
            for param, best_param in zip(self.network.parameters(), self.best_params):
                param.data.copy_(best_param)

    def calculate_domain_gradients(self, x, y):
        grads_i_v = []
        for x_i, y_i in zip(x, y):
            loss_i = F.cross_entropy(self.predict(x_i), y_i)
            grad_i = autograd.grad(loss_i, self.network.parameters(), retain_graph=True)
            grads_i_v.append(torch.cat([g.flatten() for g in grad_i]))
        return grads_i_v

    def calculate_minimum_similarity(self, grads_i_v):
        pairwise_combinations = list(itertools.combinations(range(len(grads_i_v)), 2))
        all_sims = [self.cos(grads_i_v[i], grads_i_v[j]) for i, j in pairwise_combinations]
        return min(all_sims)

    def update_simulated_annealing(self, x, y):
        all_x = torch.cat(x)
        all_y = torch.cat(y)

        grads_i_v = self.calculate_domain_gradients(x, y)

        best_min_sim = self.calculate_minimum_similarity(grads_i_v)
        current_loss = F.cross_entropy(self.predict(all_x), all_y).item()

        current_params = [param.data.clone() for param in self.network.parameters()]
        self.save_best_weights()

        search_steps = 250
        best_search_loss = current_loss

        for search_step in range(search_steps):
            self.perturb_weights()
            grads_i_v = self.calculate_domain_gradients(x, y)
            step_min_sim = self.calculate_minimum_similarity(grads_i_v)
            step_loss = F.cross_entropy(self.predict(all_x), all_y)
            step_loss = step_loss.item()

            delta_loss = step_loss - best_search_loss
            delta_sim = best_min_sim - step_min_sim

            if delta_loss < 0.1 and delta_sim < 0:
                best_min_sim = step_min_sim
                best_search_loss = step_loss
                self.save_best_weights()
                with torch.no_grad():
                    for param, original_param in zip(self.network.parameters(), current_params):
                        param.data.copy_(original_param)

        self.restore_best_weights()

        loss = F.cross_entropy(self.predict(all_x), all_y)
        self.optimizer.zero_grad()
        loss.backward()

        self.optimizer.step()

        return {"loss": loss.item()}

    def update(self, x, y):
        all_x = torch.cat(x)
        all_y = torch.cat(y)

        loss = F.cross_entropy(self.predict(all_x), all_y)
        self.optimizer.zero_grad()
        loss.backward()

        self.optimizer.step()

        return {"loss": loss.item()}


def gga_trainer_step(algorithm, step, minibatches):
    """``trainer.py``'s choice of update at ``step`` (counted from 0)."""
    x = [x for x, _ in minibatches]
    y = [y for _, y in minibatches]
    if algorithm.hparams["start_step"] <= step <= algorithm.hparams["end_step"]:
        return algorithm.update_simulated_annealing(x, y)
    return algorithm.update(x, y)


class GGA_L(_ERM):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cos = nn.CosineSimilarity(dim=0)
        self.gga_l_gamma = self.hparams["gga_l_gamma"]

    def calculate_domain_gradients(self, x, y):
        grads_i_v = []
        for x_i, y_i in zip(x, y):
            loss_i = F.cross_entropy(self.predict(x_i), y_i)
            grad_i = autograd.grad(loss_i, self.network.parameters(), retain_graph=True)
            grads_i_v.append(torch.cat([g.flatten() for g in grad_i]))
        return grads_i_v

    def calculate_similarity(self, grads_i_v):
        pairwise_combinations = list(itertools.combinations(range(len(grads_i_v)), 2))
        all_sims = [self.cos(grads_i_v[i], grads_i_v[j]) for i, j in pairwise_combinations]
        avg_sim = sum(all_sims) / len(pairwise_combinations)
        return avg_sim

    def update_perturbed(self, x, y):
        all_x = torch.cat(x)
        all_y = torch.cat(y)

        grads_i_v = self.calculate_domain_gradients(x, y)
        min_sim = self.calculate_similarity(grads_i_v)

        loss = F.cross_entropy(self.predict(all_x), all_y)
        self.optimizer.zero_grad()
        loss.backward()

        alpha = self.gga_l_gamma * (1 - min_sim)
        with torch.no_grad():
            for param in self.network.parameters():
                if param.grad is not None:
                    noise = torch.randn_like(param.grad) * alpha
                    param.grad.add_(noise)

        self.optimizer.step()

        return {"loss": loss.item()}


# --------------------------------------------------------------------------------------------
# GAM (xxgege/GAM), the optimizer, with ``args`` as a dict and without distributed training


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


class GAM(torch.optim.Optimizer):
    def __init__(self, params, base_optimizer, model, args, perturb_eps=1e-12):
        super().__init__(params, dict(adaptive=False))
        self.perturb_eps = perturb_eps
        self.model = model
        self.base_optimizer = base_optimizer
        self.param_groups = self.base_optimizer.param_groups
        self.adaptive = False
        self.args = args
        self.grad_rho = args["grad_rho"]  # constant schedulers
        self.grad_norm_rho = args["grad_norm_rho"]

    @torch.no_grad()
    def perturb_weights(self, perturb_idx):
        grad_norm = self._grad_norm(weight_adaptive=self.adaptive)
        scale = self.grad_rho / (grad_norm + self.perturb_eps)

        if perturb_idx == 0:
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    self.state[p]["g_0"] = p.grad.data.clone()
                    e_w = p.grad * scale.to(p)
                    p.add_(e_w)
                    self.state[p]["e_w_0"] = e_w
        elif perturb_idx == 1:
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    self.state[p]["g_2"] = p.grad.data.clone()
                    e_w = p.grad * scale.to(p)
                    p.add_(e_w)
                    self.state[p]["e_w_1_2"] += e_w

    @torch.no_grad()
    def grad_norm_ascent(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                self.state[p]["g_1"] = p.grad.data.clone()
                p.grad.data -= self.state[p]["g_0"]

        grad_norm = self._grad_norm(weight_adaptive=self.adaptive)
        scale = self.grad_norm_rho / (grad_norm + self.perturb_eps)

        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                e_w = p.grad * scale.to(p)
                p.add_(e_w)
                self.state[p]["e_w_1_2"] = e_w

    @torch.no_grad()
    def unperturb(self, perturb_key):
        for group in self.param_groups:
            for p in group["params"]:
                if perturb_key in self.state[p].keys():
                    p.data.sub_(self.state[p][perturb_key])

    @torch.no_grad()
    def gradient_decompose(self, args):
        inner_prod = 0.0
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                self.state[p]["pro_m"] = self.state[p]["g_0"] + abs(args["grad_beta_2"]) * self.state[p]["g_2"]
                p.grad.data = args["grad_beta_1"] * self.state[p]["g_1"] + args["grad_beta_3"] * p.grad.data.detach().clone()
                inner_prod += torch.sum(self.state[p]["pro_m"] * p.grad.data)

        new_grad_norm = self._grad_norm()
        old_grad_norm = self._grad_norm(by="pro_m")

        cosine = inner_prod / (new_grad_norm * old_grad_norm + self.perturb_eps)

        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                vertical = self.state[p]["pro_m"] - cosine * old_grad_norm * p.grad.data / (
                    new_grad_norm + self.perturb_eps
                )
                p.grad.data.add_(vertical, alpha=-args["grad_gamma"])

    @torch.no_grad()
    def _grad_norm(self, weight_adaptive=False, by="grad"):
        norm = 0.0
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if by == "grad":
                    g = p.grad.data
                elif by == "pro_m":
                    g = self.state[p]["pro_m"]
                norm += torch.sum(g**2)
        return torch.sqrt(norm)

    @torch.no_grad()
    def set_closure(self, loss_fn, inputs, targets):
        def get_grad():
            self.zero_grad()
            with torch.enable_grad():
                outputs = self.model(inputs)
                loss = loss_fn(outputs, targets)
            loss_value = loss.data.clone().detach()
            loss.backward()
            return outputs, loss_value

        self.forward_backward_func = get_grad

    def step(self, closure=None):
        get_grad = closure if closure else self.forward_backward_func
        outputs, loss_value = get_grad()
        self.perturb_weights(perturb_idx=0)
        disable_running_stats(self.model)
        get_grad()
        self.unperturb(perturb_key="e_w_0")
        self.grad_norm_ascent()
        get_grad()
        self.perturb_weights(perturb_idx=1)
        get_grad()
        self.gradient_decompose(args=self.args)
        self.unperturb(perturb_key="e_w_1_2")
        self.base_optimizer.step()
        enable_running_stats(self.model)
        return outputs, loss_value

    def zero_grad(self, set_to_none: bool = False):
        self.base_optimizer.zero_grad(set_to_none)


def gam_erm_step(gam, minibatches):
    """One GAM step with the ERM closure: mean cross-entropy of the concatenated batch."""
    all_x = torch.cat([x for x, _ in minibatches])
    all_y = torch.cat([y for _, y in minibatches])
    gam.set_closure(F.cross_entropy, all_x, all_y)
    _, loss = gam.step()
    return {"loss": loss.item()}
