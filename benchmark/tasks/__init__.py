"""TASKS: the single table of tasks. A new task is one file and one line here."""

from __future__ import annotations

from benchmark.registry import Registry
from benchmark.tasks.base import Resources, Target, TaskData, TaskInfo, TaskOptions
from benchmark.tasks.cifar import CIFAR10_FCN, CIFAR10_RESNET18, CIFAR10_VGG, CIFAR100_RESNET18, CIFAR100_VGG
from benchmark.tasks.digits import DIGITS_MLP
from benchmark.tasks.equilibrium import MNIST1D_FF, MNIST1D_RNN
from benchmark.tasks.equilibrium_vision import CIFAR10_CONV_FF, CIFAR10_CONV_RNN, MNIST_FF, MNIST_RNN
from benchmark.tasks.grokking import GROKKING_MODADD
from benchmark.tasks.imagenet import IMAGENET_RESNET50
from benchmark.tasks.mnist import MNIST_FCN
from benchmark.tasks.mnist1d import MNIST1D_MLP
from benchmark.tasks.pruning import PRUNING
from benchmark.tasks.saxe import SAXE_MODES
from benchmark.tasks.saxe_depth import SAXE_DEPTH
from benchmark.tasks.sparse_signal import SPARSE_SIGNAL, SPARSE_SIGNAL_D200, SPARSE_SIGNAL_D20000
from benchmark.tasks.stability import STABILITY_THRESHOLD
from benchmark.tasks.teacher_student import TEACHER_STUDENT

TASKS: Registry[TaskInfo] = Registry("task")
# Small offline classification (issue 2)
TASKS.add(MNIST1D_MLP)
TASKS.add(DIGITS_MLP)
# Sparse relevant inputs and synaptic pruning (issue 3)
TASKS.add(SPARSE_SIGNAL)
TASKS.add(SPARSE_SIGNAL_D200)
TASKS.add(SPARSE_SIGNAL_D20000)
TASKS.add(PRUNING)
# Vision: MNIST, CIFAR-10/100, ImageNet (issue 4)
TASKS.add(MNIST_FCN)
TASKS.add(CIFAR10_FCN)
TASKS.add(CIFAR10_VGG)
TASKS.add(CIFAR10_RESNET18)
TASKS.add(CIFAR100_VGG)
TASKS.add(CIFAR100_RESNET18)
TASKS.add(IMAGENET_RESNET50)
# Equilibrium models for the least-control trainers (issue 5)
TASKS.add(MNIST1D_FF)
TASKS.add(MNIST1D_RNN)
TASKS.add(MNIST_FF)
TASKS.add(MNIST_RNN)
TASKS.add(CIFAR10_CONV_FF)
TASKS.add(CIFAR10_CONV_RNN)
# Learning dynamics with closed-form references (issue 7)
TASKS.add(SAXE_MODES)
TASKS.add(TEACHER_STUDENT)
TASKS.add(STABILITY_THRESHOLD)
TASKS.add(SAXE_DEPTH)
TASKS.add(GROKKING_MODADD)

__all__ = ["TASKS", "Resources", "Target", "TaskData", "TaskInfo", "TaskOptions"]
