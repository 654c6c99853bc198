"""Datasets: COCO detection and PNG-mask segmentation readers, the synthetic generator, dataset configs."""
