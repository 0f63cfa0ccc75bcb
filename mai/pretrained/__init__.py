"""Models shipped beside the default one, a folder each (`mai/pretrained/NAME/`):
`--model NAME` anywhere loads one (`mai.artifact.model_dir`), `mai models` lists them."""
