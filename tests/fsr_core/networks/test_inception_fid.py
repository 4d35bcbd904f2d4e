"""pytorch-fid's FID Inception: the weight file's layout (written out here from pytorch-fid's
``inception.py`` and torchvision's ``Inception3``), a strict reload of a random-weight file in that
layout, and the features against the network computed by hand from the state dict with
TensorFlow's pools (pytorch-fid's ``FIDInception*`` patches). The real file cannot be obtained in
this environment; the weights here are random."""

from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F

from fsr_core.networks.inception_fid import FID_WEIGHTS_FILE, FIDInceptionV3, load_fid_inception

torch.set_num_threads(1)


def _block_a(name, cin, pool):
    return [(f"{name}.branch1x1", 64, cin, 1, 1), (f"{name}.branch5x5_1", 48, cin, 1, 1),
            (f"{name}.branch5x5_2", 64, 48, 5, 5), (f"{name}.branch3x3dbl_1", 64, cin, 1, 1),
            (f"{name}.branch3x3dbl_2", 96, 64, 3, 3), (f"{name}.branch3x3dbl_3", 96, 96, 3, 3),
            (f"{name}.branch_pool", pool, cin, 1, 1)]


def _block_c(name, c7):
    return [(f"{name}.branch1x1", 192, 768, 1, 1), (f"{name}.branch7x7_1", c7, 768, 1, 1),
            (f"{name}.branch7x7_2", c7, c7, 1, 7), (f"{name}.branch7x7_3", 192, c7, 7, 1),
            (f"{name}.branch7x7dbl_1", c7, 768, 1, 1), (f"{name}.branch7x7dbl_2", c7, c7, 7, 1),
            (f"{name}.branch7x7dbl_3", c7, c7, 1, 7), (f"{name}.branch7x7dbl_4", c7, c7, 7, 1),
            (f"{name}.branch7x7dbl_5", 192, c7, 1, 7), (f"{name}.branch_pool", 192, 768, 1, 1)]


def _block_e(name, cin):
    return [(f"{name}.branch1x1", 320, cin, 1, 1), (f"{name}.branch3x3_1", 384, cin, 1, 1),
            (f"{name}.branch3x3_2a", 384, 384, 1, 3), (f"{name}.branch3x3_2b", 384, 384, 3, 1),
            (f"{name}.branch3x3dbl_1", 448, cin, 1, 1), (f"{name}.branch3x3dbl_2", 384, 448, 3, 3),
            (f"{name}.branch3x3dbl_3a", 384, 384, 1, 3), (f"{name}.branch3x3dbl_3b", 384, 384, 3, 1),
            (f"{name}.branch_pool", 192, cin, 1, 1)]


#: every BasicConv2d of pytorch-fid's file: (name, out, in, kh, kw)
CONVS = [
    ("Conv2d_1a_3x3", 32, 3, 3, 3), ("Conv2d_2a_3x3", 32, 32, 3, 3), ("Conv2d_2b_3x3", 64, 32, 3, 3),
    ("Conv2d_3b_1x1", 80, 64, 1, 1), ("Conv2d_4a_3x3", 192, 80, 3, 3),
    *_block_a("Mixed_5b", 192, 32), *_block_a("Mixed_5c", 256, 64), *_block_a("Mixed_5d", 288, 64),
    ("Mixed_6a.branch3x3", 384, 288, 3, 3), ("Mixed_6a.branch3x3dbl_1", 64, 288, 1, 1),
    ("Mixed_6a.branch3x3dbl_2", 96, 64, 3, 3), ("Mixed_6a.branch3x3dbl_3", 96, 96, 3, 3),
    *_block_c("Mixed_6b", 128), *_block_c("Mixed_6c", 160), *_block_c("Mixed_6d", 160), *_block_c("Mixed_6e", 192),
    ("Mixed_7a.branch3x3_1", 192, 768, 1, 1), ("Mixed_7a.branch3x3_2", 320, 192, 3, 3),
    ("Mixed_7a.branch7x7x3_1", 192, 768, 1, 1), ("Mixed_7a.branch7x7x3_2", 192, 192, 1, 7),
    ("Mixed_7a.branch7x7x3_3", 192, 192, 7, 1), ("Mixed_7a.branch7x7x3_4", 192, 192, 3, 3),
    *_block_e("Mixed_7b", 1280), *_block_e("Mixed_7c", 2048),
]


def expected_layout() -> dict[str, tuple[int, ...]]:
    """Keys and shapes of the file (BatchNorm counters aside): conv.weight and bn.{weight, bias,
    running_mean, running_var} per BasicConv2d, and the 1008-class fc of the TF graph."""
    layout = {}
    for name, out, cin, kh, kw in CONVS:
        layout[f"{name}.conv.weight"] = (out, cin, kh, kw)
        for stat in ("weight", "bias", "running_mean", "running_var"):
            layout[f"{name}.bn.{stat}"] = (out,)
    layout["fc.weight"], layout["fc.bias"] = (1008, 2048), (1008,)
    return layout


def random_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random-weight state dict in the file's layout, with non-trivial BatchNorm statistics."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in expected_layout().items():
        if key.endswith("conv.weight") or key == "fc.weight":
            fan_in = int(torch.tensor(shape[1:]).prod())
            state[key] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) * 1.5 + 0.5
        elif key.endswith("bn.weight"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:  # biases and running means
            state[key] = torch.randn(shape, generator=g) * 0.1
    return state


def by_hand(state: dict, x: torch.Tensor, *, tf_pools: bool = True) -> torch.Tensor:
    """The FID Inception computed from the state dict with functional ops. ``tf_pools=False`` puts
    torchvision's pools back (zeros counted in the average pools, an average pool in Mixed_7c)."""

    def cbr(name, h, stride=1, padding=0):
        h = F.conv2d(h, state[f"{name}.conv.weight"], stride=stride, padding=padding)
        h = F.batch_norm(h, state[f"{name}.bn.running_mean"], state[f"{name}.bn.running_var"],
                         state[f"{name}.bn.weight"], state[f"{name}.bn.bias"], False, 0.0, 0.001)
        return F.relu(h)

    def avg(h):
        return F.avg_pool2d(h, 3, 1, 1, count_include_pad=not tf_pools)

    def a(n, h):
        return torch.cat([cbr(f"{n}.branch1x1", h), cbr(f"{n}.branch5x5_2", cbr(f"{n}.branch5x5_1", h), padding=2),
                          cbr(f"{n}.branch3x3dbl_3", cbr(f"{n}.branch3x3dbl_2", cbr(f"{n}.branch3x3dbl_1", h),
                                                        padding=1), padding=1),
                          cbr(f"{n}.branch_pool", avg(h))], 1)

    def c(n, h):
        s = cbr(f"{n}.branch7x7_3", cbr(f"{n}.branch7x7_2", cbr(f"{n}.branch7x7_1", h), padding=(0, 3)),
                padding=(3, 0))
        d = cbr(f"{n}.branch7x7dbl_1", h)
        for k, pad in ((2, (3, 0)), (3, (0, 3)), (4, (3, 0)), (5, (0, 3))):
            d = cbr(f"{n}.branch7x7dbl_{k}", d, padding=pad)
        return torch.cat([cbr(f"{n}.branch1x1", h), s, d, cbr(f"{n}.branch_pool", avg(h))], 1)

    def e(n, h, pooled):
        t = cbr(f"{n}.branch3x3_1", h)
        d = cbr(f"{n}.branch3x3dbl_2", cbr(f"{n}.branch3x3dbl_1", h), padding=1)
        return torch.cat([cbr(f"{n}.branch1x1", h), cbr(f"{n}.branch3x3_2a", t, padding=(0, 1)),
                          cbr(f"{n}.branch3x3_2b", t, padding=(1, 0)), cbr(f"{n}.branch3x3dbl_3a", d, padding=(0, 1)),
                          cbr(f"{n}.branch3x3dbl_3b", d, padding=(1, 0)), cbr(f"{n}.branch_pool", pooled)], 1)

    h = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    h = cbr("Conv2d_2b_3x3", cbr("Conv2d_2a_3x3", cbr("Conv2d_1a_3x3", h, stride=2)), padding=1)
    h = cbr("Conv2d_4a_3x3", cbr("Conv2d_3b_1x1", F.max_pool2d(h, 3, 2)))
    h = F.max_pool2d(h, 3, 2)
    for n in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
        h = a(n, h)
    h = torch.cat([cbr("Mixed_6a.branch3x3", h, stride=2),
                   cbr("Mixed_6a.branch3x3dbl_3", cbr("Mixed_6a.branch3x3dbl_2", cbr("Mixed_6a.branch3x3dbl_1", h),
                                                       padding=1), stride=2), F.max_pool2d(h, 3, 2)], 1)
    for n in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
        h = c(n, h)
    s = cbr("Mixed_7a.branch7x7x3_1", h)
    for k, pad in ((2, (0, 3)), (3, (3, 0))):
        s = cbr(f"Mixed_7a.branch7x7x3_{k}", s, padding=pad)
    h = torch.cat([cbr("Mixed_7a.branch3x3_2", cbr("Mixed_7a.branch3x3_1", h), stride=2),
                   cbr("Mixed_7a.branch7x7x3_4", s, stride=2), F.max_pool2d(h, 3, 2)], 1)
    h = e("Mixed_7b", h, avg(h))
    h = e("Mixed_7c", h, F.max_pool2d(h, 3, 1, 1) if tf_pools else avg(h))
    return h.mean(dim=(2, 3))


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> tuple[str, dict]:
    state = random_state()
    path = tmp_path_factory.mktemp("inception") / FID_WEIGHTS_FILE
    torch.save(state, path)
    return str(path), state


def test_the_layout_is_pytorch_fids_file():
    layout = expected_layout()
    assert len(CONVS) == 94 and len(layout) == 94 * 5 + 2
    assert layout["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert layout["Mixed_7c.branch_pool.conv.weight"] == (192, 2048, 1, 1)
    got = {k: tuple(v.shape) for k, v in FIDInceptionV3().state_dict().items() if not k.endswith("num_batches_tracked")}
    assert got == layout
    assert not any(k.startswith("AuxLogits") for k in FIDInceptionV3().state_dict())  # aux_logits=False


def test_reloads_strictly_and_computes_the_fid_network(weights):
    path, state = weights
    model = load_fid_inception(path)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x = torch.rand(2, 3, 64, 80) * 2 - 1  # any size: resized to 299x299
    with torch.no_grad():
        features = model(x)
        assert features.shape == (2, 2048) and bool((features >= 0).all()) and float(features.std()) > 0
        torch.testing.assert_close(features, by_hand(state, x), rtol=1e-4, atol=1e-5)
        # the TF pools matter: torchvision's pools give other features
        assert (features - by_hand(state, x, tf_pools=False)).abs().max() > 1e-3
        torch.testing.assert_close(load_fid_inception(path)(x[:1]), features[:1])  # batch of one, a fresh load


def test_a_file_without_batchnorm_counters_loads(weights, tmp_path):
    path, state = weights
    saved = FIDInceptionV3().state_dict()
    assert any(k.endswith("num_batches_tracked") for k in saved)
    with_counters = tmp_path / "with.pth"
    torch.save({**state, **{k: v for k, v in saved.items() if k.endswith("num_batches_tracked")}}, with_counters)
    a = load_fid_inception(str(with_counters)).state_dict()
    b = load_fid_inception(path).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_wrong_files_are_refused_by_name(weights, tmp_path):
    path, state = weights
    with pytest.raises(FileNotFoundError, match=f"{FID_WEIGHTS_FILE}.*not found: .*absent.pth.*mseitzer/pytorch-fid"):
        load_fid_inception(str(tmp_path / "absent.pth"))
    with pytest.raises(FileNotFoundError, match="not configured"):
        load_fid_inception(None)
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert isinstance(load_fid_inception(path, sha256=digest.upper()), FIDInceptionV3)
    with pytest.raises(ValueError, match="sha256 .*expected 0000"):
        load_fid_inception(path, sha256="0" * 64)
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("fc.")}, partial)
    with pytest.raises(ValueError, match="(?s)not pytorch-fid's Inception layout.*fc.weight"):
        load_fid_inception(str(partial))
    torchvision_like = tmp_path / "aux.pth"
    torch.save({**state, "AuxLogits.fc.weight": torch.zeros(1008, 768)}, torchvision_like)
    with pytest.raises(ValueError, match="(?s)Unexpected.*AuxLogits"):
        load_fid_inception(str(torchvision_like))


def test_wrong_inputs_are_errors():
    with pytest.raises(ValueError, match=r"\[N,3,H,W\]"):
        FIDInceptionV3()(torch.zeros(1, 1, 32, 32))
