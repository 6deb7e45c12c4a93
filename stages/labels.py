"""The classes the pipeline learns: label 0 and 1, in this order.

The competition scores P(dog), so dog is label 1 and the model's sigmoid output
is P(dog). Kaggle's train.zip names each image after its class (cat.123.jpg).
"""

from __future__ import annotations

CLASS_NAMES = ("cat", "dog")
