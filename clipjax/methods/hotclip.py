"""HOT-CLIP submodels: adversarial fine-tuning of CLIP's visual encoder (TeCoA and FARE).

Paper: "Towards Adversarially Robust CLIP: A Hierarchical Model Fusion Method Using Optimal
Transport" (ICLR 2026 submission), Sec. 3 and appendix D. Each submodel of the |A| × |T| grid is
adversarially fine-tuned under one attack a ∈ {FGSM, PGD, MIM} (ℓ∞, radius ε) with one prompt
template t; the text tower and the logit scale stay frozen (stage `frozen: ["text/.*",
"logit_scale"]`). The fusion of the submodels lives in `clipjax.fusion`.

* `hotclip_tecoa` (Mao et al., ICLR 2023): cross-entropy of the zero-shot logits
  `s · f(x + δ) · t_cᵀ` of the adversarial image against the class text embeddings `t_c` of one
  prompt template (computed by the frozen text tower from token ids given in the config), with
  δ from the attack maximising the same cross-entropy against the current parameters.
* `hotclip_fare` (Schlarmann et al., ICML 2024), the unsupervised fine-tune: squared distance
  `‖f_θ(x + δ) − f_orig(x)‖²` between the adversarial embedding and the frozen original model's
  clean embedding, δ maximising the same distance. The original visual tower is carried as
  method parameters `params["method"]["fare_orig"]` (freeze them with `method/.*`). Embeddings
  are the model's L2-normalised ones (RobustVLM's FARE uses unnormalised ones).

The attack runs inside the train step (`clipjax.attacks`, pixels in [0, 1]) against the current
parameters with gradients stopped; one PGD/MIM step costs one forward+backward of the visual
tower. Labels come from `batch[label_key]` (e.g. "labels/shape", sent by the trainer for
`config.data.train_labels=["shape"]`); examples with label −1 are left out of the loss.
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from clipjax.attacks import ce_objective, fgsm, mim, pgd
from clipjax.methods.base import Embeddings, Method, model_params

__all__ = ["ATTACKS", "METHODS", "fare", "make_attack", "tecoa"]

ATTACKS = ("fgsm", "pgd", "mim")


def _stateless(_: int) -> dict:
  return {}


def make_attack(
  attack: str, *, eps: float, step_size: float | None, steps: int | None, decay: float
) -> Callable:
  """`run(objective, x_bhwc, target, key) -> x_adv_bhwc` for an ℓ∞ FGSM/PGD/MIM attack.

  Args:
    attack: "fgsm", "pgd" (uniform random start) or "mim".
    eps: ℓ∞ radius in pixel units ([0, 1] images), >= 0.
    step_size: step size of PGD/MIM (ignored by FGSM, which steps by ε).
    steps: iterations of PGD/MIM (ignored by FGSM).
    decay: MIM momentum μ (ignored otherwise).
  """
  if attack not in ATTACKS:
    raise ValueError(f"hotclip: attack={attack!r} is not one of {ATTACKS}")
  if not eps >= 0:
    raise ValueError(f"hotclip: eps must be >= 0, got {eps}")
  if attack != "fgsm":
    if steps is None or steps < 1:
      raise ValueError(f"hotclip: attack {attack!r} needs steps >= 1, got {steps}")
    if step_size is None or not step_size >= 0:
      raise ValueError(f"hotclip: attack {attack!r} needs step_size >= 0, got {step_size}")

  def run(objective, x_bhwc, target, key):
    if attack == "fgsm":
      return fgsm(objective, x_bhwc, target, eps=eps, norm="linf", key=key)
    if attack == "pgd":
      return pgd(
        objective,
        x_bhwc,
        target,
        eps=eps,
        step_size=step_size,
        steps=steps,
        norm="linf",
        random_start=True,
        key=key,
      )
    return mim(
      objective,
      x_bhwc,
      target,
      eps=eps,
      step_size=step_size,
      steps=steps,
      decay=decay,
      norm="linf",
      key=key,
    )

  return run


def _labels(batch: dict[str, jax.Array], label_key: str) -> tuple[jax.Array, jax.Array]:
  if label_key not in batch:
    raise KeyError(
      f"hotclip_tecoa needs batch[{label_key!r}] (have {sorted(batch)}); request the label set "
      f"with config.data.train_labels=[{label_key.removeprefix('labels/')!r}]."
    )
  labels_b = jnp.asarray(batch[label_key]).astype(jnp.int32)
  return jnp.maximum(labels_b, 0), labels_b >= 0


def tecoa(
  *,
  label_key: str,
  class_ids: Sequence[Sequence[int]],
  attack: str,
  eps: float,
  step_size: float | None,
  steps: int | None,
  decay: float,
  logit_scale: float | None,
) -> Method:
  """TeCoA: cross-entropy of adversarial zero-shot logits against one template's class prompts.

  Args:
    label_key: batch key of the int labels [b] (−1 = no label), e.g. "labels/shape".
    class_ids: [C, L] token ids of "template(classname)" per class (L = model context length).
    attack, eps, step_size, steps, decay: the training attack (see `make_attack`).
    logit_scale: fixed multiplier of the cosine logits (TeCoA/RobustVLM: 100), or None for the
      model's own (frozen) `exp(logit_scale)`.

  Returns:
    A `Method` whose `forward` attacks `batch["image"]` and encodes the class prompts; aux:
    `tecoa/adv_acc` (accuracy on the adversarial images), `tecoa/n_labelled`.
  """
  ids_cl = np.asarray(class_ids, np.int32)
  if ids_cl.ndim != 2 or ids_cl.shape[0] < 2:
    raise ValueError(f"hotclip_tecoa: class_ids must be [C >= 2, L] token ids, got {ids_cl.shape}")
  run_attack = make_attack(attack, eps=eps, step_size=step_size, steps=steps, decay=decay)

  def forward(model, params, batch, rng):
    p = model_params(params)
    if ids_cl.shape[1] != model.config.text.context_length:
      raise ValueError(
        f"hotclip_tecoa: class_ids have length {ids_cl.shape[1]}, the model's context length is "
        f"{model.config.text.context_length}; tokenize the prompts at data.context_length."
      )
    y_b, valid_b = _labels(batch, label_key)
    frozen = jax.lax.stop_gradient(p)
    ztxt_cd = model.encode_text(frozen, jnp.asarray(ids_cl)).emb
    scale = model.logit_scale(frozen) if logit_scale is None else jnp.float32(logit_scale)

    def logits_fn(x_bhwc):
      return scale * (model.encode_image(frozen, x_bhwc).emb @ ztxt_cd.T)

    x_adv = run_attack(ce_objective(logits_fn), batch["image"], y_b, rng)
    img = model.encode_image(p, jax.lax.stop_gradient(x_adv))
    return Embeddings(
      zimg=img.emb,
      ztxt=ztxt_cd[y_b],
      logit_scale=scale,
      batch=batch,
      extras={"class_emb": ztxt_cd, "labels": y_b, "valid": valid_b},
    )

  def loss(emb: Embeddings, mstate, rng):
    del rng
    ex = emb.extras
    logits_bc = emb.logit_scale * (emb.zimg @ ex["class_emb"].T)
    logp_bc = jax.nn.log_softmax(logits_bc, axis=-1)
    nll_b = -jnp.take_along_axis(logp_bc, ex["labels"][:, None], axis=1)[:, 0]
    w_b = ex["valid"].astype(jnp.float32)
    n = jnp.maximum(jnp.sum(w_b), 1.0)
    value = jnp.sum(nll_b * w_b) / n
    acc = jnp.sum((jnp.argmax(logits_bc, axis=-1) == ex["labels"]) * w_b) / n
    return value, {"tecoa/adv_acc": acc, "tecoa/n_labelled": jnp.sum(w_b)}, mstate

  return Method(loss=loss, init=_stateless, forward=forward)


def fare(
  *, attack: str, eps: float, step_size: float | None, steps: int | None, decay: float
) -> Method:
  """FARE: squared distance of adversarial embeddings to the frozen original clean embeddings.

  Args:
    attack, eps, step_size, steps, decay: the training attack (see `make_attack`).

  Returns:
    A `Method` with `init_params` storing the starting visual tower as
    `params["method"]["fare_orig"]["visual"]` (freeze it with the regex `method/.*`).
  """
  run_attack = make_attack(attack, eps=eps, step_size=step_size, steps=steps, decay=decay)

  def init_params(model, rng):
    del rng
    return {"fare_orig": {"visual": jax.tree.map(jnp.asarray, model.params["visual"])}}

  def forward(model, params, batch, rng):
    if "method" not in params or "fare_orig" not in params["method"]:
      raise KeyError("hotclip_fare needs params['method']['fare_orig'] (from its init_params)")
    p = model_params(params)
    orig = {**jax.lax.stop_gradient(p), **jax.lax.stop_gradient(params["method"]["fare_orig"])}
    frozen = jax.lax.stop_gradient(p)
    x_bhwc = batch["image"]
    target_bd = model.encode_image(orig, x_bhwc).emb

    def objective(x, t_bd):
      return jnp.sum(jnp.square(model.encode_image(frozen, x).emb - t_bd), axis=-1)

    x_adv = run_attack(objective, x_bhwc, target_bd, rng)
    img = model.encode_image(p, jax.lax.stop_gradient(x_adv))
    return Embeddings(
      zimg=img.emb,
      ztxt=target_bd,
      logit_scale=model.logit_scale(frozen),
      batch=batch,
      extras={"target": target_bd},
    )

  def loss(emb: Embeddings, mstate, rng):
    del rng
    value = jnp.mean(jnp.sum(jnp.square(emb.zimg - emb.extras["target"]), axis=-1))
    return value, {"fare/l2sq": value}, mstate

  return Method(loss=loss, init=_stateless, forward=forward, init_params=init_params)


METHODS: dict[str, Callable[..., Method]] = {"hotclip_tecoa": tecoa, "hotclip_fare": fare}
