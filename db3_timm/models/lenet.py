"""LeNet-5 and its thinner DB3KD students, registered as timm models.

The teacher / student widths follow the decision-based black-box KD paper (Wang,
"Zero-Shot Knowledge Distillation from a Decision-Based Black-Box Model", ICML 2021)
and its released code (github.com/zwang84/zsdb3kd, ``models.py``):

=================  =======  =======  ====  ==========
model              conv1    conv2    fc    parameters
=================  =======  =======  ====  ==========
``lenet5``         20       50       200   187,780
``lenet5_half``    10       25       100   47,645
``lenet5_fifth``   4        10       40    7,964
=================  =======  =======  ====  ==========

Layout: ``conv5x5 (no padding) -> ReLU -> maxpool2`` twice, then ``fc -> ReLU -> fc``.
Parameter counts are for 1x28x28 inputs and 10 classes. Module names (``conv1``,
``conv2``, ``fc1``, ``fc2``) match the reference code, so its state dicts load as is.

Normalisation: the pretrained cfgs carry the MNIST statistics (mean 0.1307, std 0.3081),
the usual torchvision convention. The DB3KD reference trains on raw ``ToTensor()`` pixels
(i.e. mean 0, std 1); reproduce that with ``--mean 0 --std 1`` in timm's ``train.py``.

The flatten size of ``fc1`` is computed from ``img_size`` (default 28), so other input
sizes and channel counts work (e.g. ``img_size=32`` or ``in_chans=3``). The model needs a
fixed input size, which its pretrained cfg declares with ``fixed_input_size=True``.
"""
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

__all__ = ['LeNet5']

MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)


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


class LeNet5(nn.Module):
    """LeNet-5 (two valid 5x5 convs with 2x2 max-pooling, two fully connected layers).

    ``forward_features`` returns the ``(N, conv_widths[1], H', W')`` map after the
    second pool; ``forward_head`` flattens it, applies ``fc1 -> ReLU`` (the pre-logits,
    ``head_hidden_size`` wide) and the classifier ``fc2``.
    """

    def __init__(
            self,
            conv_widths: Tuple[int, int] = (20, 50),
            fc_width: int = 200,
            num_classes: int = 10,
            in_chans: int = 1,
            img_size: Union[int, Sequence[int]] = 28,
            drop_rate: float = 0.,
    ) -> None:
        """Build the network.

        Args:
            conv_widths: Output channels of ``conv1`` and ``conv2``.
            fc_width: Width of the hidden fully connected layer ``fc1``.
            num_classes: Number of classes; 0 gives a model that returns pre-logits.
            in_chans: Number of input image channels.
            img_size: Input (H, W) or square size; sets the ``fc1`` input size.
            drop_rate: Dropout before the classifier (0 in the reference model).
        """
        super().__init__()
        c1, c2 = conv_widths
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.img_size = _to_2tuple(img_size)
        self.drop_rate = drop_rate
        self.num_features = c2
        self.head_hidden_size = fc_width
        self.grad_checkpointing = False

        self.feat_size = tuple(self._feat_dim(s) for s in self.img_size)
        if min(self.feat_size) < 1:
            raise ValueError(f'img_size {self.img_size} is too small for LeNet-5 (at least 16x16 is needed).')

        self.conv1 = nn.Conv2d(in_chans, c1, kernel_size=5)
        self.act1 = nn.ReLU(inplace=True)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=5)
        self.act2 = nn.ReLU(inplace=True)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.feature_info = [
            dict(num_chs=c1, reduction=2, module='pool1'),
            dict(num_chs=c2, reduction=4, module='pool2'),
        ]

        self.fc1 = nn.Linear(c2 * self.feat_size[0] * self.feat_size[1], fc_width)
        self.act3 = nn.ReLU(inplace=True)
        self.head_drop = nn.Dropout(drop_rate)
        self.fc2 = nn.Linear(fc_width, num_classes) if num_classes > 0 else nn.Identity()

    @staticmethod
    def _feat_dim(size: int) -> int:
        """Spatial size after the two conv5x5 (no padding) + maxpool2 stages.

        Args:
            size: Input height or width.

        Returns:
            The output height or width.
        """
        return ((size - 4) // 2 - 4) // 2

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """Parameter groups for layer-wise learning-rate decay.

        Args:
            coarse: Unused; the groups are the same either way.

        Returns:
            Regexes for the stem and the conv block; the fc head falls in the last group.
        """
        return dict(stem=r'^conv1\.', blocks=r'^conv(2)\.')

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Gradient checkpointing is not supported (the model is tiny).

        Args:
            enable: Must be False.
        """
        assert not enable, 'gradient checkpointing not supported'

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """Return the classifier layer.

        Returns:
            The final linear layer ``fc2`` (``nn.Identity`` when ``num_classes == 0``).
        """
        return self.fc2

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the classifier with a freshly initialised one.

        Args:
            num_classes: New number of classes; 0 removes the classifier.
            global_pool: Accepted for timm API compatibility; LeNet-5 does not pool globally.
        """
        self.num_classes = num_classes
        dev = self.fc1.weight.device
        dtype = self.fc1.weight.dtype
        self.fc2 = nn.Linear(self.head_hidden_size, num_classes, device=dev, dtype=dtype) \
            if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Run the convolutional trunk.

        Args:
            x: Images of shape (N, in_chans, H, W).

        Returns:
            Feature map of shape (N, num_features, H', W').
        """
        x = self.pool1(self.act1(self.conv1(x)))
        x = self.pool2(self.act2(self.conv2(x)))
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Run the fully connected head.

        Args:
            x: Feature map from ``forward_features``.
            pre_logits: Return the ``fc1`` activations instead of the logits.

        Returns:
            Logits (N, num_classes), or pre-logits (N, head_hidden_size).
        """
        x = torch.flatten(x, 1)
        x = self.act3(self.fc1(x))
        x = self.head_drop(x)
        return x if pre_logits else self.fc2(x)

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


def _create_lenet(variant: str, pretrained: bool = False, **kwargs: Any) -> LeNet5:
    """Build a LeNet-5 variant through timm's builder.

    Args:
        variant: Registered model name, used to look up the pretrained cfg.
        pretrained: Load pretrained weights (none are published; needs a ``file`` overlay).
        **kwargs: Model constructor arguments.

    Returns:
        The model, with ``pretrained_cfg`` set.
    """
    out_indices = kwargs.pop('out_indices', (0, 1))
    return build_model_with_cfg(
        LeNet5,
        variant,
        pretrained,
        feature_cfg=dict(out_indices=out_indices),
        **kwargs,
    )


def _cfg(url: str = '', **kwargs: Any) -> Dict[str, Any]:
    """Default pretrained cfg for the LeNet-5 family (MNIST, 1x28x28).

    Args:
        url: Weight URL (none are published).
        **kwargs: Entries that override the defaults.

    Returns:
        The cfg dict.
    """
    return {
        'url': url,
        'num_classes': 10, 'input_size': (1, 28, 28), 'pool_size': None,
        'crop_pct': 1.0, 'interpolation': 'bilinear', 'fixed_input_size': True,
        'mean': MNIST_MEAN, 'std': MNIST_STD,
        'first_conv': 'conv1', 'classifier': 'fc2',
        'paper_ids': 'arXiv:2106.03310',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'lenet5': _cfg(),
    'lenet5_half': _cfg(),
    'lenet5_fifth': _cfg(),
})


@register_model
def lenet5(pretrained: bool = False, **kwargs: Any) -> LeNet5:
    """LeNet-5 teacher: conv 20, conv 50, fc 200 (187,780 parameters)."""
    model_args = dict(conv_widths=(20, 50), fc_width=200)
    return _create_lenet('lenet5', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def lenet5_half(pretrained: bool = False, **kwargs: Any) -> LeNet5:
    """LeNet-5-Half student: conv 10, conv 25, fc 100 (47,645 parameters)."""
    model_args = dict(conv_widths=(10, 25), fc_width=100)
    return _create_lenet('lenet5_half', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def lenet5_fifth(pretrained: bool = False, **kwargs: Any) -> LeNet5:
    """LeNet-5-1/5 student: conv 4, conv 10, fc 40 (7,964 parameters)."""
    model_args = dict(conv_widths=(4, 10), fc_width=40)
    return _create_lenet('lenet5_fifth', pretrained=pretrained, **dict(model_args, **kwargs))
