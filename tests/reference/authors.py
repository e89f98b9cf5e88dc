# ruff: noqa: B007, B905  (the sources' own loops and zips, kept as written)
"""Reference transcriptions of IIB, GGA, GGA-L and GAM from their authors' repositories, for
tests (the conventions of ``tests/reference/domainbed.py``: modules given, ``make_optimizer``
where the source builds Adam). Nothing here is used by the package.

Sources:

- IIB, ``Luodian/IIB`` at a7457e5: ``IIB`` in ``domainbed/algorithms.py``.
- GGA, ``aristotelisballas/GGA`` at 5450c2b: ``ERM_GGA`` and ``GGA_L`` in
  ``domainbed/algorithms/algorithms.py``; which update runs at which step from
  ``domainbed/trainer.py``.
- GAM, ``xxgege/GAM`` at 694133d: the ``GAM`` optimizer of ``gam/gam.py`` (with
  ``gam/util.py``'s running-stats switches), driven by a plain cross-entropy closure.
"""

from __future__ import annotations

import itertools

import torch
import torch.autograd as autograd
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from tests.reference.domainbed import _ERM, adam

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
