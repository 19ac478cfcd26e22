"""Teacher (VideoMAEv2), student (ViT on tubelets) and predictor."""
