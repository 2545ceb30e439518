"""Metrics: pretrained-weight lookup, LPIPS/Inception FID, the digit-classifier FID and linear probes."""
