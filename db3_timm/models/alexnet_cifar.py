"""CIFAR-10 AlexNet (with BatchNorm) and its thinner students, registered as timm models.

Architecture and widths follow the DB3KD authors' code (Wang, "Zero-Shot Knowledge
Distillation from a Decision-Based Black-Box Model", ICML 2021; github.com/zwang84/zsdb3kd,
``models.py``, classes ``AlexNet``, ``AlexNetHalf`` and ``AlexNetQuarter``):

* ``features.0``  conv 3x3 stride 2 pad 1 -> ``features.1`` BN -> ReLU -> maxpool 2/2   32 -> 16 -> 8
* ``features.4``  conv 3x3 pad 1 -> ``features.5`` BN -> ReLU -> maxpool 2/2            8 -> 4
* ``features.8``  conv 3x3 pad 1 -> ``features.9`` BN -> ReLU
* ``features.11`` conv 3x3 pad 1 -> ``features.12`` BN -> ReLU
* ``features.14`` conv 3x3 pad 1 -> ``features.15`` BN -> ReLU -> maxpool 2/2           4 -> 2
* flatten -> ``fc1`` = (``fc1.0`` Linear -> ReLU -> Dropout(0.5) -> ``fc1.3`` BN1d)
  -> ``fc2`` = (``fc2.0`` Linear -> ReLU -> Dropout(0.5) -> ``fc2.3`` BN1d) -> ``fc3`` Linear

BatchNorm sits between each conv and its ReLU, but after the ReLU and dropout in the
hidden fc blocks, as in the reference. Module names and ``nn.Sequential`` indices are the
reference's, so state_dicts saved from its classes load with ``load_state_dict`` unchanged.

=========================  ==========================  ==========  ==========
model                      conv1..conv5                fc1, fc2    parameters
=========================  ==========================  ==========  ==========
``alexnet_cifar``          64, 192, 384, 256, 256      4096, 4096  23,290,954
``alexnet_cifar_half``     32, 96, 192, 128, 128       2048, 2048  5,840,426
``alexnet_cifar_quarter``  16, 48, 96, 64, 64          1024, 1024  1,468,954
=========================  ==========================  ==========  ==========

Parameter counts are for 3x32x32 inputs and 10 classes. The Zero-Shot KD AlexNet (Nayak et
al., ICML 2019; github.com/vcl-iisc/ZSKD) that DB3KD's tables compare against is a different,
much smaller network (5x5 convs in the first two layers, 3x3/2 pools, BN after the pools,
LRN, widths 48-128-192-192-128 and fc 512-256, about 1.66M parameters); it is not what these
models build.

Dropout defaults to the reference 0.5. timm's ``train.py`` always passes ``--drop``
(default 0.0) as ``drop_rate``, so pass ``--drop 0.5`` there to match the reference.

The ``fc1`` input size is computed from ``img_size`` (default 32, where it is
``conv5 width * 2 * 2`` as in the reference); the cfgs declare ``fixed_input_size=True``.
"""
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

__all__ = ['AlexNetCifar']

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def _to_2tuple(size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    """Normalise an int or (H, W) sequence to an (H, W) tuple.

    Args:
        size: Square size or (H, W) sequence.

    Returns:
        The (H, W) tuple.
    """
    if isinstance(size, int):
        return size, size
    size = tuple(int(s) for s in size)
    if len(size) != 2:
        raise ValueError(f'img_size must be an int or (H, W), got {size}.')
    return size


def _feat_dim(size: int) -> int:
    """Spatial size after the conv trunk: one 3x3/2 pad-1 conv, then three 2x2/2 max-pools.

    Args:
        size: Input height or width.

    Returns:
        The height or width of the ``forward_features`` output.
    """
    size = (size - 1) // 2 + 1  # conv1: (size + 2*1 - 3) // 2 + 1
    for _ in range(3):
        size //= 2
    return size


def _conv_bn_relu(in_chs: int, out_chs: int, stride: int = 1) -> Tuple[nn.Module, nn.Module, nn.Module]:
    """One reference conv unit: 3x3 conv (pad 1), BatchNorm, ReLU.

    Args:
        in_chs: Input channels.
        out_chs: Output channels.
        stride: Conv stride.

    Returns:
        The three modules, to be placed in ``features`` in this order.
    """
    return (
        nn.Conv2d(in_chs, out_chs, kernel_size=3, stride=stride, padding=1),
        nn.BatchNorm2d(out_chs),
        nn.ReLU(inplace=True),
    )


def _fc_block(in_features: int, out_features: int, drop_rate: float) -> nn.Sequential:
    """One reference hidden fc block: Linear, ReLU, Dropout, BatchNorm1d (indices 0..3).

    Args:
        in_features: Input width.
        out_features: Output width.
        drop_rate: Dropout probability.

    Returns:
        The block.
    """
    return nn.Sequential(
        nn.Linear(in_features, out_features),
        nn.ReLU(inplace=True),
        nn.Dropout(drop_rate),
        nn.BatchNorm1d(out_features),
    )


class AlexNetCifar(nn.Module):
    """DB3KD's CIFAR AlexNet: a 3x3-conv AlexNet with BatchNorm in every conv and hidden fc block.

    ``forward_features`` returns the ``(N, conv_widths[4], 2, 2)`` map (for 32x32 input)
    after the last max-pool; ``forward_head`` flattens it and applies ``fc1`` and ``fc2``
    (the pre-logits, ``head_hidden_size`` wide) and the classifier ``fc3``.
    """

    def __init__(
            self,
            conv_widths: Tuple[int, int, int, int, int] = (64, 192, 384, 256, 256),
            fc_width: int = 4096,
            num_classes: int = 10,
            in_chans: int = 3,
            img_size: Union[int, Sequence[int]] = 32,
            drop_rate: float = 0.5,
    ) -> None:
        """Build the network.

        Args:
            conv_widths: Output channels of the five convs.
            fc_width: Width of both hidden fully connected layers ``fc1`` and ``fc2``.
            num_classes: Number of classes; 0 gives a model that returns pre-logits.
            in_chans: Number of input image channels.
            img_size: Input (H, W) or square size; sets the ``fc1`` input size.
            drop_rate: Dropout in each hidden fc block (0.5 in the reference).
        """
        super().__init__()
        c1, c2, c3, c4, c5 = conv_widths
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.img_size = _to_2tuple(img_size)
        self.drop_rate = drop_rate
        self.num_features = c5
        self.head_hidden_size = fc_width
        self.grad_checkpointing = False

        self.feat_size = tuple(_feat_dim(s) for s in self.img_size)
        if min(self.feat_size) < 1:
            raise ValueError(f'img_size {self.img_size} is too small for AlexNetCifar (at least 15x15 is needed).')

        # Sequential indices match the reference: convs at 0, 4, 8, 11, 14; BNs one after each.
        self.features = nn.Sequential(
            *_conv_bn_relu(in_chans, c1, stride=2),             # 0, 1, 2
            nn.MaxPool2d(kernel_size=2, stride=2),              # 3
            *_conv_bn_relu(c1, c2),                             # 4, 5, 6
            nn.MaxPool2d(kernel_size=2, stride=2),              # 7
            *_conv_bn_relu(c2, c3),                             # 8, 9, 10
            *_conv_bn_relu(c3, c4),                             # 11, 12, 13
            *_conv_bn_relu(c4, c5),                             # 14, 15, 16
            nn.MaxPool2d(kernel_size=2, stride=2),              # 17
        )
        # One entry per conv stage, at the end of the stage (after its pool, if any).
        self.feature_info = [
            dict(num_chs=c1, reduction=4, module='features.3'),
            dict(num_chs=c2, reduction=8, module='features.7'),
            dict(num_chs=c3, reduction=8, module='features.10'),
            dict(num_chs=c4, reduction=8, module='features.13'),
            dict(num_chs=c5, reduction=16, module='features.17'),
        ]

        self.fc1 = _fc_block(c5 * self.feat_size[0] * self.feat_size[1], fc_width, drop_rate)
        self.fc2 = _fc_block(fc_width, fc_width, drop_rate)
        self.fc3 = nn.Linear(fc_width, num_classes) if num_classes > 0 else nn.Identity()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """Parameter groups for layer-wise learning-rate decay.

        Args:
            coarse: Unused; the groups are the same either way.

        Returns:
            Regexes for the stem (first conv and BN) and the remaining ``features`` layers
            (as in timm's VGG, each BN is its own group); the fc head falls in the last group.
        """
        return dict(stem=r'^features\.[01]\.', blocks=r'^features\.(\d+)')

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Gradient checkpointing is not supported (the model is small).

        Args:
            enable: Must be False.
        """
        assert not enable, 'gradient checkpointing not supported'

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """Return the classifier layer.

        Returns:
            The final linear layer ``fc3`` (``nn.Identity`` when ``num_classes == 0``).
        """
        return self.fc3

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the classifier with a freshly initialised one.

        Args:
            num_classes: New number of classes; 0 removes the classifier.
            global_pool: Accepted for timm API compatibility; this model does not pool globally.
        """
        self.num_classes = num_classes
        dev = self.fc2[0].weight.device
        dtype = self.fc2[0].weight.dtype
        self.fc3 = nn.Linear(self.head_hidden_size, num_classes, device=dev, dtype=dtype) \
            if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Run the convolutional trunk.

        Args:
            x: Images of shape (N, in_chans, H, W).

        Returns:
            Feature map of shape (N, num_features, H', W').
        """
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Run the fully connected head.

        Args:
            x: Feature map from ``forward_features``.
            pre_logits: Return the ``fc2`` block output instead of the logits.

        Returns:
            Logits (N, num_classes), or pre-logits (N, head_hidden_size).
        """
        x = torch.flatten(x, 1)
        x = self.fc1(x)
        x = self.fc2(x)
        return x if pre_logits else self.fc3(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify a batch of images.

        Args:
            x: Images of shape (N, in_chans, H, W).

        Returns:
            Logits of shape (N, num_classes).
        """
        x = self.forward_features(x)
        x = self.forward_head(x)
        return x


def _create_alexnet_cifar(variant: str, pretrained: bool = False, **kwargs: Any) -> AlexNetCifar:
    """Build an AlexNetCifar variant through timm's builder.

    Args:
        variant: Registered model name, used to look up the pretrained cfg.
        pretrained: Load pretrained weights (none are published; needs a ``file`` overlay).
        **kwargs: Model constructor arguments.

    Returns:
        The model, with ``pretrained_cfg`` set.
    """
    out_indices = kwargs.pop('out_indices', (0, 1, 2, 3, 4))
    return build_model_with_cfg(
        AlexNetCifar,
        variant,
        pretrained,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs,
    )


def _cfg(url: str = '', **kwargs: Any) -> Dict[str, Any]:
    """Default pretrained cfg for the CIFAR-10 AlexNet family (3x32x32).

    Args:
        url: Weight URL (none are published).
        **kwargs: Entries that override the defaults.

    Returns:
        The cfg dict.
    """
    return {
        'url': url,
        'num_classes': 10, 'input_size': (3, 32, 32), 'pool_size': None,
        'crop_pct': 1.0, 'interpolation': 'bilinear', 'fixed_input_size': True,
        'mean': CIFAR10_MEAN, 'std': CIFAR10_STD,
        'first_conv': 'features.0', 'classifier': 'fc3',
        'paper_ids': 'arXiv:2106.03310',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'alexnet_cifar': _cfg(),
    'alexnet_cifar_half': _cfg(),
    'alexnet_cifar_quarter': _cfg(),
})


@register_model
def alexnet_cifar(pretrained: bool = False, **kwargs: Any) -> AlexNetCifar:
    """CIFAR-10 AlexNet teacher (DB3KD ``AlexNet``): convs 64-192-384-256-256, fc 4096-4096."""
    model_args = dict(conv_widths=(64, 192, 384, 256, 256), fc_width=4096)
    return _create_alexnet_cifar('alexnet_cifar', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def alexnet_cifar_half(pretrained: bool = False, **kwargs: Any) -> AlexNetCifar:
    """CIFAR-10 AlexNet-Half student (DB3KD ``AlexNetHalf``): convs 32-96-192-128-128, fc 2048-2048."""
    model_args = dict(conv_widths=(32, 96, 192, 128, 128), fc_width=2048)
    return _create_alexnet_cifar('alexnet_cifar_half', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def alexnet_cifar_quarter(pretrained: bool = False, **kwargs: Any) -> AlexNetCifar:
    """CIFAR-10 AlexNet-Quarter student (DB3KD ``AlexNetQuarter``): convs 16-48-96-64-64, fc 1024-1024."""
    model_args = dict(conv_widths=(16, 48, 96, 64, 64), fc_width=1024)
    return _create_alexnet_cifar('alexnet_cifar_quarter', pretrained=pretrained, **dict(model_args, **kwargs))
