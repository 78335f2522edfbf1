"""Figures: valid PNGs of the right size, the plotted numbers are the given ones, clear errors."""

import json
import sys

import numpy as np
import pytest

from clipjax.evaluation import metrics, plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _read_png(path, size):
  from matplotlib import image

  with open(path, "rb") as f:
    assert f.read(8) == PNG_SIGNATURE
  pixels = image.imread(path)
  assert pixels.shape[:2] == (round(size[1] * 100), round(size[0] * 100))
  assert pixels[..., :3].std() > 0  # something was drawn
  return pixels


@pytest.fixture
def captured(monkeypatch):
  """The Figure objects the plot functions save, to read back what they drew."""
  figs = []
  save = plots._save

  def spy(fig, path):
    figs.append(fig)
    return save(fig, path)

  monkeypatch.setattr(plots, "_save", spy)
  return figs


def test_pca_2d_matches_sklearn():
  decomposition = pytest.importorskip("sklearn.decomposition")
  x = np.random.default_rng(1).normal(size=(40, 6)) * np.array([5, 3, 1, 1, 0.5, 0.1])
  proj, explained = plots.pca_2d(x)
  ref = decomposition.PCA(n_components=2).fit(x)
  np.testing.assert_allclose(explained, ref.explained_variance_ratio_, rtol=1e-10)
  np.testing.assert_allclose(np.abs(proj), np.abs(ref.transform(x)), atol=1e-10)
  with pytest.raises(ValueError, match=r"\[n >= 2, d >= 2\]"):
    plots.pca_2d(np.ones((1, 3)))


SUMMARY = {
  "s/robust/shape/clean_acc": 0.6,
  "s/robust/shape/clean_acc/chance": 0.2,
  "s/robust/shape/worst_case/robust_acc": 0.0,
  "s/robust/shape/pgd@4/robust_acc": 0.1,
  "s/robust/shape/pgd@4/eps": 4 / 255,
  "s/robust/shape/pgd@1/robust_acc": 0.4,
  "s/robust/shape/pgd@1/eps": 1 / 255,
  "s/robust/shape/fgsm/robust_acc": 0.5,
  "s/robust/shape/fgsm/eps": 1 / 255,
  "attacks": {
    "pgd@4": {"name": "pgd", "eps": 4 / 255, "steps": 10},
    "pgd@1": {"name": "pgd", "eps": 1 / 255, "steps": 10},
    "fgsm": {"name": "fgsm", "eps": 1 / 255},
  },
}


def test_robustness_curves_from_summary():
  curves = plots.robustness_curves(SUMMARY)
  assert list(curves) == ["s/shape"]
  lines = curves["s/shape"]
  assert sorted(lines) == ["fgsm", "pgd-10"]
  np.testing.assert_allclose(lines["pgd-10"][0], [0, 1 / 255, 4 / 255])
  np.testing.assert_allclose(lines["pgd-10"][1], [0.6, 0.4, 0.1])
  np.testing.assert_allclose(lines["fgsm"][1], [0.6, 0.5])
  bad = {k: v for k, v in SUMMARY.items() if k != "s/robust/shape/fgsm/eps"}
  with pytest.raises(ValueError, match="s/robust/shape/fgsm/eps"):
    plots.robustness_curves(bad)


def test_plot_robustness_draws_the_given_numbers(tmp_path, captured):
  lines = plots.robustness_curves(SUMMARY)["s/shape"]
  path = plots.plot_robustness(lines, tmp_path / "r.png", chance=0.2)
  _read_png(path, (6, 4))
  drawn = {ln.get_label(): ln.get_xydata() for ln in captured[0].axes[0].get_lines()}
  np.testing.assert_allclose(drawn["pgd-10"], [[0, 0.6], [1, 0.4], [4, 0.1]])  # ε in 1/255
  np.testing.assert_allclose(drawn["chance"][:, 1], 0.2)
  with pytest.raises(ValueError, match="curve 'pgd': eps has 3 values but robust_acc has 2"):
    plots.plot_robustness({"pgd": ([0, 1, 2], [0.5, 0.4])}, tmp_path / "bad.png")


def test_plot_risk_coverage(tmp_path, captured):
  cov, risk = metrics.risk_coverage_curve(np.arange(10.0), np.arange(10) % 3 == 0)
  path = plots.plot_risk_coverage(
    {"msp": (cov, risk), "ot": ([0.5, 1], [0.1, 0.2])}, tmp_path / "rc.png"
  )
  _read_png(path, (6, 4))
  drawn = {ln.get_label(): ln.get_xydata() for ln in captured[0].axes[0].get_lines()}
  np.testing.assert_allclose(drawn["msp"], np.stack([cov, risk], 1))
  with pytest.raises(ValueError, match="curve 'x': coverage has 2 values but risk has 1"):
    plots.plot_risk_coverage({"x": ([0.5, 1.0], [0.1])}, tmp_path / "bad.png")
  with pytest.raises(ValueError, match="must lie in"):
    plots.plot_risk_coverage({"x": ([0.5, 1.5], [0.1, 0.2])}, tmp_path / "bad.png")


def test_similarity_histograms_and_transport_plan(tmp_path, captured):
  rng = np.random.default_rng(0)
  pos, neg = rng.normal(0.6, 0.1, 50), rng.normal(0.1, 0.1, 500)
  _read_png(plots.plot_similarity_histograms(pos, neg, tmp_path / "h.png", bins=20), (6, 4))
  heights = [p.get_height() for p in captured[0].axes[0].patches]
  assert len(heights) == 40
  widths = captured[0].axes[0].patches[0].get_width()
  # Density histograms: each integrates to one.
  assert sum(heights[:20]) * widths == pytest.approx(1.0)
  assert sum(heights[20:]) * widths == pytest.approx(1.0)
  with pytest.raises(ValueError, match="need positive and negative"):
    plots.plot_similarity_histograms(pos, [], tmp_path / "bad.png")

  plan = np.outer(np.arange(1, 5), np.arange(1, 4)) / 60.0
  path = plots.plot_transport_plan(plan, tmp_path / "p.png", col_labels=["a", "b", "c"])
  np.testing.assert_allclose(captured[1].axes[0].get_images()[0].get_array(), plan)
  _read_png(path, (5.0, 3.0))
  with pytest.raises(ValueError, match="col_labels has 2 entries, plan_nm has 3 cols"):
    plots.plot_transport_plan(plan, tmp_path / "bad.png", col_labels=["a", "b"])
  with pytest.raises(ValueError, match="non-negative"):
    plots.plot_transport_plan(-plan, tmp_path / "bad.png")


def test_embedding_pca(tmp_path, captured):
  rng = np.random.default_rng(0)
  zimg, ztxt = rng.normal(size=(30, 8)) + 3.0, rng.normal(size=(20, 8)) - 3.0
  _read_png(plots.plot_embedding_pca(zimg, ztxt, tmp_path / "pca.png"), (5, 4.5))
  proj, _ = plots.pca_2d(np.concatenate([zimg, ztxt]))
  offsets = [c.get_offsets() for c in captured[0].axes[0].collections]
  np.testing.assert_allclose(offsets[0], proj[:30])
  np.testing.assert_allclose(offsets[1], proj[30:])
  with pytest.raises(ValueError, match="same d"):
    plots.plot_embedding_pca(zimg, ztxt[:, :4], tmp_path / "bad.png")


def _workdir(tmp_path):
  events = [{"step": s, "kind": "train", "loss": 3.0 / s} for s in (10, 20, 30)]
  events += [{"step": s, "kind": "eval", "s/zeroshot/shape/acc1": s / 50,
              "s/zeroshot/shape/acc1/chance": 0.2} for s in (20, 30)]  # fmt: skip
  with open(tmp_path / "metrics.jsonl", "w") as f:
    f.write("".join(json.dumps(e) + "\n" for e in events))
  curves = {"s/selective/shape/msp": {"coverage": [0.5, 1.0], "risk": [0.2, 0.4]}}
  (tmp_path / "summary.json").write_text(json.dumps({**SUMMARY, "curves": curves}))
  return events


def test_training_curves_and_plot_workdir(tmp_path, captured):
  events = _workdir(tmp_path)
  assert plots.read_metrics_jsonl(tmp_path / "metrics.jsonl") == events
  written = plots.plot_workdir(tmp_path)
  names = sorted(p.split("/")[-1] for p in written)
  assert names == ["risk_coverage_s.png", "robustness_s_shape.png", "training_curves.png"]
  _read_png(tmp_path / "training_curves.png", (12, 4))
  loss_ax, eval_ax = captured[0].axes
  np.testing.assert_allclose(
    loss_ax.get_lines()[0].get_xydata(), [[10, 0.3], [20, 0.15], [30, 0.1]]
  )
  (line,) = eval_ax.get_lines()
  assert line.get_label() == "s/zeroshot/shape/acc1"
  np.testing.assert_allclose(line.get_xydata(), [[20, 0.4], [30, 0.6]])
  # A single evaluation step: one bar per metric, at the logged value.
  plots.plot_training_curves(events[:3] + events[4:], tmp_path / "one.png")
  assert [b.get_width() for b in captured[-1].axes[1].patches] == [0.6]
  with pytest.raises(ValueError, match=r"eval_keys \['nope'\] are in no eval event"):
    plots.plot_training_curves(events, tmp_path / "bad.png", eval_keys=["nope"])
  (tmp_path / "broken.jsonl").write_text('{"step": 1}\nnot json\n')
  with pytest.raises(ValueError, match="broken.jsonl:2: not JSON"):
    plots.read_metrics_jsonl(tmp_path / "broken.jsonl")


def test_missing_matplotlib_is_a_clear_error(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
  with pytest.raises(ImportError, match=r"pip install 'clipjax\[plot\]'"):
    plots.plot_risk_coverage({"x": ([1.0], [0.0])}, tmp_path / "x.png")
  # The pure helpers need no matplotlib.
  assert plots.pca_2d(np.eye(3))[0].shape == (3, 2)
