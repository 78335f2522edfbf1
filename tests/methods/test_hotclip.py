"""HOT-CLIP submodels (TeCoA/FARE) and the `hotclip_fuse` task: oracle and limit cases, smokes."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import log_softmax

from clipjax import config_lib, methods, runs
from clipjax import model as model_lib
from clipjax.data.tokenizer import Tokenizer
from clipjax.methods import hotclip
from clipjax.methods.base import Embeddings
from clipjax.tasks import train as train_task
from clipjax.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLASSES = ["circle", "square", "triangle"]


def _config(name, arg):
  return config_lib.load(f"{REPO}/configs/{name}.py:{arg}")


@pytest.fixture(scope="module")
def tiny():
  return model_lib.create("tiny", jax.random.key(0))


@pytest.fixture(scope="module")
def batch():
  rng = np.random.default_rng(0)
  return {
    "image": jnp.asarray(rng.uniform(size=(4, 32, 32, 3)), jnp.float32),
    "labels/shape": jnp.asarray([0, 2, 1, 2], jnp.int32),
  }


def _class_ids(model):
  tok = Tokenizer(None, context_length=model.config.text.context_length)
  return tok([f"a photo of a {c}." for c in CLASSES]).tolist()


def _tecoa(model, attack="pgd", eps=0.0, logit_scale=None):
  return methods.get(
    "hotclip_tecoa",
    label_key="labels/shape",
    class_ids=_class_ids(model),
    attack=attack,
    eps=eps,
    step_size=1 / 255,
    steps=3,
    decay=1.0,
    logit_scale=logit_scale,
  )


def test_tecoa_loss_is_cross_entropy_of_zero_shot_logits():
  rng = np.random.default_rng(1)
  zimg = rng.normal(size=(5, 6)).astype(np.float32)
  zimg /= np.linalg.norm(zimg, axis=1, keepdims=True)
  cls = rng.normal(size=(3, 6)).astype(np.float32)
  cls /= np.linalg.norm(cls, axis=1, keepdims=True)
  labels = np.array([0, 2, 1, 1, 0])
  valid = np.array([True, True, False, True, True])  # example 2 had label -1
  emb = Embeddings(
    zimg=jnp.asarray(zimg),
    ztxt=jnp.asarray(cls[labels]),
    logit_scale=jnp.float32(20.0),
    extras={"class_emb": jnp.asarray(cls), "labels": jnp.asarray(labels), "valid": valid},
  )
  method = hotclip.tecoa(
    label_key="labels/shape", class_ids=[[1, 2], [3, 4], [5, 6]], attack="fgsm", eps=0.0,
    step_size=None, steps=None, decay=1.0, logit_scale=None,
  )  # fmt: skip
  value, aux, _ = method.loss(emb, {}, jax.random.key(0))
  logp = log_softmax(20.0 * zimg @ cls.T, axis=1)
  want = -np.mean(logp[np.arange(5), labels][valid])
  np.testing.assert_allclose(float(value), want, rtol=1e-5)
  acc = np.mean((logp.argmax(1) == labels)[valid])
  np.testing.assert_allclose(float(aux["tecoa/adv_acc"]), acc)
  assert float(aux["tecoa/n_labelled"]) == 4


@pytest.mark.parametrize("attack", hotclip.ATTACKS)
def test_tecoa_with_zero_eps_is_the_clean_loss(tiny, batch, attack):
  method = _tecoa(tiny, attack=attack, eps=0.0)
  params = dict(tiny.params)
  emb = method.forward(tiny, params, batch, jax.random.key(1))
  clean = tiny.encode_image(params, batch["image"]).emb
  np.testing.assert_allclose(np.asarray(emb.zimg), np.asarray(clean), atol=1e-6)
  value, _, _ = method.loss(emb, {}, jax.random.key(2))
  ztxt = np.asarray(tiny.encode_text(params, jnp.asarray(_class_ids(tiny))).emb)
  logp = log_softmax(float(tiny.logit_scale(params)) * np.asarray(clean) @ ztxt.T, axis=1)
  labels = np.asarray(batch["labels/shape"])
  np.testing.assert_allclose(float(value), -np.mean(logp[np.arange(4), labels]), rtol=1e-5)


def test_tecoa_attack_raises_the_loss_and_the_gradient_skips_the_attack(tiny, batch):
  params = dict(tiny.params)
  clean = _tecoa(tiny, eps=0.0, logit_scale=100.0)
  adv = _tecoa(tiny, eps=8 / 255, logit_scale=100.0)
  l_clean = clean.loss(clean.forward(tiny, params, batch, jax.random.key(1)), {}, None)[0]
  l_adv = adv.loss(adv.forward(tiny, params, batch, jax.random.key(1)), {}, None)[0]
  assert float(l_adv) > float(l_clean) + 1e-3

  def loss(p):
    return adv.loss(adv.forward(tiny, p, batch, jax.random.key(1)), {}, None)[0]

  grads = jax.grad(loss)(params)
  assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads["text"]))
  assert float(jnp.abs(grads["visual"]["proj"]).max()) > 0


def test_tecoa_needs_labels_and_matching_context(tiny, batch):
  method = _tecoa(tiny)
  with pytest.raises(KeyError, match="train_labels"):
    method.forward(tiny, dict(tiny.params), {"image": batch["image"]}, jax.random.key(0))
  short = hotclip.tecoa(
    label_key="labels/shape", class_ids=[[1, 2], [3, 4]], attack="pgd", eps=0.0,
    step_size=0.0, steps=1, decay=1.0, logit_scale=None,
  )  # fmt: skip
  with pytest.raises(ValueError, match="context length"):
    short.forward(tiny, dict(tiny.params), batch, jax.random.key(0))
  with pytest.raises(ValueError, match="attack"):
    hotclip.make_attack("cw", eps=0.1, step_size=0.1, steps=1, decay=1.0)
  with pytest.raises(ValueError, match="steps"):
    hotclip.make_attack("pgd", eps=0.1, step_size=0.1, steps=0, decay=1.0)


def test_fare_is_zero_at_init_with_zero_eps_and_positive_under_attack(tiny, batch):
  kw = {"step_size": 1 / 255, "steps": 2, "decay": 1.0}
  params = dict(tiny.params)
  zero = methods.get("hotclip_fare", attack="pgd", eps=0.0, **kw)
  params["method"] = zero.init_params(tiny, jax.random.key(0))
  value = zero.loss(zero.forward(tiny, params, batch, jax.random.key(1)), {}, None)[0]
  assert float(value) == pytest.approx(0.0, abs=1e-10)
  # The FARE objective has zero gradient at the clean image, so an attack without a random
  # start (FGSM, MIM) cannot leave it; PGD's uniform start can.
  adv = methods.get("hotclip_fare", attack="pgd", eps=8 / 255, **kw)
  value = adv.loss(adv.forward(tiny, params, batch, jax.random.key(1)), {}, None)[0]
  assert float(value) > 1e-6


def test_submodel_config_takes_the_base_sizes_before_tokenising(tmp_path):
  base = tmp_path / "base"
  (base / "checkpoints").mkdir(parents=True)
  cfg = json.loads(_config("hotclip_submodel", "smoke").to_json_best_effort())
  cfg["data"].update(context_length=16, image_size=40)
  cfg["model"]["overrides"] = {"vision": {"layers": 3}}
  (base / "config.json").write_text(json.dumps(cfg))
  config = _config("hotclip_submodel", f"attack=fgsm,prompt=2,init={base}")
  assert config.model.init_checkpoint == str(base)
  assert (config.data.context_length, config.data.image_size) == (16, 40)
  assert config.model.overrides.vision.layers == 3
  ids = np.asarray(config.method.kwargs.class_ids)
  assert ids.shape == (5, 16)  # 5 shapes of the synthetic world, the base's context length
  tok = Tokenizer(None, context_length=16)
  np.testing.assert_array_equal(ids[0], tok(["one circle in the picture."])[0])


def test_fuse_config_arguments_select_fusions_and_attacks():
  config = _config("hotclip_fuse", "root=/r,attacks=fgsm+mim,prompts=2,fusions=average+ensemble")
  assert config.workdirs == [["/r_fgsm_0", "/r_fgsm_1"], ["/r_mim_0", "/r_mim_1"]]
  assert list(config.fusions) == ["average", "ensemble"]
  assert config.evaluate_submodels
  full = [(a["name"], round(a["eps"] * 255, 6), a["steps"]) for a in config.eval.attacks]
  assert full == [("pgd", 2, 10), ("pgd", 4, 10), ("apgd-ce", 2, 10), ("apgd-ce", 4, 10)]
  light = _config("hotclip_fuse", "fusions=,submodels=False,eval_attacks=light")
  assert list(light.fusions) == [] and not light.evaluate_submodels
  assert [a["label"] for a in light.eval.attacks] == ["pgd@2/255"]
  with pytest.raises(ValueError, match="'avg'"):
    _config("hotclip_fuse", "fusions=avg")
  with pytest.raises(ValueError, match="eval_attacks='all'"):
    _config("hotclip_fuse", "eval_attacks=all")


def test_fuse_task_checks_the_grid_and_fusions_before_writing(tmp_path):
  from clipjax.tasks import hotclip_fuse as task

  sub = runs.save_params_workdir({"x": np.zeros(2, np.float32)}, {"model": {}}, str(tmp_path / "s"))
  out = tmp_path / "out"
  config = _config("hotclip_fuse", "smoke")
  for workdirs, error, match in [
    ([], ValueError, "non-empty"),
    ([[sub], []], ValueError, "non-empty"),
    ([[sub, str(tmp_path / "missing")]], FileNotFoundError, r"workdirs\[0\]\[1\] = .*missing"),
  ]:
    config.workdirs = workdirs
    with pytest.raises(error, match=match):
      task.run(config, str(out))
  config.workdirs = [[sub]]
  config.fusions = ["average", "avg"]
  with pytest.raises(ValueError, match=r"unknown entries \['avg'\]; valid: \['hierarchical'"):
    task.run(config, str(out))
  assert not out.exists()


def test_submodel_smoke_trains_only_the_visual_tower(tmp_path):
  config = _config("hotclip_submodel", "smoke,attack=mim,prompt=1")
  assert config.data.train_labels == ["shape"]
  summary = train_task.run(config, str(tmp_path / "sub"))
  assert summary["finished"]
  events = [
    json.loads(line)
    for line in (tmp_path / "sub" / "metrics.jsonl").read_text().split("\n")
    if line
  ]
  assert any("tecoa/adv_acc" in e for e in events)
  init = loop.build_model(config, jax.random.key(config.seed)).params
  trained = model_lib.load(str(tmp_path / "sub")).params
  for a, b in zip(jax.tree.leaves(init["text"]), jax.tree.leaves(trained["text"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert float(init["logit_scale"]) == float(trained["logit_scale"])
  pairs = zip(jax.tree.leaves(init["visual"]), jax.tree.leaves(trained["visual"]))
  moved = [not np.array_equal(a, b) for a, b in pairs]
  assert any(moved)


def test_fuse_task_smoke_on_two_workdirs(tmp_path):
  from clipjax.tasks import hotclip_fuse as task

  # Two submodel workdirs written here: a freshly initialised smoke submodel and a perturbed copy.
  sub_config = _config("hotclip_submodel", "smoke,attack=mim,prompt=1")
  run_config = json.loads(sub_config.to_json_best_effort())
  p = loop.build_model(sub_config, jax.random.key(sub_config.seed)).params
  rng = np.random.default_rng(0)
  p2 = jax.tree.map(
    lambda x: np.asarray(x) + np.float32(0.01) * rng.normal(size=np.shape(x)).astype(np.float32), p
  )
  sub = runs.save_params_workdir(p, run_config, str(tmp_path / "sub"))
  other = runs.save_params_workdir(p2, run_config, str(tmp_path / "other"))
  config = _config("hotclip_fuse", "smoke")
  config.workdirs = [[sub], [other]]
  config.evaluate_submodels = False
  config.finetune.intra_steps = 0  # the FARE inter fine-tune exercises the same trainer path
  config.finetune.inter_steps = 1
  config.eval.attacks = config.eval.attacks[:1]
  summary = task.run(config, str(tmp_path / "fused"))
  models = summary["models"]
  assert set(models) == {"hierarchical", "direct_ot", "average", "ensemble"}
  for name in ("hierarchical", "direct_ot", "average", "ensemble"):
    assert 0.0 <= models[name]["robust_acc_worst"] <= models[name]["clean_acc"] <= 1.0
  avg = model_lib.load(models["average"]["saved"]).params
  want = jax.tree.map(lambda a, b: (np.asarray(a) + b) / 2, p["visual"], p2["visual"])
  for a, b in zip(jax.tree.leaves(avg["visual"]), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), b, atol=1e-6)
  for a, b in zip(jax.tree.leaves(avg["text"]), jax.tree.leaves(p["text"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert models["hierarchical"]["finetune_steps"] == {"intra": 0, "inter": 1}
  assert os.path.exists(str(tmp_path / "fused" / "finetune" / "inter" / "summary.json"))
  assert models["direct_ot"]["checkpoint_loads"] == 2
  assert os.path.exists(models["average"]["export/openai"])
  assert (tmp_path / "fused" / "results.md").exists()


def test_fuse_task_aligns_on_activations_of_training_images(tmp_path):
  """align.representation="acts": the task compares units on the anchor's training images, so
  exact direct OT fusion of a model with a function-preserving permuted copy returns the model."""
  from clipjax import fusion
  from clipjax.tasks import hotclip_fuse as task

  sub_config = _config("hotclip_submodel", "smoke,attack=pgd,prompt=0")
  run_config = json.loads(sub_config.to_json_best_effort())
  model = loop.build_model(sub_config, jax.random.key(3))
  assert model.config.vision.pos_embed == "learned"  # the residual stream can be permuted
  spec = fusion.vit_spec_for(model.config, residual="mean", head_mode="per_head")
  maps = fusion.random_permutation_maps(spec, model.config, np.random.default_rng(1))
  permuted = fusion.apply_maps(model.params, spec, maps)
  sub = runs.save_params_workdir(model.params, run_config, str(tmp_path / "sub"))
  other = runs.save_params_workdir(permuted, run_config, str(tmp_path / "other"))
  config = _config("hotclip_fuse", "smoke,fusions=direct_ot,submodels=False")
  config.workdirs = [[sub], [other]]
  config.align.representation = "acts"
  config.align.solver = "exact"
  config.acts_examples = 8
  config.eval.attacks = config.eval.attacks[:1]
  config.export_layouts = []
  summary = task.run(config, str(tmp_path / "fused"))
  assert summary["spec_residual"] == "mean" and summary["align"]["representation"] == "acts"
  fused = model_lib.load(summary["models"]["direct_ot"]["saved"]).params
  for a, b in zip(jax.tree.leaves(fused), jax.tree.leaves(model.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
  assert summary["models"]["direct_ot"]["identity_mass_mean"] < 0.5  # the maps undid a shuffle
  config.acts_examples = 0
  with pytest.raises(ValueError, match="acts_examples"):
    task.run(config, str(tmp_path / "fused_none"))
