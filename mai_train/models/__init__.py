"""Architectures (torch). Importing this package registers them all."""

from mai_train.models import cnn, npr, resnet  # noqa: F401
