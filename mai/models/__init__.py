"""Architectures (torch). Importing this package registers them all."""

from mai.models import cnn, resnet  # noqa: F401
