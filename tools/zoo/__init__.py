"""Export zoo: networks defined once, exported from several frameworks to ONNX.

Framework-free (numpy only) so every framework venv can import it:

* ``params``  - seeded weights in one canonical (PyTorch) layout, keyed by layer name
* ``nets``    - the five networks, written against a small op interface ``F``
* ``check``   - run an export in ONNX Runtime against the framework's own output,
                write the ``.npz`` sample and a ``.json`` summary beside the model

Each ``tools/export_<framework>.py`` implements ``F`` for its framework.
"""

from zoo.nets import NETS, NetSpec, sample_inputs
from zoo.params import Params

__all__ = ["NETS", "NetSpec", "Params", "sample_inputs"]
