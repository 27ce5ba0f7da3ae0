"""gpupipe: data-centric curation of image-classification datasets, CPU or GPU."""

__version__ = "0.1.0"
