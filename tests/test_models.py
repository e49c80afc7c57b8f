"""The three detectors load the public weights exactly and are ready for eager quantization."""
import pytest
import torch
from torch.ao.quantization import fuse_modules

from fdq.device.anchors import anchor_count
from fdq.models import MODEL_NAMES, SPECS, UnknownModelError, build_model, fusion_groups, load_model

WEIGHT_FILES = {"slim": "slim_Final.pth", "rfb": "RBF_Final.pth", "mnet025": "mobilenet0.25_Final.pth"}


@pytest.fixture(scope="module", params=MODEL_NAMES)
def pretrained(request, shared_dir):
    name = request.param
    return name, load_model(name, shared_dir / "weights" / WEIGHT_FILES[name])


def test_strict_keys_and_shapes_match_public_files(shared_dir):
    for name, filename in WEIGHT_FILES.items():
        state = torch.load(shared_dir / "weights" / filename, map_location="cpu", weights_only=True)
        model_state = build_model(name).state_dict()
        assert set(state) == set(model_state), name
        assert all(state[k].shape == model_state[k].shape for k in state), name


def test_wrong_weights_are_refused(shared_dir):
    with pytest.raises(RuntimeError):
        load_model("slim", shared_dir / "weights" / WEIGHT_FILES["rfb"])


def test_unknown_model():
    with pytest.raises(UnknownModelError, match="choose from"):
        build_model("yolo")


@pytest.mark.parametrize("height,width", [(240, 320), (213, 320), (640, 427), (17, 33)])
def test_output_count_matches_anchor_count(pretrained, height, width):
    name, model = pretrained
    with torch.inference_mode():
        loc, conf, landm = model(torch.randn(1, 3, height, width))
    n = anchor_count(SPECS[name].min_sizes, SPECS[name].steps, height, width)
    assert loc.shape == (1, n, 4) and conf.shape == (1, n, 2) and landm.shape == (1, n, 10)
    torch.testing.assert_close(conf.sum(-1), torch.ones(1, n))


def test_slim_has_4420_anchors_at_320x240():
    assert anchor_count(SPECS["slim"].min_sizes, SPECS["slim"].steps, 240, 320) == 4420


def test_fusion_preserves_outputs(pretrained):
    name, model = pretrained
    groups = fusion_groups(model)
    assert groups and all(len(g) in (2, 3) for g in groups)
    fused = fuse_modules(load_model(name, model.state_dict()), groups)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(1, 3, 96, 128)
    with torch.inference_mode():
        for a, b in zip(model(x), fused(x)):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_eager_int8_conversion_runs_and_tracks_float(pretrained):
    """Quantized torch.add raises and quantized torch.cat mixes scales: a model that converts,
    runs and stays close to float proves every add and cat goes through FloatFunctional."""
    from torch.ao.quantization import convert, get_default_qconfig, prepare

    name, model = pretrained
    torch.backends.quantized.engine = "x86"
    qmodel = fuse_modules(load_model(name, model.state_dict()), fusion_groups(model))
    qmodel.qconfig = get_default_qconfig("x86")
    prepare(qmodel, inplace=True)
    torch.manual_seed(0)
    inputs = [torch.randn(1, 3, 96, 128) * 60 for _ in range(3)]
    with torch.inference_mode():
        for x in inputs:
            qmodel(x)
        convert(qmodel, inplace=True)
        loc_q, conf_q, _ = qmodel(inputs[0])
        loc_f, conf_f, _ = model(inputs[0])
    corr = torch.corrcoef(torch.stack([loc_q.flatten(), loc_f.flatten()]))[0, 1]
    assert corr > 0.95, (name, float(corr))
    assert (conf_q - conf_f).abs().max() < 0.2
