"""Registering MedNet with transformers, once transformers is imported (see the package docstring).

Three modules register their own classes when they are imported: the configuration, the models and the image
processors. Importing them all is what registration means; then the bundled checkpoints are placed in the cache.

The hook runs when transformers is first imported, which may happen from inside one of those three modules (its
first line that imports transformers). That module is then only half-defined, and importing the others, which
import from it, would fail. So while any of them is still being imported this does nothing, and each of the
three calls it again once its own classes are defined (`completed=`).
"""

import importlib
import sys
import warnings

MODULES = ("mednet_hf.configuration_mednet", "mednet_hf.modeling_mednet", "mednet_hf.image_processing_mednet")
_bundled_done = False


def _being_imported(name: str) -> bool:
    # importlib marks a module's spec while its body runs; it is how importlib itself spots circular imports.
    return bool(getattr(getattr(sys.modules.get(name), "__spec__", None), "_initializing", False))


def register_with_transformers(_module=None, completed: str | None = None) -> None:
    """Import the registering modules and install the bundled checkpoints (idempotent)."""
    global _bundled_done
    others = [name for name in MODULES if name != completed]
    if any(_being_imported(name) for name in others):
        return
    for name in others:
        importlib.import_module(name)
    if _bundled_done:
        return
    _bundled_done = True
    from .bundled import install_bundled

    try:
        install_bundled()
    except OSError as e:  # a read-only cache must not make the package unusable
        warnings.warn(f"the bundled MedNet checkpoints could not be placed in the Hugging Face cache: {e}", stacklevel=2)
