"""Sample quality: feature networks (our Fashion-MNIST classifier, FID InceptionV3), the metrics
computed on their features (FID, KID, precision/recall), and ``python -m ddpm_ms.eval.evaluate``."""
