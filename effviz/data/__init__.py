"""Model inputs from user files, and readers for the training sets.

- ``image``: :func:`open_image` decodes an upload defensively; :func:`image_to_tensor` frames it
  as a model expects (ImageNet-style photo, or MNIST-style digit).
- ``audio``: :func:`read_audio` decodes a sound file; :func:`prepare_waveform` brings any
  waveform to mono at the model's rate; :func:`fbank` makes AST-style log-mel features;
  :func:`audio_to_tensor` does both.
- ``datasets``: :func:`load_cifar10`, :func:`load_fsdd`, :func:`load_mnist` read the training
  sets from paths the caller gives.
"""
from .audio import audio_to_tensor, fbank, prepare_waveform, read_audio
from .datasets import Clip, load_cifar10, load_fsdd, load_mnist
from .image import image_to_tensor, open_image

__all__ = [
    "Clip",
    "audio_to_tensor",
    "fbank",
    "image_to_tensor",
    "load_cifar10",
    "load_fsdd",
    "load_mnist",
    "open_image",
    "prepare_waveform",
    "read_audio",
]
