"""A language model from the ground up, in TensorFlow.

Parts: preprocess (1), rnn and lstm (2), sampling (3), transformer (4), train (5).
Submodules are not imported here, so a broken part never breaks another one:
import what you need, e.g. ``from assignment import transformer``.
"""
