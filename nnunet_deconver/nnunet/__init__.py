"""The only tier that imports nnunetv2: trainers, plans <-> architecture arguments, presets."""
