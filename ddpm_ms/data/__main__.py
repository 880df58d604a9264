"""python -m ddpm_ms.data: write one training batch as a PNG grid."""
from .pipeline import main

main()
