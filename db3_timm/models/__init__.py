"""timm models used by DB3KD; importing this package registers them with timm.

Registered names: ``lenet5``, ``lenet5_half``, ``lenet5_fifth`` (MNIST, 1x28x28) and
``alexnet_cifar``, ``alexnet_cifar_half``, ``alexnet_cifar_quarter`` (CIFAR-10, 3x32x32).
"""
from ._create import create_image_model
from .alexnet_cifar import AlexNetCifar
from .lenet import LeNet5

__all__ = ['AlexNetCifar', 'LeNet5', 'create_image_model']
