import torch

from effviz.kernels import native


def test_loading_the_native_library_keeps_subnormals():
    """-ffast-math at link time would switch the whole process to flush-to-zero."""
    if not native.available():
        assert native.library() is None
        return
    native.library()
    assert torch.tensor(1e-40) * 1.0 != 0
