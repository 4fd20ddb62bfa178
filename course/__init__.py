"""Papers to kernels: the small helper package behind the course notebooks.

``import course`` first in every notebook: it picks the device and, with no GPU, switches Triton
to its CPU interpreter before any kernel is defined (see :mod:`course.runtime`).
"""

from . import runtime

runtime.configure_triton()
if not runtime.triton_available():  # macOS, Windows: Triton cells define fine and stop with a clear message
    from . import _no_triton

    _no_triton.install()

from .runtime import device, on_gpu, pick, seed_everything, size_preset  # noqa: E402

__all__ = ["runtime", "device", "on_gpu", "pick", "seed_everything", "size_preset"]
__version__ = "0.1.0"
