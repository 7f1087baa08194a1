"""Jupyter kernels that run inside CondaTainer environments on Apptainer.

Importing this package stays cheap and side-effect free: the kernel-side magic is
shipped into containers whose Python may have nothing but the standard library.
"""

__version__ = "0.1.0"


def _jupyter_server_extension_points() -> list[dict]:
    # Imported lazily: the container side must not need jupyter_server.
    from kernel_provider.server.extension import CondaTainerExtension

    return [{"module": "kernel_provider", "app": CondaTainerExtension}]
