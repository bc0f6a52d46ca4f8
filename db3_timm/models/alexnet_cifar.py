"""CIFAR-10 AlexNet (with BatchNorm) and its thinner students, registered as timm models.

Architecture and widths follow the Zero-Shot KD reference (Nayak et al., "Zero-Shot
Knowledge Distillation in Deep Networks", ICML 2019; github.com/vcl-iisc/ZSKD,
``model_training/include/model_alex_full.py`` and ``model_alex_half.py``), the teacher /
student pair DB3KD (Wang, ICML 2021) compares against on CIFAR-10:

* ``conv1`` 5x5 pad 2 -> ReLU -> [LRN] -> maxpool 3/2 -> BN      32 -> 15
* ``conv2`` 5x5 pad 2 -> ReLU -> [LRN] -> maxpool 3/2 -> BN      15 -> 7
* ``conv3`` 3x3 pad 1 -> ReLU -> BN
* ``conv4`` 3x3 pad 1 -> ReLU -> BN
* ``conv5`` 3x3 pad 1 -> ReLU -> maxpool 3/2 -> BN               7 -> 3
* flatten -> ``fc1`` -> ReLU -> dropout -> BN -> ``fc2`` -> ReLU -> dropout -> BN -> ``fc3``

=========================  ==========================  ========  ==========
model                      conv1..conv5                fc1, fc2  parameters
=========================  ==========================  ========  ==========
``alexnet_cifar``          48, 128, 192, 192, 128      512, 256  1,659,178
``alexnet_cifar_half``     24, 64, 96, 96, 64          256, 128  417,434
``alexnet_cifar_quarter``  12, 32, 48, 48, 32          128, 64   105,682
=========================  ==========================  ========  ==========

Full and half are the ZSKD reference widths (half: every conv / hidden fc width halved,
the classifier kept). ZSKD publishes no quarter model; ``alexnet_cifar_quarter`` quarters
the full widths the same way. Parameter counts are for 3x32x32 inputs and 10 classes.

Local response normalisation is off by default (``use_lrn=False``): it has no parameters,
is immediately followed by BatchNorm, and with the reference ``alpha=1e-4`` it is close to
the identity. ``use_lrn=True`` reproduces the reference (TF ``depth_radius=2, alpha=1e-4,
beta=0.75, bias=1``, i.e. a 5-channel window; torch divides alpha by the window size, so
``alpha=5e-4`` is passed to ``nn.LocalResponseNorm``).

Dropout defaults to the reference 0.5. timm's ``train.py`` always passes ``--drop``
(default 0.0) as ``drop_rate``, so pass ``--drop 0.5`` there to match the reference.

The ``fc1`` input size is computed from ``img_size`` (default 32); the cfgs declare
``fixed_input_size=True``.
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


def _pool_dim(size: int) -> int:
    """Output size of a 3x3 / stride 2 max-pool without padding.

    Args:
        size: Input height or width.

    Returns:
        The pooled height or width.
    """
    return (size - 3) // 2 + 1


def _lrn(enabled: bool) -> nn.Module:
    """Local response normalisation equivalent to the TF reference, or an identity.

    Args:
        enabled: Whether to use LRN.

    Returns:
        ``nn.LocalResponseNorm`` or ``nn.Identity``.
    """
    if not enabled:
        return nn.Identity()
    return nn.LocalResponseNorm(size=5, alpha=1e-4 * 5, beta=0.75, k=1.0)


class AlexNetCifar(nn.Module):
    """AlexNet for 32x32 images with BatchNorm after every conv and hidden fc layer.

    ``forward_features`` returns the ``(N, conv_widths[4], 3, 3)`` map (for 32x32 input)
    after ``bn5``; ``forward_head`` flattens it and applies the two hidden fc blocks (the
    pre-logits, ``head_hidden_size`` wide) and the classifier ``fc3``.
    """

    def __init__(
            self,
            conv_widths: Tuple[int, int, int, int, int] = (48, 128, 192, 192, 128),
            fc_widths: Tuple[int, int] = (512, 256),
            num_classes: int = 10,
            in_chans: int = 3,
            img_size: Union[int, Sequence[int]] = 32,
            drop_rate: float = 0.5,
            use_lrn: bool = False,
    ) -> None:
        """Build the network.

        Args:
            conv_widths: Output channels of ``conv1`` .. ``conv5``.
            fc_widths: Widths of the hidden fully connected layers ``fc1`` and ``fc2``.
            num_classes: Number of classes; 0 gives a model that returns pre-logits.
            in_chans: Number of input image channels.
            img_size: Input (H, W) or square size; sets the ``fc1`` input size.
            drop_rate: Dropout after each hidden fc layer (0.5 in the reference).
            use_lrn: Apply local response normalisation after ``conv1`` and ``conv2``.
        """
        super().__init__()
        c1, c2, c3, c4, c5 = conv_widths
        f1, f2 = fc_widths
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.img_size = _to_2tuple(img_size)
        self.drop_rate = drop_rate
        self.num_features = c5
        self.head_hidden_size = f2
        self.grad_checkpointing = False

        self.feat_size = tuple(_pool_dim(_pool_dim(_pool_dim(s))) for s in self.img_size)
        if min(self.feat_size) < 1:
            raise ValueError(f'img_size {self.img_size} is too small for AlexNetCifar (at least 15x15 is needed).')

        self.conv1 = nn.Conv2d(in_chans, c1, kernel_size=5, padding=2)
        self.act1 = nn.ReLU(inplace=True)
        self.lrn1 = _lrn(use_lrn)
        self.pool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.bn1 = nn.BatchNorm2d(c1)

        self.conv2 = nn.Conv2d(c1, c2, kernel_size=5, padding=2)
        self.act2 = nn.ReLU(inplace=True)
        self.lrn2 = _lrn(use_lrn)
        self.pool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.bn2 = nn.BatchNorm2d(c2)

        self.conv3 = nn.Conv2d(c2, c3, kernel_size=3, padding=1)
        self.act3 = nn.ReLU(inplace=True)
        self.bn3 = nn.BatchNorm2d(c3)

        self.conv4 = nn.Conv2d(c3, c4, kernel_size=3, padding=1)
        self.act4 = nn.ReLU(inplace=True)
        self.bn4 = nn.BatchNorm2d(c4)

        self.conv5 = nn.Conv2d(c4, c5, kernel_size=3, padding=1)
        self.act5 = nn.ReLU(inplace=True)
        self.pool5 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.bn5 = nn.BatchNorm2d(c5)
        self.feature_info = [
            dict(num_chs=c1, reduction=2, module='bn1'),
            dict(num_chs=c2, reduction=4, module='bn2'),
            dict(num_chs=c3, reduction=4, module='bn3'),
            dict(num_chs=c4, reduction=4, module='bn4'),
            dict(num_chs=c5, reduction=8, module='bn5'),
        ]

        self.fc1 = nn.Linear(c5 * self.feat_size[0] * self.feat_size[1], f1)
        self.act6 = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout(drop_rate)
        self.bn6 = nn.BatchNorm1d(f1)
        self.fc2 = nn.Linear(f1, f2)
        self.act7 = nn.ReLU(inplace=True)
        self.drop7 = nn.Dropout(drop_rate)
        self.bn7 = nn.BatchNorm1d(f2)
        self.fc3 = nn.Linear(f2, num_classes) if num_classes > 0 else nn.Identity()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """Parameter groups for layer-wise learning-rate decay.

        Args:
            coarse: Unused; the groups are the same either way.

        Returns:
            Regexes for the stem and the conv blocks; the fc head falls in the last group.
        """
        return dict(stem=r'^(?:conv1|bn1)\.', blocks=r'^(?:conv|bn)([2-5])\.')

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
        dev = self.fc2.weight.device
        dtype = self.fc2.weight.dtype
        self.fc3 = nn.Linear(self.head_hidden_size, num_classes, device=dev, dtype=dtype) \
            if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Run the convolutional trunk.

        Args:
            x: Images of shape (N, in_chans, H, W).

        Returns:
            Feature map of shape (N, num_features, H', W').
        """
        x = self.bn1(self.pool1(self.lrn1(self.act1(self.conv1(x)))))
        x = self.bn2(self.pool2(self.lrn2(self.act2(self.conv2(x)))))
        x = self.bn3(self.act3(self.conv3(x)))
        x = self.bn4(self.act4(self.conv4(x)))
        x = self.bn5(self.pool5(self.act5(self.conv5(x))))
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Run the fully connected head.

        Args:
            x: Feature map from ``forward_features``.
            pre_logits: Return the ``bn7`` output instead of the logits.

        Returns:
            Logits (N, num_classes), or pre-logits (N, head_hidden_size).
        """
        x = torch.flatten(x, 1)
        x = self.bn6(self.drop6(self.act6(self.fc1(x))))
        x = self.bn7(self.drop7(self.act7(self.fc2(x))))
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
        feature_cfg=dict(out_indices=out_indices),
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
        'first_conv': 'conv1', 'classifier': 'fc3',
        'paper_ids': 'arXiv:1905.08114',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'alexnet_cifar': _cfg(),
    'alexnet_cifar_half': _cfg(),
    'alexnet_cifar_quarter': _cfg(),
})


@register_model
def alexnet_cifar(pretrained: bool = False, **kwargs: Any) -> AlexNetCifar:
    """CIFAR-10 AlexNet teacher (ZSKD): convs 48-128-192-192-128, fc 512-256."""
    model_args = dict(conv_widths=(48, 128, 192, 192, 128), fc_widths=(512, 256))
    return _create_alexnet_cifar('alexnet_cifar', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def alexnet_cifar_half(pretrained: bool = False, **kwargs: Any) -> AlexNetCifar:
    """CIFAR-10 AlexNet-Half student (ZSKD): convs 24-64-96-96-64, fc 256-128."""
    model_args = dict(conv_widths=(24, 64, 96, 96, 64), fc_widths=(256, 128))
    return _create_alexnet_cifar('alexnet_cifar_half', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def alexnet_cifar_quarter(pretrained: bool = False, **kwargs: Any) -> AlexNetCifar:
    """CIFAR-10 AlexNet-Quarter student: convs 12-32-48-48-32, fc 128-64."""
    model_args = dict(conv_widths=(12, 32, 48, 48, 32), fc_widths=(128, 64))
    return _create_alexnet_cifar('alexnet_cifar_quarter', pretrained=pretrained, **dict(model_args, **kwargs))
