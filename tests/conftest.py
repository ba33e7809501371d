import os

# Set before anything imports triton or gradio: the Triton kernels run on CPU through the
# interpreter (explicit backend="triton" only; the default never picks it on CPU), and nothing
# in the tests may reach the network.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def pytest_configure(config):
    # The Triton interpreter converts size-1 arrays to ints the way numpy 1.25+ deprecates; harmless.
    config.addinivalue_line("filterwarnings", "ignore:Conversion of an array with ndim > 0:DeprecationWarning")
