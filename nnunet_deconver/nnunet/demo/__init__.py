"""The end-to-end demo: an embedded MNI152 tissue dataset and nnU-Net's console commands run on it."""
