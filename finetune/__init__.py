"""Transfer learning of image classifiers with Keras, as a library for the DVC stage
scripts in stages/ (see docs/architecture.md for the map of its subpackages).

Importing the package first makes TensorFlow's start quiet (finetune.core.quiet_start), so
that a stage failing on bad input prints its one `error:` line and nothing else.
"""

from finetune.core import quiet_start

quiet_start.install()
