"""Helpers the tests share (not tests themselves): images and folders, models, scan and VLM helpers."""
