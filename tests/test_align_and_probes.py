"""CKA and probes against planted answers."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sjepa_jax import align
from sjepa_jax import exchange
from sjepa_jax import probes

KEY = jax.random.key(0)


def _rotation(key, d):
  q, _ = jnp.linalg.qr(jax.random.normal(key, (d, d)))
  return q


def test_cka_is_invariant_to_rotation_and_isotropic_scale():
  k1, k2 = jax.random.split(KEY)
  x = jax.random.normal(k1, (256, 16)) * jnp.linspace(0.5, 2.0, 16)
  y = 3.0 * x @ _rotation(k2, 16) + 1.0
  np.testing.assert_allclose(float(align.linear_cka(x, y)), 1.0, atol=1e-5)
  np.testing.assert_allclose(float(align.linear_cka_unbiased(x, y)), 1.0, atol=1e-4)


def test_unbiased_cka_is_near_zero_on_independent_features_at_small_n():
  biased, unbiased = [], []
  for i in range(20):
    kx, ky = jax.random.split(jax.random.fold_in(KEY, i))
    x, y = jax.random.normal(kx, (32, 64)), jax.random.normal(ky, (32, 64))
    biased.append(float(align.linear_cka(x, y)))
    unbiased.append(float(align.linear_cka_unbiased(x, y)))
  assert np.mean(biased) > 0.15  # the pitfall the unbiased estimator removes
  assert abs(np.mean(unbiased)) < 0.05


def test_unbiased_cka_needs_four_examples():
  with pytest.raises(ValueError, match="at least 4"):
    align.linear_cka_unbiased(jnp.ones((3, 2)), jnp.ones((3, 2)))


def test_logistic_probe_separates_separable_classes():
  k1, k2, k3 = jax.random.split(KEY, 3)
  labels = jax.random.randint(k1, (600,), 0, 5)
  means = 4.0 * jax.random.normal(k2, (5, 10))
  z = means[labels] + jax.random.normal(k3, (600, 10))
  probe = probes.fit_classifier(z[:400], labels[:400], 5, steps=300)
  assert float(probe.score(z[400:], labels[400:])) > 0.98
  np.testing.assert_array_equal(probe.predict(z[400:]), jnp.argmax(probe.outputs(z[400:]), -1))
  shuffled = probes.fit_classifier(z[:400], jnp.roll(labels[:400], 1), 5, steps=300)
  assert float(shuffled.score(z[400:], labels[400:])) < 0.45


def test_logistic_probe_reaches_its_optimum_on_ill_conditioned_latents():
  """Correlated latents (a mixing of condition number 1e3) that standardising cannot undo:
  the probe's gradient norm ends below 1e-4 (measured 5e-6). The old fixed 500 Adam steps
  stopped at 1e-3, so its figure was partly the optimiser's budget."""
  k1, k2, k3 = jax.random.split(jax.random.fold_in(KEY, 5), 3)
  base = jax.random.normal(k1, (600, 16))
  mix = jnp.linalg.qr(jax.random.normal(k2, (16, 16)))[0] @ jnp.diag(jnp.logspace(0, -3, 16))
  labels = jnp.argmax(base @ jax.random.normal(k3, (16, 4))
                      + 0.5 * jax.random.gumbel(k3, (600, 4)), -1)
  probe = probes.fit_classifier(base @ mix, labels, 4)
  assert float(probes.classifier_grad_norm(probe, base @ mix, labels)) < 1e-4


def test_probe_evaluation_scores_every_label_held_out():
  """``probes.evaluate``, the one probe evaluation of training, migration and the study:
  a classifier for each integer label, a regressor for each float one."""
  k1, k2, k3 = jax.random.split(jax.random.fold_in(KEY, 9), 3)
  labels = jax.random.randint(k1, (300,), 0, 3)
  position = jax.random.normal(k2, (300, 2))
  z = jnp.concatenate([4.0 * jax.nn.one_hot(labels, 3), position,
                       0.1 * jax.random.normal(k3, (300, 3))], axis=1)
  fitted, scores = probes.evaluate(z, {"class": labels, "position": position}, 200,
                                   {"class": 3})
  assert scores["class_acc"] > 0.98 and scores["position_r2"] > 0.98
  assert scores["class_probe_grad_norm"] < 1e-4
  assert fitted["class"].classes and not fitted["position"].classes
  fitted, scores = probes.evaluate(z, {"class": labels}, 200, {"class": 3})  # no position
  assert set(fitted) == {"class"} and "position_r2" not in scores


def test_attribute_probes_say_what_a_latent_misses():
  """Class = shape x size, as in the world: latents that hold the size and a colour but
  not the shape read size and colour, and shape only at chance, whatever probe reads them;
  latents that hold the shape too read all three. The MLP probe finds a class the latent
  holds nonlinearly (an XOR of two features) where the linear probe is at chance."""
  k1, k2, k3, k4 = jax.random.split(jax.random.fold_in(KEY, 11), 4)
  shape = jax.random.randint(k1, (900,), 0, 3)
  size = jax.random.randint(k2, (900,), 0, 3)
  colour = jax.random.uniform(k3, (900, 3))
  labels = {"class": shape * 3 + size, "shape": shape, "size": size, "colour": colour}
  counts = {"class": 9, "shape": 3, "size": 3}
  noise = 0.1 * jax.random.normal(k4, (900, 4))
  no_shape = jnp.concatenate([4.0 * jax.nn.one_hot(size, 3), colour, noise], 1)
  _, miss = probes.evaluate(no_shape, labels, 600, counts, mlp=("shape",))
  assert miss["size_acc"] > 0.98 and miss["colour_r2"] > 0.98
  assert miss["shape_acc"] < 0.45 and miss["shape_mlp_acc"] < 0.45 and miss["class_acc"] < 0.45
  full = jnp.concatenate([no_shape, 4.0 * jax.nn.one_hot(shape, 3)], 1)
  _, hold = probes.evaluate(full, labels, 600, counts)
  assert hold["shape_acc"] > 0.98 and hold["class_acc"] > 0.95
  bits = jax.random.bernoulli(k4, 0.5, (900, 2))
  xor = jnp.logical_xor(bits[:, 0], bits[:, 1]).astype(jnp.int32)
  z = 2.0 * bits.astype(jnp.float32) + 0.05 * noise[:, :2]
  _, scores = probes.evaluate(z, {"xor": xor}, 600, {"xor": 2}, mlp=("xor",))
  assert scores["xor_acc"] < 0.65 and scores["xor_mlp_acc"] > 0.95


def test_distractor_probe_reads_what_the_latents_keep_and_nothing_else():
  """The world's diagnostic probe: R^2 near 1 where the latents carry the distractors'
  centroid, near 0 where they carry only the focal object."""
  k1, k2, k3 = jax.random.split(jax.random.fold_in(KEY, 10), 3)
  labels = {"class": jax.random.randint(k1, (400,), 0, 3),
            "position": jax.random.normal(k2, (400, 2)),
            "distractor_centroid": jax.random.normal(k3, (400, 2))}
  focal_only = jnp.concatenate([jax.nn.one_hot(labels["class"], 3), labels["position"]], 1)
  both = jnp.concatenate([focal_only, labels["distractor_centroid"]], 1)
  counts = {"class": 3}
  assert probes.evaluate(both, labels, 300, counts)[1]["distractor_centroid_r2"] > 0.99
  assert probes.evaluate(focal_only, labels, 300, counts)[1]["distractor_centroid_r2"] < 0.05


def test_ridge_recovers_a_planted_linear_map():
  k1, k2 = jax.random.split(KEY)
  z = jax.random.normal(k1, (500, 12))
  w = jax.random.normal(k2, (12, 3))
  y = z @ w + 0.5
  probe = probes.fit_regressor(z[:400], y[:400], l2=1e-6)
  np.testing.assert_allclose(float(probe.score(z[400:], y[400:])), 1.0, atol=1e-4)


def _planted(key, n=600, d=16, noise=0.05, scale=2.5):
  """X with anisotropic spectrum and Y = scale * X R + shift + noise, R a random rotation."""
  k1, k2, k3 = jax.random.split(key, 3)
  x = jax.random.normal(k1, (n, d)) * jnp.linspace(0.3, 2.0, d)
  r = _rotation(k2, d)
  y = scale * x @ r + 1.0 + noise * jax.random.normal(k3, (n, d))
  return x, y, r


def test_procrustes_recovers_a_planted_rotation_and_scale_under_noise():
  x, y, r = _planted(KEY)
  m = align.fit_procrustes(x[:400], y[:400])
  np.testing.assert_allclose(m.w, 2.5 * r, atol=0.02)
  assert float(align.r2_score(m.apply(x[400:]), y[400:])) > 0.999


def test_every_map_recovers_a_planted_isometry_and_the_gap_is_near_zero():
  x, y, _ = _planted(KEY)
  out = align.evaluate_pair(x[:400], y[:400], x[400:], y[400:], rank=16, k=5)
  for name in ("lstsq", "ridge", "reduced_rank", "procrustes", "cca"):
    assert float(out[f"r2_{name}"]) > 0.995, name
    assert float(out[f"residual_{name}"]) < 0.07, name
  assert abs(float(out["isometry_gap"])) < 0.003
  assert float(out["singular_value_spread"]) < 0.02  # an isometry: equal singular values
  assert float(out["retrieval_top1_procrustes"]) > 0.95
  assert float(out["mutual_knn"]) > 0.8
  np.testing.assert_allclose(out["canonical_correlations"], 1.0, atol=0.03)


def test_cca_finds_exactly_the_shared_directions_of_spaces_sharing_fewer_than_all():
  """X and Y are different mixings of (k = 3 shared sources + sources of their own):
  the population canonical correlations are 1, 1, 1, 0, ..., 0, and the map through the top
  3 canonical pairs predicts Y as well as the full ridge map, through 2 it does not."""
  k, d = 3, 8
  keys = jax.random.split(jax.random.fold_in(KEY, 11), 5)
  shared = jax.random.normal(keys[0], (3000, k))
  own_x, own_y = (jax.random.normal(kk, (3000, d - k)) for kk in keys[1:3])
  scales = jnp.linspace(0.5, 2.0, d)  # anisotropic but well conditioned: l2 = 1e-3 is small
  x = jnp.concatenate([shared, own_x], 1) * scales @ _rotation(keys[3], d)
  y = jnp.concatenate([shared, own_y], 1) * scales[::-1] @ _rotation(keys[4], d) + 2.0
  _, rho = align.fit_cca(x[:2000], y[:2000])
  np.testing.assert_allclose(rho[:k], 1.0, atol=0.01)  # l2 = 1e-3 shrinks them a little
  assert float(jnp.max(rho[k:])) < 0.15, rho  # sampling noise at N = 2000: 0.09 here
  r2 = {r: float(align.r2_score(align.fit_cca(x[:2000], y[:2000], rank=r)[0].apply(x[2000:]),
                                y[2000:])) for r in (k - 1, k, d)}
  assert abs(r2[k] - r2[d]) < 0.01 and r2[k - 1] < r2[k] - 0.05, r2


def test_a_non_isometric_linear_map_opens_the_isometry_gap():
  k1, k2 = jax.random.split(KEY)
  x = jax.random.normal(k1, (600, 8))
  w = jax.random.normal(k2, (8, 8)) @ jnp.diag(jnp.array([5.0, 3, 1, 1, 0.5, 0.3, 0.2, 0.1]))
  y = x @ w
  out = align.evaluate_pair(x[:400], y[:400], x[400:], y[400:], rank=8, k=5)
  assert float(out["r2_ridge"]) > 0.99
  assert float(out["isometry_gap"]) > 0.2
  assert float(out["condition_number"]) > 10


def test_whitening_both_sides_closes_the_gap_of_any_invertible_linear_map():
  """Whitened, an exact linear relation is orthogonal (both sides have identity covariance):
  the whitened gap is a diagnostic of anisotropy, not of the relation."""
  k1, k2 = jax.random.split(jax.random.fold_in(KEY, 3))
  x = jax.random.normal(k1, (600, 8)) * jnp.linspace(0.5, 2.0, 8)
  y = x @ (jax.random.normal(k2, (8, 8)) @ jnp.diag(jnp.linspace(3.0, 0.5, 8)))
  out = align.evaluate_pair(x[:400], y[:400], x[400:], y[400:], rank=8, k=5)
  assert float(out["isometry_gap"]) > 0.1
  assert abs(float(out["isometry_gap_whitened"])) < 0.01
  assert float(out["r2_procrustes_whitened"]) > 0.98


def test_whitening_does_not_invent_a_relation_between_unrelated_spaces():
  k1, k2 = jax.random.split(jax.random.fold_in(KEY, 7))
  x = jax.random.normal(k1, (600, 8)) * jnp.linspace(0.2, 3.0, 8)
  y = jax.random.normal(k2, (600, 8)) * jnp.linspace(3.0, 0.2, 8)
  out = align.evaluate_pair(x[:400], y[:400], x[400:], y[400:], rank=8, k=5)
  assert float(out["r2_ridge_whitened"]) < 0.05
  assert float(out["r2_procrustes_whitened"]) < 0.05


def test_uniform_r2_counts_every_dimension_where_pooled_r2_counts_the_top_one():
  """One direction of std 10 mapped exactly, nine of std 1 unrelated: pooled R^2 is about
  100 / 109, the mean of the dimensions' R^2 about 1 / 10."""
  k1, k2 = jax.random.split(jax.random.fold_in(KEY, 11))
  x = jax.random.normal(k1, (1200, 10))
  y = jnp.concatenate([10.0 * x[:, :1], jax.random.normal(k2, (1200, 9))], axis=1)
  out = align.evaluate_pair(x[:800], y[:800], x[800:], y[800:], rank=4, k=5)
  np.testing.assert_allclose(float(out["r2_ridge"]), 100 / 109, atol=0.02)
  np.testing.assert_allclose(float(out["r2_ridge_uniform"]), 0.1, atol=0.02)
  assert float(out["r2_procrustes_uniform"]) < 0.15
  np.testing.assert_allclose(float(align.r2_uniform(y, y)), 1.0)


def test_unrelated_spaces_score_near_zero_held_out():
  k1, k2 = jax.random.split(KEY)
  x, y = jax.random.normal(k1, (600, 16)), jax.random.normal(k2, (600, 16))
  out = align.evaluate_pair(x[:400], y[:400], x[400:], y[400:], rank=4, k=10)
  assert float(out["r2_ridge"]) < 0.02
  assert float(out["r2_procrustes"]) < 0.0  # an isometry of noise predicts worse than the mean
  assert float(out["retrieval_top1_ridge"]) < 0.05
  assert float(out["mutual_knn"]) < 0.15


def test_ridge_picks_its_strength_on_fitting_pairs_and_beats_lstsq_with_few_pairs():
  # Y depends on X's two strong directions; 30 near-null directions carry only noise, which
  # unregularised least squares fits with huge weights.
  k1, k2, k3 = jax.random.split(KEY, 3)
  x = jax.random.normal(k1, (245, 32)) * jnp.concatenate([jnp.ones(2), 1e-4 * jnp.ones(30)])
  y = x[:, :2] @ jax.random.normal(k2, (2, 4)) + jax.random.normal(k3, (245, 4))
  fit, test = slice(0, 45), slice(45, None)
  r2 = lambda m: float(align.r2_score(m.apply(x[test]), y[test]))
  assert r2(align.fit_ridge(x[fit], y[fit])) > r2(align.fit_lstsq(x[fit], y[fit])) + 0.2


def test_ridge_path_equals_one_solve_per_strength():
  k1, k2 = jax.random.split(KEY)
  x = jax.random.normal(k1, (200, 16)) * jnp.linspace(0.01, 3.0, 16)  # anisotropic
  y = x @ jax.random.normal(k2, (16, 5))
  grid = jnp.asarray(align.RIDGE_GRID)
  path = align.ridge_path(x, y, grid)
  for g, l2 in enumerate(align.RIDGE_GRID):
    np.testing.assert_allclose(path[g], align.ridge_weights(x, y, l2), rtol=1e-3, atol=1e-4)


def test_the_ridge_search_makes_no_batched_lapack_call():
  # A batched LAPACK call is split over XLA's CPU thread pool and waited on; two at once in
  # one program deadlocked the study on 2 cores. Every LAPACK call must see one matrix.
  x = jax.random.normal(KEY, (100, 8))
  text = align.fit_ridge.lower(x, x[:, :3]).as_text()
  calls = [line for line in text.splitlines() if "lapack" in line and "custom_call" in line]
  assert calls  # the final refit's solve
  for line in calls:
    shapes = re.findall(r"tensor<([0-9x]+)xf32>", line)
    assert all(shape.count("x") <= 1 for shape in shapes), line


def test_reduced_rank_keeps_the_planted_rank():
  k1, k2, k3 = jax.random.split(KEY, 3)
  x = jax.random.normal(k1, (500, 12))
  w = jax.random.normal(k2, (12, 2)) @ jax.random.normal(k3, (2, 10))  # rank 2
  m = align.fit_reduced_rank(x, x @ w, rank=2)
  s = np.linalg.svd(np.asarray(m.w), compute_uv=False)
  assert s[1] > 0.1 * s[0] and s[2] < 1e-4 * s[0]
  np.testing.assert_allclose(m.w, w, atol=1e-2)


def test_generalized_procrustes_recovers_planted_rotations_of_three_spaces():
  keys = jax.random.split(KEY, 5)
  shared = jax.random.normal(keys[0], (300, 10)) * jnp.linspace(0.5, 1.5, 10)
  rots = [_rotation(k, 10) for k in keys[1:4]]
  scales = [1.0, 3.0, 0.2]
  z = jnp.stack([s * shared @ r.T + i for i, (s, r) in enumerate(zip(scales, rots))])
  z += 0.01 * jax.random.normal(keys[4], z.shape)
  space = align.fit_generalized_procrustes(z)
  for a in range(3):
    for b in range(3):
      relative = space.rotation[a] @ space.rotation[b].T  # maps space a onto space b
      np.testing.assert_allclose(relative, rots[a] @ rots[b].T, atol=0.01)
      mapped = align.shared_space_map(space, a, b).apply(z[a])
      assert float(align.r2_score(mapped, z[b])) > 0.99  # noise 0.01 on a space of scale 0.2


def _lapack_calls(text: str) -> list[tuple[str, ...]]:
  """The operand shapes of every LAPACK call of a lowered program."""
  return [tuple(re.findall(r"tensor<([0-9x]+)xf32>", line)) for line in text.splitlines()
          if "lapack" in line and "custom_call" in line]


def test_evaluate_pair_maps_over_pairs_as_a_loop_does_without_batched_lapack():
  """Many pairs in one program go through lax.map (what align promises): each LAPACK call
  sees one matrix (see the ridge search's test). The test used to vmap it, which batches
  all nine of its decompositions."""
  pairs = [_planted(jax.random.fold_in(KEY, i), n=120, d=6, noise=0.5) for i in range(3)]
  xs = jnp.stack([p[0] for p in pairs])
  ys = jnp.stack([p[1] for p in pairs])
  over_pairs = jax.jit(lambda xs, ys: jax.lax.map(
      lambda p: align.evaluate_pair(p[0][:80], p[1][:80], p[0][80:], p[1][80:], rank=3, k=4),
      (xs, ys)))
  calls = _lapack_calls(over_pairs.lower(xs, ys).as_text())
  one_pair = _lapack_calls(align.evaluate_pair.lower(
      xs[0, :80], ys[0, :80], xs[0, 80:], ys[0, 80:], rank=3, k=4).as_text())
  assert sorted(calls) == sorted(one_pair), (calls, one_pair)  # each call sees one pair's
  assert all(shape.count("x") <= 1 for c in calls for shape in c), calls
  batched = over_pairs(xs, ys)
  for i in range(3):
    one = align.evaluate_pair(xs[i, :80], ys[i, :80], xs[i, 80:], ys[i, 80:], rank=3, k=4)
    jax.tree_util.tree_map_with_path(  # every figure and every fitted map
        lambda path, b, v: np.testing.assert_allclose(
            b[i], v, rtol=2e-4, atol=2e-4, err_msg=jax.tree_util.keystr(path)), batched, one)


def test_r2_against_pairs_rises_with_more_pairs_and_refuses_too_many():
  x, y, _ = _planted(KEY, n=700, d=32, noise=1.5)
  curve = align.r2_against_pairs(x[:500], y[:500], x[500:], y[500:], (40, 500))
  assert curve["n"] == [40, 500]
  assert curve["r2_ridge"][1] > curve["r2_ridge"][0]
  with pytest.raises(ValueError, match="only 500 fitting pairs"):
    align.r2_against_pairs(x[:500], y[:500], x[500:], y[500:], (600,))


def test_transfer_through_the_planted_map_matches_the_native_probe():
  k1, k2, k3 = jax.random.split(KEY, 3)
  labels = jax.random.randint(k1, (600,), 0, 4)
  z_src = 3.0 * jax.random.normal(k2, (4, 8))[labels] + jax.random.normal(k3, (600, 8))
  r = _rotation(jax.random.fold_in(KEY, 9), 8)
  z_tgt = 0.5 * z_src @ r  # the target agent sees the same states, rotated and scaled
  probe = probes.fit_classifier(z_src[:400], labels[:400], 4, steps=300)
  native = float(probe.score(z_src[400:], labels[400:]))
  m = align.fit_procrustes(z_tgt[:400], z_src[:400])
  hits = jnp.argmax(probes.transfer(probe, m, z_tgt[400:]), -1) == labels[400:]
  assert float(hits.mean()) == pytest.approx(native, abs=0.01)
  unmapped = float(probe.score(z_tgt[400:], labels[400:]))
  assert unmapped < native - 0.2  # without the map the probe does not transfer


def test_maps_and_probes_round_trip_through_files(tmp_path):
  """What two agents exchange: a map and a probe saved, loaded and applied give what the
  originals give; the record says where they came from; a damaged file is named."""
  k1, k2, k3 = jax.random.split(jax.random.fold_in(KEY, 12), 3)
  x = jax.random.normal(k1, (200, 6))
  y = x @ jax.random.normal(k2, (6, 4))
  labels = jax.random.randint(k3, (200,), 0, 3)
  m = align.fit("ridge", x, y)
  probe = probes.fit_classifier(y, labels, 3, steps=50)
  size = exchange.save(str(tmp_path / "keys" / "x_to_y.npz"), m, source="y", n_fit=200)
  exchange.save(str(tmp_path / "y.class.npz"), probe, label="class")
  assert size < 2000  # 6 x 4 weights and two means, float32, and the record
  loaded = exchange.load(str(tmp_path / "keys" / "x_to_y.npz"))
  np.testing.assert_allclose(loaded.apply(x), m.apply(x), atol=1e-6)
  assert exchange.load_meta(str(tmp_path / "keys" / "x_to_y.npz")) == {
      "kind": "map", "source": "y", "n_fit": 200}
  back = exchange.load(str(tmp_path / "y.class.npz"))
  assert back.classes
  np.testing.assert_array_equal(back.predict(loaded.apply(x)), probe.predict(m.apply(x)))
  assert os.listdir(tmp_path / "keys") == ["x_to_y.npz"]  # no temporary file left behind
  (tmp_path / "bad.npz").write_bytes(b"not a zip file")
  with pytest.raises(ValueError, match="bad.npz' is not a map or probe file"):
    exchange.load(str(tmp_path / "bad.npz"))
  with pytest.raises(FileNotFoundError, match="No map or probe file"):
    exchange.load(str(tmp_path / "missing.npz"))
  with pytest.raises(ValueError, match="Unknown map 'affine'; valid maps: lstsq, ridge"):
    align.fit("affine", x, y)
