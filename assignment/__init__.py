"""A language model from the ground up, in TensorFlow: the six files you edit.

Parts: preprocess (1), rnn and lstm (2), sampling (3), transformer (4), train (5).
Submodules are not imported here, so a broken part never breaks another one:
import what you need, e.g. ``from assignment import transformer``.
The given building blocks they use live in `lmkit`; the programs that run them (`python -m lmrun train`) in `lmrun`.
"""

import lmkit  # noqa: F401  (imports TensorFlow without its start-up chatter)
