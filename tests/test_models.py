"""Tests for the timm registration of the DB3KD LeNet-5 and CIFAR AlexNet models."""
from pathlib import Path
from typing import Dict

import pytest
import timm
import torch
from timm.data import resolve_model_data_config
from timm.models import save_for_hf

import db3_timm.models  # noqa: F401  (registers the models)
from db3_timm.models import AlexNetCifar, LeNet5

LENETS = ('lenet5', 'lenet5_fifth', 'lenet5_half')
ALEXNETS = ('alexnet_cifar', 'alexnet_cifar_half', 'alexnet_cifar_quarter')
ALL_MODELS = LENETS + ALEXNETS

# Parameter counts for the default 10 classes.
# LeNet-5 (conv5x5 valid + pool2 twice: 28 -> 24 -> 12 -> 8 -> 4, so fc1 sees c2*4*4):
#   lenet5:       conv1 1*20*25+20 = 520, conv2 20*50*25+50 = 25,050,
#                 fc1 50*16*200+200 = 160,200, fc2 200*10+10 = 2,010          -> 187,780
#   lenet5_half:  conv1 1*10*25+10 = 260, conv2 10*25*25+25 = 6,275,
#                 fc1 25*16*100+100 = 40,100, fc2 100*10+10 = 1,010           -> 47,645
#   lenet5_fifth: conv1 1*4*25+4 = 104, conv2 4*10*25+10 = 1,010,
#                 fc1 10*16*40+40 = 6,440, fc2 40*10+10 = 410                 -> 7,964
# AlexNet CIFAR, DB3KD models.py (3x3 convs pad 1; conv1 stride 2 then three 2x2/2 pools:
# 32 -> 16 -> 8 -> 4 -> 2, so fc1 sees c5*2*2; BN = 2 params/channel):
#   alexnet_cifar (64, 192, 384, 256, 256 | 4096, 4096):
#     conv1 3*64*9+64 = 1,792        conv2 64*192*9+192 = 110,784     conv3 192*384*9+384 = 663,936
#     conv4 384*256*9+256 = 884,992  conv5 256*256*9+256 = 590,080    -> convs 2,251,584
#     conv BNs 2*(64+192+384+256+256) = 2,304
#     fc1 1024*4096+4096 = 4,198,400 fc2 4096*4096+4096 = 16,781,312  fc3 4096*10+10 = 40,970
#     fc BNs 2*(4096+4096) = 16,384
#     total 2,251,584 + 2,304 + 21,020,682 + 16,384 = 23,290,954
#   alexnet_cifar_half (32, 96, 192, 128, 128 | 2048, 2048):
#     conv1 3*32*9+32 = 896          conv2 32*96*9+96 = 27,744        conv3 96*192*9+192 = 166,080
#     conv4 192*128*9+128 = 221,312  conv5 128*128*9+128 = 147,584    -> convs 563,616
#     conv BNs 2*(32+96+192+128+128) = 1,152
#     fc1 512*2048+2048 = 1,050,624  fc2 2048*2048+2048 = 4,196,352   fc3 2048*10+10 = 20,490
#     fc BNs 2*(2048+2048) = 8,192
#     total 563,616 + 1,152 + 5,267,466 + 8,192 = 5,840,426
#   alexnet_cifar_quarter (16, 48, 96, 64, 64 | 1024, 1024):
#     conv1 3*16*9+16 = 448          conv2 16*48*9+48 = 6,960         conv3 48*96*9+96 = 41,568
#     conv4 96*64*9+64 = 55,360      conv5 64*64*9+64 = 36,928        -> convs 141,264
#     conv BNs 2*(16+48+96+64+64) = 576
#     fc1 256*1024+1024 = 263,168    fc2 1024*1024+1024 = 1,049,600   fc3 1024*10+10 = 10,250
#     fc BNs 2*(1024+1024) = 4,096
#     total 141,264 + 576 + 1,323,018 + 4,096 = 1,468,954
PARAM_COUNTS: Dict[str, int] = {
    'lenet5': 187_780,
    'lenet5_half': 47_645,
    'lenet5_fifth': 7_964,
    'alexnet_cifar': 23_290_954,
    'alexnet_cifar_half': 5_840_426,
    'alexnet_cifar_quarter': 1_468_954,
}

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _input(model: torch.nn.Module, batch: int = 3) -> torch.Tensor:
    """Random batch shaped like the model's cfg input_size."""
    return torch.randn(batch, *model.pretrained_cfg['input_size'])


def _num_params(model: torch.nn.Module) -> int:
    """Count the model's parameters."""
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_models() -> None:
    """The three LeNets and three AlexNets are listed, under their own module names."""
    assert timm.list_models('lenet5*') == sorted(LENETS)
    assert timm.list_models('alexnet_cifar*') == sorted(ALEXNETS)
    assert timm.list_models(module='lenet') == sorted(LENETS)
    assert timm.list_models(module='alexnet_cifar') == sorted(ALEXNETS)
    for name in ALL_MODELS:
        assert timm.is_model(name)


@pytest.mark.parametrize('name', ALL_MODELS)
def test_build_forward_and_param_count(name: str) -> None:
    """create_model builds the model, forward gives (N, num_classes), counts match the widths."""
    model = timm.create_model(name).eval()
    cls = LeNet5 if name in LENETS else AlexNetCifar
    assert isinstance(model, cls)
    assert model.num_classes == 10
    with torch.no_grad():
        out = model(_input(model))
    assert out.shape == (3, 10)
    assert _num_params(model) == PARAM_COUNTS[name]


@pytest.mark.parametrize('name', ALL_MODELS)
def test_pretrained_cfg(name: str) -> None:
    """The pretrained cfg carries the dataset statistics, input size and layer names, no weights."""
    model = timm.create_model(name)
    cfg = model.pretrained_cfg
    assert model.default_cfg is cfg
    if name in LENETS:
        assert cfg['input_size'] == (1, 28, 28)
        assert cfg['mean'] == MNIST_MEAN and cfg['std'] == MNIST_STD
        assert cfg['classifier'] == 'fc2'
        assert cfg['first_conv'] == 'conv1'
        assert model.in_chans == 1
    else:
        assert cfg['input_size'] == (3, 32, 32)
        assert cfg['mean'] == CIFAR10_MEAN and cfg['std'] == CIFAR10_STD
        assert cfg['classifier'] == 'fc3'
        assert cfg['first_conv'] == 'features.0'
        assert model.in_chans == 3
    assert cfg['num_classes'] == 10
    assert cfg['fixed_input_size'] is True
    assert cfg['architecture'] == name
    assert not cfg.get('hf_hub_id') and not cfg.get('url')
    assert isinstance(model.get_submodule(cfg['first_conv']), torch.nn.Conv2d)
    assert model.get_submodule(cfg['classifier']) is model.get_classifier()


@pytest.mark.parametrize('name', ALL_MODELS)
def test_data_config(name: str) -> None:
    """resolve_model_data_config returns the cfg's mean, std and input size."""
    model = timm.create_model(name)
    data_config = resolve_model_data_config(model)
    assert data_config['mean'] == model.pretrained_cfg['mean']
    assert data_config['std'] == model.pretrained_cfg['std']
    assert data_config['input_size'] == model.pretrained_cfg['input_size']
    assert data_config['crop_pct'] == 1.0


@pytest.mark.parametrize('name', ALL_MODELS)
def test_forward_features_and_head(name: str) -> None:
    """forward == forward_head(forward_features); pre_logits has head_hidden_size features."""
    model = timm.create_model(name).eval()
    x = _input(model)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.ndim == 4 and feats.shape[:2] == (3, model.num_features)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (3, model.head_hidden_size)
        torch.testing.assert_close(model.forward_head(feats), model(x))


@pytest.mark.parametrize('name', ALL_MODELS)
def test_num_classes_and_reset_classifier(name: str) -> None:
    """num_classes at creation and reset_classifier both change the output dimension."""
    model = timm.create_model(name, num_classes=7).eval()
    x = _input(model)
    assert model(x).shape == (3, 7)

    model.reset_classifier(5)
    assert model.num_classes == 5
    assert model.get_classifier().out_features == 5
    assert model(x).shape == (3, 5)

    model.reset_classifier(0)
    assert model(x).shape == (3, model.head_hidden_size)


@pytest.mark.parametrize('name', ALL_MODELS)
def test_save_for_hf_round_trip(name: str, tmp_path: Path) -> None:
    """save_for_hf + create_model('local-dir:...') restores the same model and outputs."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=6)
    # One training step's worth of BN statistics, so running stats differ from their init.
    model.train()
    with torch.no_grad():
        model(_input(model, batch=8))
    model.eval()
    save_for_hf(model, str(tmp_path), safe_serialization=True)
    assert (tmp_path / 'model.safetensors').is_file()
    assert (tmp_path / 'config.json').is_file()

    loaded = timm.create_model('local-dir:' + str(tmp_path), pretrained=True).eval()
    assert type(loaded) is type(model)
    assert loaded.num_classes == 6
    # config.json stores tuples as JSON lists
    assert tuple(loaded.pretrained_cfg['mean']) == model.pretrained_cfg['mean']
    assert tuple(loaded.pretrained_cfg['std']) == model.pretrained_cfg['std']
    assert tuple(loaded.pretrained_cfg['input_size']) == model.pretrained_cfg['input_size']
    x = _input(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_lenet_input_size_override() -> None:
    """in_chans / img_size overrides resize the fc1 input instead of breaking."""
    model = timm.create_model('lenet5_half', in_chans=3, img_size=32, num_classes=10).eval()
    # 32 -> 28 -> 14 -> 10 -> 5, so fc1 sees 25*5*5 inputs.
    assert model.fc1.in_features == 25 * 5 * 5
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    model = timm.create_model('lenet5', img_size=(28, 36)).eval()
    assert model(torch.randn(2, 1, 28, 36)).shape == (2, 10)
    with pytest.raises(ValueError):
        timm.create_model('lenet5', img_size=12)


def test_alexnet_input_size_override() -> None:
    """AlexNet accepts other sizes by resizing the fc1 input."""
    model = timm.create_model('alexnet_cifar_quarter', img_size=64).eval()
    # 64 -> conv/2 32 -> pool 16 -> pool 8 -> pool 4, so fc1 sees 64*4*4 inputs.
    assert model.fc1[0].in_features == 64 * 4 * 4
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    model = timm.create_model('alexnet_cifar_half', img_size=15).eval()
    assert model(torch.randn(2, 3, 15, 15)).shape == (2, 10)
    with pytest.raises(ValueError):
        timm.create_model('alexnet_cifar', img_size=14)


@pytest.mark.parametrize('name', ['lenet5_fifth', 'alexnet_cifar_half'])
def test_features_only(name: str) -> None:
    """features_only returns one map per feature_info entry with the declared channels."""
    model = timm.create_model(name, features_only=True).eval()
    x = torch.randn(2, *model.pretrained_cfg['input_size'])
    feats = model(x)
    assert [f.shape[1] for f in feats] == model.feature_info.channels()
    if name in ALEXNETS:  # padded convs, so the declared reductions are exact (32 -> 8, 4, 4, 4, 2)
        assert [x.shape[-1] // f.shape[-1] for f in feats] == model.feature_info.reduction()


def test_train_script_create_model_call() -> None:
    """The create_model call of timm's train.py (None kwargs, --in-chans 1, --drop) works."""
    model = timm.create_model(
        'lenet5_half', pretrained=False, in_chans=1, num_classes=None, drop_rate=0.0,
        drop_path_rate=None, drop_block_rate=None, global_pool=None, bn_momentum=None, bn_eps=None,
        scriptable=False, checkpoint_path=None,
    )
    assert model.num_classes == 10
    model = timm.create_model('alexnet_cifar_half', in_chans=3, num_classes=None, drop_rate=0.5)
    assert model.fc1[2].p == 0.5 and model.fc2[2].p == 0.5


def test_reference_state_dict_keys() -> None:
    """LeNet parameter names match the DB3KD reference (conv1, conv2, fc1, fc2)."""
    keys = set(timm.create_model('lenet5').state_dict())
    assert keys == {f'{m}.{p}' for m in ('conv1', 'conv2', 'fc1', 'fc2') for p in ('weight', 'bias')}


def _reference_alexnet_keys() -> set:
    """state_dict keys of the DB3KD reference AlexNet classes (features Sequential + fc1..fc3)."""
    bn = ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked')
    keys = set()
    for conv_idx in (0, 4, 8, 11, 14):
        keys |= {f'features.{conv_idx}.{p}' for p in ('weight', 'bias')}
        keys |= {f'features.{conv_idx + 1}.{p}' for p in bn}
    for fc in ('fc1', 'fc2'):
        keys |= {f'{fc}.0.{p}' for p in ('weight', 'bias')}
        keys |= {f'{fc}.3.{p}' for p in bn}
    keys |= {'fc3.weight', 'fc3.bias'}
    return keys


@pytest.mark.parametrize('name', ALEXNETS)
def test_alexnet_reference_layers(name: str) -> None:
    """AlexNet layers and state_dict names match DB3KD's models.py, so its checkpoints load."""
    model = timm.create_model(name)
    assert set(model.state_dict()) == _reference_alexnet_keys()
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.kernel_size, c.stride, c.padding) for c in convs] == \
        [((3, 3), (2, 2), (1, 1))] + [((3, 3), (1, 1), (1, 1))] * 4
    pools = [m for m in model.features if isinstance(m, torch.nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride) for p in pools] == [(2, 2)] * 3
    layer_types = [type(m).__name__ for m in model.features]
    assert layer_types == ['Conv2d', 'BatchNorm2d', 'ReLU', 'MaxPool2d'] * 2 + \
        ['Conv2d', 'BatchNorm2d', 'ReLU'] * 3 + ['MaxPool2d']
    for fc in (model.fc1, model.fc2):
        assert [type(m).__name__ for m in fc] == ['Linear', 'ReLU', 'Dropout', 'BatchNorm1d']
    # A fresh model with the same names and shapes loads the state_dict strictly.
    timm.create_model(name).load_state_dict(model.state_dict(), strict=True)
