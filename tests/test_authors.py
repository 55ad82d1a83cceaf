"""The options that follow the authors' code (ishaanb92/GeneralizedProbabilisticUNet): parameter
counts, batch-norm positions, align_corners upsampling, initializers, weight decay and the L2
norm penalty, the authors preset."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from probunet_jax import config, losses, networks, pipeline, presets
from probunet_jax.model import init_variables, model_from_config, parameter_counts
from probunet_jax.train import make_optimizer

AUTHORS_FILE = "experiments/configs/authors.py"


# ------------------------------------------------ their layer list, written from their modules


def _conv(cin, cout, k=3):  # torch.nn.Conv2d(cin, cout, k): weight and bias.
    return cin * cout * k * k + cout


def _bn(c):  # torch.nn.BatchNorm2d(c): weight and bias (running statistics are buffers).
    return 2 * c


def _their_unet(filters, cin):
    """unet.py Unet(apply_last_layer=False, norm=True): DownConvBlocks with a BN each, then
    UpConvBlocks (bilinear, no conv in the upsampling) with a BN each but the last."""
    total, prev = 0, cin
    for f in filters:
        total += _conv(prev, f) + 2 * _conv(f, f) + _bn(f)
        prev = f
    for i in range(len(filters) - 2, -1, -1):
        total += _conv(prev + filters[i], filters[i]) + 2 * _conv(filters[i], filters[i])
        total += _bn(filters[i]) if i > 0 else 0
        prev = filters[i]
    return total


def _their_latent_net(kind, d, rank, n, filters, cin):
    """model.py Encoder (a BN per block but the last) and the 1×1 convs of AxisAligned-,
    FullCov- and LowRankCovConvGaussian."""
    total, prev = 0, cin
    for i, f in enumerate(filters):
        total += _conv(prev, f) + 2 * _conv(f, f) + (_bn(f) if i < len(filters) - 1 else 0)
        prev = f
    total += _conv(prev, 2 * n * d, 1)  # conv_layer / mean_log_sigma_op
    total += {"aa": 0, "fc": _conv(prev, n * d * d, 1), "lr": _conv(prev, n * d * rank, 1)}[kind]
    return total + (_conv(prev, n, 1) if n > 1 else 0)  # mixture_weights_conv


def _their_fcomb(f0, d, classes, depth):
    """model.py Fcomb(norm=True): 1×1 convs, a BN before each but the first and the last."""
    return _conv(f0 + d, f0, 1) + (depth - 2) * (_bn(f0) + _conv(f0, f0, 1)) + _conv(f0, classes, 1)


# Every variant of the paper (the authors' code has no normalizing flows; tests/test_flows.py
# counts a flow's outputs on top of its base).
@pytest.mark.parametrize(
    "variant", [v for v, fields in presets.VARIANTS.items() if fields.get("flow", "none") == "none"]
)
def test_parameter_counts_equal_the_authors_model(variant):
    model_config = presets.model_config(variant, **presets.AUTHORS_NETWORK)
    m = model_config
    filters = m.filters
    expected = {
        "unet": _their_unet(filters, 1),
        "prior_net": _their_latent_net(
            m.latent_kind, m.latent_dim, m.rank, m.num_components, filters, 1
        ),
        "posterior_net": _their_latent_net(
            m.latent_kind, m.latent_dim, m.rank, m.num_components, filters, 2
        ),
        "head": _their_fcomb(filters[0], m.latent_dim, 1, m.head_depth),
    }
    expected["total"] = sum(expected.values())
    assert parameter_counts(model_from_config(model_config), (16, 16, 1)) == expected


def test_authors_network_is_the_shallow_unet_of_their_lidc_runs():
    counts = parameter_counts(
        model_from_config(presets.model_config("aa", **presets.AUTHORS_NETWORK)), (16, 16, 1)
    )
    assert tuple(presets.AUTHORS_NETWORK["filters"]) == (32, 64, 128, 256)
    assert counts["total"] == 6_847_129  # "6.85 M" of the table


# ------------------------------------------------------------------------ batch-norm positions


def _tiny(variant="mixture_fc", **overrides):
    fields = dict(presets.AUTHORS_NETWORK, filters=(4, 8, 16), kl_samples=2)
    return model_from_config(presets.model_config(variant, **{**fields, **overrides}))


def _init(model, image_shape=(16, 16, 1), *, shapes_only=False):
    """The model's initial variables (jit-compiled: eager initialization is slow)."""

    def init(key):
        return init_variables(model, key, image_shape)

    return jax.eval_shape(init, jax.random.key(0)) if shapes_only else init(jax.random.key(0))


def _norm_paths(variables):
    """The modules holding batch norms (a block's `BatchNorm_k` named by its block)."""
    paths = jax.tree_util.tree_flatten_with_path(variables["batch_stats"])[0]
    keys = [[k.key for k in path[:-1]] for path, _ in paths]
    return sorted({"/".join(k[:-1] if k[-1].startswith("BatchNorm") else k) for k in keys})


def test_batch_norm_positions_under_each_option():
    authors = _init(_tiny(), shapes_only=True)
    assert _norm_paths(authors) == [
        "head/norms_0",
        "head/norms_1",
        "posterior_net/encoder/ConvBlock_0",
        "posterior_net/encoder/ConvBlock_1",  # Not the bottleneck (ConvBlock_2).
        "prior_net/encoder/ConvBlock_0",
        "prior_net/encoder/ConvBlock_1",
        "unet/ConvBlock_0",  # The first decoder block; not the last (ConvBlock_1).
        "unet/encoder/ConvBlock_0",
        "unet/encoder/ConvBlock_1",
        "unet/encoder/ConvBlock_2",
    ]
    # One BatchNorm per normalized block, after its last convolution.
    assert list(authors["batch_stats"]["unet"]["encoder"]["ConvBlock_0"]) == ["BatchNorm_0"]
    paper = _init(_tiny(norm="paper"), shapes_only=True)
    blocks = paper["batch_stats"]["prior_net"]["encoder"]
    assert len(blocks) == 3 and all(len(block) == 3 for block in blocks.values())
    assert "head" not in paper["batch_stats"] and len(paper["batch_stats"]["unet"]) == 3


def test_head_batch_norm_trains_with_the_decoder():
    model = _tiny("aa", filters=(2,))  # One level, one Gaussian: quick to run eagerly.
    variables = _init(model, (4, 4, 1))
    image = jax.random.uniform(jax.random.key(1), (2, 4, 4, 1))
    mask = (image[..., 0] > 0.5).astype(jnp.int32)
    rngs = {"latent": jax.random.key(2)}
    _, updates = model.apply(variables, image, mask, train=True, rngs=rngs, mutable=True)
    before = variables["batch_stats"]["head"]["norms_0"]["mean"]
    assert not np.allclose(updates["batch_stats"]["head"]["norms_0"]["mean"], before)


# ---------------------------------------------------------------------------- upsampling


def test_align_corners_upsampling_matches_hand_computed_values():
    x = jnp.array([[0.0, 1.0], [2.0, 3.0]])[None, :, :, None]  # [1, 2, 2, 1]
    out = networks.upsample_to(x, jnp.zeros((1, 4, 4, 1)), align_corners=True)[0, :, :, 0]
    # Output (i, j) samples input (i/3, j/3): the value 2·(i/3) + (j/3).
    expected = [[2 * i / 3 + j / 3 for j in range(4)] for i in range(4)]
    np.testing.assert_allclose(out, expected, atol=1e-6)
    # 3 → 5 along one axis: positions 0, 0.5, 1, 1.5, 2.
    np.testing.assert_allclose(
        networks.align_corners_matrix(3, 5) @ np.array([1.0, 3.0, 7.0]), [1, 2, 3, 5, 7]
    )
    half_pixel = networks.upsample_to(x, jnp.zeros((1, 4, 4, 1)))
    np.testing.assert_allclose(half_pixel, jax.image.resize(x, (1, 4, 4, 1), "bilinear"))
    assert not np.allclose(half_pixel[0, :, :, 0], expected)


# ---------------------------------------------------------------------------- initializers


def test_initializers_of_the_authors_code():
    key = jax.random.key(0)
    block = networks.ConvBlock(64, 3, "end", "authors")
    conv = block.init(key, jnp.zeros((1, 4, 4, 64)), train=False)["params"]["Conv_1"]
    np.testing.assert_allclose(np.std(conv["kernel"]), np.sqrt(2 / (9 * 64)), rtol=0.03)  # He
    bias = np.asarray(conv["bias"])
    assert np.all(np.abs(bias) <= 2e-3) and 3e-4 < np.std(bias) < 1.5e-3  # N(0, 1e-3²), ±2σ
    spec = presets.latent_spec(presets.model_config("mixture_lr", latent_layout="authors"))
    net = networks.LatentNet((64,), spec.output_layers, 1, "authors", "authors")
    layers = net.init(key, jnp.zeros((1, 2, 2, 1)), train=False)["params"]
    out = layers["mean_log_scale"]  # 64 → 5 · 2 · 6 = 60 outputs
    np.testing.assert_allclose(np.std(out["kernel"]), np.sqrt(2 / 64), rtol=0.1)
    assert 0.7 < np.std(out["bias"]) < 1.3  # N(0, 1), 60 draws
    logits = layers["mixture_logits"]  # PyTorch's default: uniform in ±1/√64
    assert np.max(np.abs(logits["kernel"])) <= 1 / 8 and np.max(np.abs(logits["bias"])) <= 1 / 8
    head = networks.Head(32, 4, 1, 6, "authors", "authors")
    head = head.init(key, jnp.zeros((1, 2, 2, 32)), jnp.zeros((1, 6)))["params"]
    first = np.concatenate(
        [head["feature_projection"]["kernel"], head["latent_projection"]["kernel"]]
    )
    np.testing.assert_allclose(first.T @ first, np.eye(32), atol=1e-5)  # [38, 32], one matrix
    middle = np.asarray(head["layers_0"]["kernel"])
    np.testing.assert_allclose(middle.T @ middle, np.eye(32), atol=1e-5)
    default = networks.ConvBlock(4).init(key, jnp.zeros((1, 4, 4, 1)), train=False)["params"]
    assert not np.any(default["Conv_0"]["bias"])  # Flax's default: zero biases


# ------------------------------------------------- weight decay and the L2 norm penalty


def test_latent_nets_norm_sums_the_norms_of_their_tensors():
    params = {
        "prior_net": {"w": jnp.array([3.0, 4.0]), "b": jnp.zeros(2)},
        "posterior_net": {"w": jnp.array([[1.0, 2.0], [2.0, 4.0]])},
        "unet": {"w": jnp.ones(3)},  # Not penalized.
    }
    assert float(losses.latent_nets_norm(params)) == pytest.approx(5.0 + 0.0 + 5.0)
    grads = jax.grad(losses.latent_nets_norm)(params)
    np.testing.assert_allclose(grads["prior_net"]["w"], [0.6, 0.8])  # W / ‖W‖
    np.testing.assert_array_equal(grads["prior_net"]["b"], 0)  # 0 at W = 0, not NaN
    np.testing.assert_allclose(grads["posterior_net"]["w"], [[0.2, 0.4], [0.4, 0.8]])
    np.testing.assert_array_equal(grads["unet"]["w"], 0)


def test_optimizer_adds_weight_decay():
    params = {
        "prior_net": {"w": jnp.array([3.0, -4.0])},
        "posterior_net": {"w": jnp.array([1.0, 0.0])},
        "unet": {"w": jnp.array([2.0, 1.0])},
    }
    grads = jax.tree.map(lambda w: 0.1 * jnp.ones_like(w), params)
    train = config.get_config("aa", train=dict(weight_decay=0.01, l2_norm_penalty=0.5)).train
    optimizer = make_optimizer(train)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    # The hand formula: g + wd·w, then Adam (the L2 norm penalty is in the loss).
    expected_grads = jax.tree.map(lambda g, w: g + 0.01 * w, grads, params)
    adam = optax.adam(train.learning_rate)
    expected, _ = adam.update(expected_grads, adam.init(params), params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), updates, expected)
    # Defaults: plain Adam, the state of today's checkpoints.
    default = make_optimizer(config.get_config("aa").train)
    assert isinstance(default.init(params)[0], optax.ScaleByAdamState)


# ------------------------------------------------------------------------ the authors preset


def test_authors_config_follows_their_code():
    cfg = config.load_config_file(f"{AUTHORS_FILE}:lr")
    assert (cfg.model.variant, cfg.model.preset_name) == ("lr", "authors")
    assert tuple(cfg.model.filters) == (32, 64, 128, 256) and cfg.model.kl_samples == 1000
    assert (cfg.model.norm, cfg.model.init_scheme, cfg.model.align_corners) == (
        "authors",
        "authors",
        True,
    )
    assert (cfg.model.latent_layout, cfg.model.lr_parameterization) == ("authors", "covariance")
    assert (cfg.data.name, cfg.data.lidc_split, cfg.data.annotator_choice) == (
        "lidc",
        "slice",
        "per_batch",
    )
    assert (cfg.train.batch_size, cfg.train.patience, cfg.train.learning_rate) == (6, 100, 1e-4)
    assert (cfg.train.weight_decay, cfg.train.l2_norm_penalty) == (1e-5, 1e-5)
    assert presets.model_name(cfg.model) == "lr (authors)"
    # The pipeline keeps the network and training fields for every variant.
    cfg.data.name = "synthetic"
    configs = pipeline.variant_configs(cfg, ["aa", "mixture_fc"])
    assert all(c.model.norm == "authors" and c.train.batch_size == 6 for c in configs.values())
    assert [presets.model_name(c.model) for c in configs.values()] == [
        "aa (authors)",
        "mixture_fc (authors)",
    ]


def test_defaults_are_the_paper_options_and_bad_options_raise():
    model = presets.model_config("aa")
    assert (model.norm, model.init_scheme, model.align_corners) == ("paper", "flax", False)
    assert (model.latent_layout, model.lr_parameterization) == ("compact", "scale")
    assert presets.model_name(model) == "aa"
    for field, value, message in [
        ("norm", "torch", "Unknown norm 'torch'"),
        ("init_scheme", "he", "Unknown init_scheme 'he'"),
        ("latent_layout", "x", "Unknown latent layout 'x'"),
    ]:
        with pytest.raises(ValueError, match=message):
            presets.check_model_config(presets.model_config("aa", **{field: value}))
    with pytest.raises(ValueError, match="weight_decay"):
        config.validate(config.get_config("aa", train=dict(weight_decay=-1.0)))
