"""nnunet-deconver: Deconver, Factorizer, DTC and SUM architectures as an nnU-Net v2 plugin.

This module is imported at every Python start-up through ``nnunet_deconver.pth`` (see
:mod:`nnunet_deconver._trainer_discovery`), so it must stay free of heavy imports.
"""

__version__ = "0.1.0"
