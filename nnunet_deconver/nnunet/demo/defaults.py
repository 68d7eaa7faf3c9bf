"""The demo's defaults, importable without nnU-Net or torch (the command line shows them in ``--help``)."""

# Deconver and nnU-Net's own U-Net, both on the same short schedule (12 epochs x 25 iterations).
DEMO_TRAINERS = ("nnUNetTrainerDeconver_demo", "nnUNetTrainer_demo")
DEMO_CONFIGURATIONS = ("2d", "3d_fullres")
