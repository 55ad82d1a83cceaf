"""Tests of the learned number of mixture components: the sparse Dirichlet term (value and
gradient by hand), masking (zero probability in sample and log_prob, no gradient), the pruning
rule against a NumPy re-implementation, the model, the config, the preset, the sweep, and a tiny
end-to-end training that prunes, logs and resumes bit for bit."""

import json

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probunet_jax import checkpointing, pipeline, presets, reporting, sampling, train
from probunet_jax import component_pruning as cp
from probunet_jax import config as config_lib
from probunet_jax.distributions import GumbelSoftmaxMixture
from probunet_jax.model import init_variables, model_from_config, parameter_counts
from probunet_jax.search import space


def mixture(logits, loc=None, scale=None, temperature=0.5):
    logits = jnp.asarray(logits, jnp.float32)
    b, n = logits.shape
    loc = jnp.zeros((b, n, 2)) if loc is None else jnp.asarray(loc, jnp.float32)
    scale = jnp.ones((b, n, 2)) if scale is None else jnp.asarray(scale, jnp.float32)
    return GumbelSoftmaxMixture(logits, distrax.MultivariateNormalDiag(loc, scale), temperature)


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# ----------------------------------------------------------------------------- the sparsity term


def test_sparsity_penalty_value_and_gradient_by_hand():
    rng = np.random.default_rng(0)
    prior_logits, posterior_logits = rng.normal(size=(3, 4)), rng.normal(size=(3, 4)) * 2
    lam = 0.7

    def penalty(a, b):
        return cp.sparsity_penalty(mixture(a), mixture(b), lam)

    value, (grad_prior, grad_posterior) = jax.value_and_grad(penalty, argnums=(0, 1))(
        jnp.asarray(prior_logits, jnp.float32), jnp.asarray(posterior_logits, jnp.float32)
    )
    pa, pb = softmax(prior_logits), softmax(posterior_logits)
    bar = 0.5 * (pa.mean(0) + pb.mean(0))
    np.testing.assert_allclose(value, lam * np.sum(np.log(bar + cp.EPSILON)), rtol=1e-6)
    # d/dl_bj = Σ_k λ/(π̄_k+ε) · ½·(1/B) · π_bk (δ_kj − π_bj).
    for weights, grad in ((pa, grad_prior), (pb, grad_posterior)):
        outer = lam / (bar + cp.EPSILON) * 0.5 / 3  # [N]
        expected = weights * outer - weights * np.sum(outer * weights, -1, keepdims=True)
        np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)
    # One image, prior = posterior: the gradient is λ(1 − N π_j): down below average, up above.
    logits = jnp.array([[1.0, 0.0, -1.0]])
    grad = jax.grad(lambda x: cp.sparsity_penalty(mixture(x), mixture(x), lam))(logits)
    np.testing.assert_allclose(grad[0], lam * (1 - 3 * softmax(np.array([1.0, 0.0, -1.0]))), 1e-4)
    # At the uniform weights the value is λ N log(1/N).
    uniform = jnp.zeros((2, 5))
    np.testing.assert_allclose(
        cp.sparsity_penalty(mixture(uniform), mixture(uniform), 1.0), 5 * np.log(0.2), rtol=1e-5
    )


def test_masked_components_leave_the_penalty_and_get_no_gradient():
    active = jnp.array([True, False, True])

    def penalty(logits):
        masked = cp.mask_mixture(mixture(logits), active)
        return cp.sparsity_penalty(masked, masked, 1.0)

    logits = jnp.array([[0.5, 3.0, -0.5], [0.0, 1.0, 0.2]])
    weights = softmax(np.array([[0.5, -0.5], [0.0, 0.2]]))
    np.testing.assert_allclose(penalty(logits), np.sum(np.log(weights.mean(0) + 1e-6)), 1e-5)
    grad = jax.grad(penalty)(logits)
    assert np.all(np.asarray(grad[:, 1]) == 0) and np.all(np.isfinite(grad))
    with pytest.raises(ValueError, match="needs mixture latents"):
        gaussian = distrax.MultivariateNormalDiag(jnp.zeros((2, 2)), jnp.ones((2, 2)))
        cp.sparsity_penalty(gaussian, gaussian, 1.0)


# ----------------------------------------------------------------------------- masking


def test_masked_components_have_zero_probability_in_sample_and_log_prob():
    loc = jnp.array([[[-10.0, -10.0], [0.0, 0.0], [10.0, 10.0]]] * 2)
    scale = jnp.full((2, 3, 2), 0.1)
    logits = jnp.array([[0.0, 5.0, 0.0], [1.0, 2.0, 3.0]])  # The masked one is the most likely.
    active = jnp.array([True, False, True])
    dist = cp.mask_mixture(mixture(logits, loc, scale), active)
    np.testing.assert_array_equal(dist.mixture_distribution.probs[:, 1], 0.0)
    np.testing.assert_array_equal(np.asarray(cp.active_components(dist)), [[1, 0, 1]] * 2)

    def draw(key):
        return dist.sample(seed=key, sample_shape=2000)

    for z in (draw(jax.random.key(0)), jax.jit(draw)(jax.random.key(0))):
        assert np.all(np.abs(np.asarray(z)).min(-1) > 5)  # Never near the masked component.
    np.testing.assert_allclose(draw(jax.random.key(0)), jax.jit(draw)(jax.random.key(0)), 1e-6)
    # log_prob is the mixture of the active components, renormalized.
    z = jnp.array([[0.0, 0.0], [10.0, 10.0]])
    kept = mixture(logits[:, [0, 2]], loc[:, [0, 2]], scale[:, [0, 2]])
    np.testing.assert_allclose(dist.log_prob(z), kept.log_prob(z), rtol=1e-6)
    np.testing.assert_allclose(jax.jit(lambda x: dist.log_prob(x))(z), kept.log_prob(z), 1e-6)
    assert np.all(np.abs(np.asarray(sampling.latent_mean(dist))) > 5)  # An active mode.


# ----------------------------------------------------------------------------- the pruning rule


def _reference(batches, spec):
    """The pruning rule in NumPy: the state after each of ``batches`` (π̄ per step)."""
    n = len(batches[0])
    usage, steps, active, history = np.full(n, 1 / n), np.zeros(n, int), np.ones(n, bool), []
    for batch in batches:
        usage = spec.decay * usage + (1 - spec.decay) * np.asarray(batch)
        steps = np.where(active & (usage < spec.threshold), steps + 1, 0)
        most_used = np.argmax(np.where(active, usage, -np.inf))
        prune = (steps >= spec.patience) & (np.arange(n) != most_used)
        active = active & ~prune
        history.append(active.copy())
    return usage, steps, history


def _run_rule(logit_sequence, spec, jit):
    n = logit_sequence.shape[-1]
    module = cp.ComponentUsage(n, spec)
    variables = module.init(jax.random.key(0))

    def step(variables, logits):
        def apply(m):
            active = m()
            dist = cp.mask_mixture(mixture(logits), active)
            m.update(dist, dist)
            return active

        _, updates = module.apply(variables, mutable=["batch_stats"], method=apply)
        return updates

    step = jax.jit(step) if jit else step
    history = []
    for logits in logit_sequence:
        variables = step(variables, logits)
        history.append(np.asarray(variables["batch_stats"]["active"]))
    return variables["batch_stats"], history


@pytest.mark.parametrize("jit", [False, True])
def test_a_component_below_the_threshold_for_patience_steps_is_pruned_for_good(jit):
    spec = cp.PruningSpec(threshold=0.1, patience=3, decay=0.5)
    # Component 2 is barely used for 8 steps, then heavily; component 1 dips below for 2 steps
    # only (not enough), component 0 dominates.
    rows = []
    for t in range(12):
        logit_1 = -4.0 if t in (1, 2) else 0.0
        logit_2 = -6.0 if t < 8 else 3.0
        rows.append([[1.0, logit_1, logit_2]] * 2)
    logits = jnp.array(rows)
    state, history = _run_rule(logits, spec, jit)
    # The reference sees the masked weights, as the module does (a pruned component counts 0).
    batches, active = [], np.ones(3, bool)
    for t in range(12):
        probs = softmax(np.where(active, np.asarray(logits[t, 0]), -1e9))
        batches.append(probs)
        _, _, ref_history = _reference(batches, spec)
        active = ref_history[-1]
    usage, steps, ref_history = _reference(batches, spec)
    np.testing.assert_array_equal(np.array(history), np.array(ref_history))
    np.testing.assert_allclose(state["usage"], usage, rtol=1e-5)
    np.testing.assert_array_equal(state["steps_below"], steps)
    first = next(t for t, a in enumerate(history) if not a[2])
    assert 2 <= first < 8  # Pruned after `patience` steps below the threshold...
    assert all(not a[2] for a in history[first:])  # ...and stays pruned when it would be used.
    assert all(a[0] and a[1] for a in history)  # The dip of component 1 was too short.
    assert state["usage"][2] < 0.1


def test_the_most_used_component_is_never_pruned():
    spec = cp.PruningSpec(threshold=0.9, patience=1, decay=0.0)
    state, history = _run_rule(jnp.zeros((3, 1, 4)), spec, jit=False)
    assert [int(a.sum()) for a in history] == [1, 1, 1]  # All below 0.9; one is kept.
    assert state["active"].dtype == bool and state["usage"].dtype == jnp.float32


# ----------------------------------------------------------------------------- model and config


def _tiny(variant="mixture_fc_auto", **overrides):
    config = presets.model_config(variant, filters=(4, 8), convs_per_block=1, head_depth=2)
    config.update(overrides)
    return config, model_from_config(config)


def test_the_model_masks_pruned_components_in_prior_posterior_and_sampling():
    config, model = _tiny()
    variables = init_variables(model, jax.random.key(0), (16, 16, 1))
    state = variables["batch_stats"][cp.MODULE_NAME]
    assert set(state) == {"usage", "steps_below", "active"} and state["active"].shape == (10,)
    assert int(cp.components_active(variables["batch_stats"])) == 10
    active = np.ones(10, bool)
    active[[1, 4, 5]] = False
    variables["batch_stats"][cp.MODULE_NAME]["active"] = jnp.asarray(active)
    image = jax.random.uniform(jax.random.key(1), (2, 16, 16, 1))
    mask = jnp.zeros((2, 16, 16), jnp.int32)
    prior = model.apply(variables, image, method=model.prior)
    posterior = model.apply(variables, image, mask, method=model.posterior)
    for dist in (prior, posterior):
        np.testing.assert_array_equal(dist.mixture_distribution.probs[:, ~active], 0.0)
    masks = sampling.sample_masks(model, variables, image, jax.random.key(2), 4)
    assert masks.shape == (2, 4, 16, 16)
    # Pruning adds no parameters: the same counts as Mixture-FC with 10 components.
    plain = model_from_config(presets.model_config("mixture_fc", num_components=10, **_NETWORK))
    assert parameter_counts(model, (16, 16, 1)) == parameter_counts(plain, (16, 16, 1))
    # A model without pruning has no pruning state.
    _, other = _tiny("mixture_fc")
    assert cp.components_active(init_variables(other, jax.random.key(0), (16, 16, 1))) is None


_NETWORK = dict(filters=(4, 8), convs_per_block=1, head_depth=2)


def test_the_preset():
    auto = presets.model_config("mixture_fc_auto")
    fc = presets.model_config("mixture_fc")
    assert (auto.latent_kind, auto.latent_dim, auto.num_components) == ("fc", 2, 10)
    assert auto.temperature == fc.temperature
    assert auto.sparsity_weight > 0 and 0 < auto.prune_threshold < 0.1
    assert cp.learns_components(auto) and not cp.learns_components(fc)
    assert all(fc[f] == cp.CONFIG_DEFAULTS[f] for f in cp.CONFIG_FIELDS)  # Off by default.
    presets.check_model_config(auto)
    # The pruning fields belong to the variant: changing them needs 'custom' ...
    changed = presets.model_config("mixture_fc_auto", prune_patience=7)
    with pytest.raises(ValueError, match=r"prune_patience 100.*prune_patience 7.*'custom'"):
        presets.check_model_config(changed)
    # ... and switching variant resets them.
    assert not cp.learns_components(presets.with_variant(auto, "aa"))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("sparsity_weight", -1.0, r"model.sparsity_weight must be >= 0"),
        ("sparsity_weight", float("nan"), r"model.sparsity_weight must be >= 0"),
        ("prune_threshold", 1.5, r"model.prune_threshold must be in \[0, 1\)"),
        ("prune_threshold", -0.1, r"model.prune_threshold must be in \[0, 1\)"),
        ("prune_patience", 0, r"model.prune_patience must be an integer >= 1"),
        ("prune_decay", 1.0, r"model.prune_decay must be in \[0, 1\)"),
        ("num_components", 1, r"need a mixture \(model.num_components >= 2\)"),
    ],
)
def test_bad_pruning_config_values_raise_naming_the_field(field, value, message):
    config = config_lib.get_config("mixture_fc_auto")
    config.model.variant = presets.CUSTOM
    config.model[field] = value
    with pytest.raises(ValueError, match=message):
        config_lib.validate(config)
    if field != "num_components":
        with pytest.raises(ValueError, match=message):
            presets.check_model_config(presets.model_config(presets.CUSTOM, **{field: value}))


def test_the_sweep_and_the_paper_pipeline_know_the_preset():
    points = space.search_points("mixture_fc_auto", num_random=3, seed=1)
    assert len(points) == 4 * 3 * 3
    assert {p["num_components"] for p in points} == {10}  # N is learned, not searched.
    assert len({p["temperature"] for p in points}) > 10
    assert all(0.1 <= p["temperature"] <= 0.5 for p in points)
    smaller = space.SearchSpace(components_range=(1, 6))
    assert {p["num_components"] for p in space.search_points("mixture_fc_auto", smaller)} == {6}
    base = config_lib.get_config("mixture_fc")
    trial = space.trial_config(base, "mixture_fc_auto", points[0])
    assert trial.model.variant == presets.CUSTOM  # Its temperature differs from the preset's.
    assert cp.learns_components(trial.model) and trial.model.num_components == 10
    same = space.trial_config(
        base, "mixture_fc_auto", dict(latent_dim=2, beta=1.0, temperature=0.28)
    )
    assert same.model.variant == "mixture_fc_auto"
    # The other variants draw as before.
    assert set(space.search_points("mixture_fc", num_random=2)[0]) == {
        "latent_dim",
        "beta",
        "num_components",
        "temperature",
    }
    base.eval.num_samples = 2
    configs = pipeline.variant_configs(base, ["mixture_fc", "mixture_fc_auto"])
    assert configs["mixture_fc_auto"].model.num_components == 10
    assert not cp.learns_components(configs["mixture_fc"].model)


# ----------------------------------------------------------------------------- end to end


def test_tiny_training_prunes_logs_the_components_and_resumes_bit_for_bit(make_config, tmp_path):
    config = make_config("mixture_fc_auto", eval=dict(num_samples=2))
    # Prune within the test's 4 steps: usage = the batch's weights (decay 0), patience 1.
    config.model.update(
        variant=presets.CUSTOM, prune_threshold=0.1, prune_patience=1, prune_decay=0.0
    )
    whole = train.train_and_evaluate(config, str(tmp_path / "whole"))
    assert 1 <= whole["components_active"] < 10
    lines = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").open()]
    training = [r for r in lines if r["split"] == "train"]
    validation = [r for r in lines if r["split"] == "validation"]
    assert all("components_active" in r and "sparsity" in r for r in training)
    assert training[-1]["components_active"] < 10
    for r in validation:
        assert {"latent/kl_dim_0", "latent/kl_dim_1", "latent/active_units"} <= set(r)
        assert 1 <= r["latent/components_in_use"] <= 10
        assert 0 <= r["latent/usage_entropy"] <= np.log(10) + 1e-6
    assert np.isfinite(whole["evaluation"]["metrics"]["ged"]["mean"])
    compared = reporting.compare([str(tmp_path / "whole")], str(tmp_path / "comparison"))
    assert compared.files and len(compared.ged_table) == 1

    config.train.num_steps = 2
    train.train_and_evaluate(config, str(tmp_path / "resumed"))
    config.train.num_steps = 4
    resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"))
    assert resumed["components_active"] == whole["components_active"]
    results = []
    for name in ("whole", "resumed"):
        _, _, variables = checkpointing.restore_best(str(tmp_path / name))
        results.append(jax.tree.leaves(jax.device_get(variables)))
    assert all(np.array_equal(a, b) for a, b in zip(*results, strict=True))
    second = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").open()]
    assert [r["components_active"] for r in second if r["split"] == "train"] == [
        r["components_active"] for r in training
    ]


def test_a_run_of_an_older_version_has_pruning_off(tmp_path):
    workdir = tmp_path / "old"
    checkpointing.write_config(str(workdir), config_lib.get_config("mixture_fc"))
    stored = json.loads((workdir / "config.json").read_text())
    for field in cp.CONFIG_FIELDS:
        del stored["model"][field]
    (workdir / "config.json").write_text(json.dumps(stored))
    loaded = checkpointing.load_config(str(workdir))
    assert not cp.learns_components(loaded.model)
    assert cp.spec_from_config(loaded.model) is None
