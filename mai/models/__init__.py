"""Architectures (torch). Importing this package registers them all."""

from mai.models import cnn, npr, resnet  # noqa: F401
