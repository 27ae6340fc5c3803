"""Put first on PYTHONPATH (tests/conftest.py), this hides torch from a process as an install
without it would: `import torch` raises ModuleNotFoundError and importlib.util.find_spec
("torch") is None (libraries that look before they import — lm-eval, transformers — see none
either), while the package metadata and every other module stay as they are."""
import sys
from importlib.machinery import PathFinder


class _WithoutTorch:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == 'torch' or name.startswith('torch.'):
            return None
        return PathFinder.find_spec(name, path, target)

    @staticmethod
    def invalidate_caches():
        PathFinder.invalidate_caches()

    @staticmethod
    def find_distributions(*args, **kwargs):  # importlib.metadata asks the finders
        return PathFinder.find_distributions(*args, **kwargs)


sys.meta_path[:] = [_WithoutTorch if f is PathFinder else f for f in sys.meta_path]
